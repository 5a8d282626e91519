"""One inference node (started by `python -m skippipe infer`, not by hand)."""

from __future__ import annotations

import argparse

HELP = "run one node of a distributed inference (internal: `infer` starts these)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config")
    p.add_argument("node_id", type=int)
    p.add_argument("plan")


def run(args: argparse.Namespace) -> int:
    from ..runtime.launch.infer import node_main

    return node_main(args.config, args.node_id, args.plan)
