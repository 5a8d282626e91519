"""Perplexity of a trained checkpoint: full model, given stages omitted, or a sweep."""

from __future__ import annotations

import argparse

from ..train.recipe import EVAL_SAMPLES

HELP = "validation perplexity of a checkpoint with stages omitted (full, --omit-stages, --sweep)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="checkpoint directory (or the run directory holding checkpoint/)")
    p.add_argument("--omit-stages", help="comma-separated non-first stages to omit, e.g. 2,4")
    p.add_argument(
        "--sweep",
        action="store_true",
        help="every subset of non-first stages (seeded sample when S > 8), table + PNG",
    )
    p.add_argument(
        "--max-batches",
        type=int,
        help="validation batches of --samples sequences per path (default: every validation token)",
    )
    p.add_argument("--samples", type=int, default=EVAL_SAMPLES, help="sequences per batch")
    p.add_argument("--seed", type=int, default=0, help="subset sample seed when S > 8")
    p.add_argument("--data", help="data source (default: the one the checkpoint was trained on)")
    p.add_argument("--tokenizer", help="SentencePiece .model (default: the checkpoint's)")
    p.add_argument("--out", help="directory for perplexity.json and the PNG (default: <run>/eval)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--threads", type=int, help="torch CPU threads")


def run(args: argparse.Namespace) -> int:
    from ..errors import SkipPipeError
    from ..train.study import EvalOptions, evaluate_checkpoint
    from ..util.options import options_from

    if (args.max_batches is not None and args.max_batches < 1) or args.samples < 1:
        raise SkipPipeError("--max-batches and --samples must be positive")
    return evaluate_checkpoint(options_from(EvalOptions, args))
