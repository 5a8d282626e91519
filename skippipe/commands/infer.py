"""Perplexity of a trained run through its live nodes only (failed nodes are not started),
beside single-process evaluation with the same stages omitted."""

from __future__ import annotations

import argparse

HELP = "perplexity of a trained run through its live nodes only, beside single-process evaluation"
DEFAULT_MAX_BATCHES = 8


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a finished run directory with a checkpoint (./run.sh ... --checkpoint)")
    p.add_argument("--failed", default="", help="comma-separated node ids that are down, e.g. 4,5")
    p.add_argument(
        "--max-batches",
        type=int,
        default=DEFAULT_MAX_BATCHES,
        help="validation batches (default %(default)s)",
    )
    p.add_argument("--samples", type=int, default=0, help="sequences per batch (default: the scenario's)")


def run(args: argparse.Namespace) -> int:
    from ..runtime.launch.infer import compare_perplexity

    return compare_perplexity(args.run_dir, args.failed, args.max_batches, args.samples)
