"""One node process (started by `./run.sh` / `python -m skippipe run`, not by hand)."""
from __future__ import annotations

import argparse

HELP = "run one node of a launched run (internal: the launcher starts these)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="runs/<run-id>/config.json written by the launcher")
    p.add_argument("node_id", type=int)
    p.add_argument("--rejoin", action="store_true", help="come back into a running training")


def run(args: argparse.Namespace) -> int:
    from ..runtime.node import main
    return main(args.config, args.node_id, args.rejoin)
