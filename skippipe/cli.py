"""`python -m skippipe COMMAND ...`: one entry point; each command lives in its own module.

A command module exposes `HELP` (one line), `add_arguments(parser)` and `run(args) -> int`.
Modules are imported only when their command runs, so `--help` stays fast (torch is slow to load).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .errors import SkipPipeError

COMMANDS = {  # command -> module
    "schedule": "skippipe.commands.schedule",
    "simulate": "skippipe.commands.simulate",
    "run": "skippipe.commands.run",
    "node": "skippipe.commands.node",
    "infer": "skippipe.commands.infer",
    "infer-node": "skippipe.commands.infer_node",
    "train": "skippipe.commands.train",
    "evaluate": "skippipe.commands.evaluate",
    "measure": "skippipe.commands.measure",
    "compare": "skippipe.commands.compare",
    "study-times": "skippipe.commands.study_times",
}


def _load(name: str):
    return importlib.import_module(COMMANDS[name])


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m skippipe", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = next((a for a in argv if a in COMMANDS), None)
    for name in COMMANDS:
        if wanted is None or name == wanted:
            module = _load(name)
            p = sub.add_parser(name, help=module.HELP, description=module.HELP)
            module.add_arguments(p)
            p.set_defaults(func=module.run)
        else:
            sub.add_parser(name, help=f"(see python -m skippipe {name} --help)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser(argv).parse_args(argv)  # defaults from the environment may be bad
        logging.basicConfig(
            level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s", stream=sys.stderr
        )
        return int(args.func(args) or 0)
    except SkipPipeError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
