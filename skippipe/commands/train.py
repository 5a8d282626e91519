"""Train the model in one process along the microbatch paths of a variant (convergence study)."""

from __future__ import annotations

import argparse

from ..train.recipe import EVAL_SAMPLES, WARMUP_FRACTION

HELP = "train in one process: each microbatch runs the stages of its path, in path order"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="settings file (.toml) or schedule file (.json)")
    p.add_argument(
        "--variant",
        default="baseline",
        help="baseline | random (no schedule needed) | any variant of the schedule",
    )
    p.add_argument("--iterations", type=int, help="optimizer steps (default: scenario training.iterations)")
    p.add_argument("--lr", type=float, help="peak learning rate (default: scenario)")
    p.add_argument("--seed", type=int, help="model/data/path seed (default: scenario training.seed)")
    p.add_argument(
        "--warmup",
        type=int,
        help=f"linear warm-up iterations (default: {100 * WARMUP_FRACTION:g}%% of the iterations)",
    )  # %%: argparse formats help
    p.add_argument(
        "--cosine",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="cosine learning-rate decay to the end (default: on)",
    )
    p.add_argument(
        "--data",
        help="web (World English Bible, the default), builtin (standard-"
        "library docstrings), a text file or directory of .txt files, "
        "or hf:NAME",
    )
    p.add_argument("--tokenizer", help="SentencePiece .model to use instead of training one")
    p.add_argument("--out", help="run directory (default: runs/<time>-<scenario>-<variant>-<pid>)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--log-every", type=int, default=10, help="iterations between progress lines")
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=0,
        help="iterations between checkpoints (default: only at the end)",
    )
    p.add_argument(
        "--eval-batches",
        type=int,
        help=f"validation batches of {EVAL_SAMPLES} sequences scored at the end "
        "(default: every validation token; 0: none)",
    )


def _positive(name: str, value: int | None, zero_ok: bool = False) -> None:
    from ..errors import SkipPipeError

    if value is not None and (value < 0 or (value == 0 and not zero_ok)):
        raise SkipPipeError(f"{name} must be {'non-negative' if zero_ok else 'positive'}, got {value}")


def run(args: argparse.Namespace) -> int:
    from ..train.study import StudyOptions, run_study
    from ..util.options import options_from

    for name in ("iterations", "log_every", "threads"):
        _positive(f"--{name.replace('_', '-')}", getattr(args, name))
    for name in ("warmup", "checkpoint_every", "eval_batches"):
        _positive(f"--{name.replace('_', '-')}", getattr(args, name), zero_ok=True)
    if args.lr is not None and not 0 < args.lr < float("inf"):
        from ..errors import SkipPipeError

        raise SkipPipeError(f"--lr must be positive and finite, got {args.lr:g}")
    return run_study(options_from(StudyOptions, args))
