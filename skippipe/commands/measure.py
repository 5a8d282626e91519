"""Measure the live cluster (links between nodes, each node's compute) and write a scenario.

Single host: `python -m skippipe measure --local 4 --template settings/tiny.toml --out
runs/measured.toml` starts 4 measurement processes on 127.0.0.1 (each in its own session; all
of them are stopped on exit or Ctrl-C) and waits for them. Several hosts: every host runs
`python -m skippipe measure --node-id I --peers peers.json` (peers.json: {"0": "host:port",
...}); node 0 (which also takes --template and --out) drives the measurement over the
transport and writes the scenario file.
"""

from __future__ import annotations

import argparse

from ..measure.peers import DEFAULT_BASE_PORT, LOCAL_HOST

HELP = "measure links and compute of live nodes and write a scenario file for them"
DEFAULT_TEMPLATE = "settings/tiny.toml"
DEFAULT_OUT = "settings/measured.toml"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = (
        "examples:\n"
        "  python -m skippipe measure --local 4 --template settings/tiny.toml --out runs/measured.toml\n"
        "  python -m skippipe measure --node-id 0 --peers peers.json --out settings/measured.toml   # host of node 0\n"
        "  python -m skippipe measure --node-id 1 --peers peers.json                               # every other host\n"
        "then: python create_schedule.py settings/measured.toml"
    )
    where = p.add_argument_group("which nodes")
    where.add_argument(
        "--local",
        type=int,
        metavar="N",
        help="start N measurement processes on this host (127.0.0.1) and wait for them",
    )
    where.add_argument("--node-id", type=int, help="this process's node (node 0 coordinates)")
    where.add_argument("--nodes", metavar="0..N-1", help="the node ids (with --host/--base-port)")
    where.add_argument("--peers", help='JSON file {node id: "host:port"} for every node')
    where.add_argument(
        "--host", default=LOCAL_HOST, help="address of every node without --peers (default %(default)s)"
    )
    where.add_argument(
        "--base-port",
        type=int,
        help=f"node i listens on base-port + i (default {DEFAULT_BASE_PORT}; --local: free ports)",
    )
    where.add_argument("--listen", help="address to bind instead of the node's own peer address")
    what = p.add_argument_group("what to measure (node 0's options count)")
    what.add_argument(
        "--template",
        default=DEFAULT_TEMPLATE,
        help="scenario whose [model] [pipeline] [costs] [training] are used (default %(default)s)",
    )
    what.add_argument("--out", default=DEFAULT_OUT, help="scenario file to write (default %(default)s)")
    what.add_argument("--name", help="scenario name (default: the output file's stem)")
    what.add_argument(
        "--stage-sizes",
        help="nodes per stage, e.g. 2,1,1 (default: the template's, fitted to the node count)",
    )
    what.add_argument(
        "--samples",
        type=int,
        help="sequences per timed forward/backward (default: the template's samples_per_microbatch)",
    )
    what.add_argument(
        "--repeat", type=int, default=5, help="timed repetitions, median kept (default %(default)s)"
    )
    what.add_argument("--warmup", type=int, default=1, help="untimed repetitions first (default %(default)s)")
    what.add_argument(
        "--payload-mib", type=float, default=4.0, help="bandwidth probe size in MiB (default %(default)s)"
    )
    p.add_argument("--device", default="auto", help="torch device: auto (CUDA if available), cpu, cuda:N")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads while timing (default %(default)s, as node processes "
        "run; 0: torch's default)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=900.0,
        help="seconds the whole measurement may take (default %(default)s)",
    )
    p.add_argument("--runs", default="runs", help="--local: parent of the run directory (logs)")
    p.add_argument("--run-dir", help=argparse.SUPPRESS)  # set by --local for its processes
    p.add_argument("--recorded-command", help=argparse.SUPPRESS)  # --local: the user's command


def run(args: argparse.Namespace) -> int:
    from ..measure.command import run  # here: it loads the transport, DecCom and numpy

    return run(args)
