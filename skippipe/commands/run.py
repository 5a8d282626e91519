"""Train along planned paths with node processes on this host: ./run.sh FIRST LAST SETTING MB."""

from __future__ import annotations

import argparse
import os

from ..plan_options import DEFAULT_TIME_LIMIT_S
from ..util.rundir import RUNS_DIR
from ..variants import VARIANTS

HELP = "start nodes FIRST..LAST-1 of a scenario and train along the planned paths"
DEFAULT_SCENARIO = "settings/tiny.toml"  # the built-in scenario
DEFAULT_BASE_PORT = 29500
DEFAULT_PEER_TIMEOUT_S = 30.0  # wall seconds without an answer before a peer counts as dead

ENV = {  # option -> environment variable that sets its default
    "scenario": "SKIPPIPE_SCENARIO",
    "iterations": "SKIPPIPE_ITERATIONS",
    "time_scale": "SKIPPIPE_TIME_SCALE",
    "base_port": "SKIPPIPE_BASE_PORT",
    "runs": "SKIPPIPE_RUNS",
    "host": "SKIPPIPE_HOST",
}


def _env(name: str, default, cast=str):
    """The option's default from its environment variable; a value `cast` refuses stops
    with one line (argparse has not started: its own errors cannot name the variable)."""
    value = os.environ.get(ENV[name])
    if value in (None, ""):
        return default
    try:
        return cast(value)
    except ValueError:
        from ..errors import SkipPipeError

        kind = {int: "an integer", float: "a number"}.get(cast, "a value")
        raise SkipPipeError(f"{ENV[name]}={value!r} is not {kind}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = (
        "environment: "
        + ", ".join(f"{v} (--{k.replace('_', '-')})" for k, v in ENV.items())
        + ", SKIPPIPE_RUN_KEY (the run key, as --run-key-file holds it)"
        + "\nexample: ./run.sh 0 6 ca-partial 2   # every node of the tiny scenario"
    )
    p.add_argument("first", type=int, help="first node id to start on this host")
    p.add_argument("last", type=int, help="one past the last node id to start")
    p.add_argument("setting", choices=VARIANTS, help="which paths to train along")
    p.add_argument("mb", type=int, help="samples per microbatch (0: the scenario's value)")
    p.add_argument(
        "--scenario", default=_env("scenario", DEFAULT_SCENARIO), help="settings file (default %(default)s)"
    )
    p.add_argument(
        "--schedule", help="schedule file (default: schedules/<scenario>.json, built when missing)"
    )
    p.add_argument(
        "--iterations",
        type=int,
        default=_env("iterations", None, int),
        help="iterations to train (default: the scenario's training.iterations)",
    )
    p.add_argument(
        "--time-scale",
        type=float,
        default=_env("time_scale", None, float),
        help="emulated time multiplier (default: the scenario's training.time_scale)",
    )
    p.add_argument(
        "--no-emulate-compute",
        action="store_true",
        help="run operations at this machine's speed instead of the scenario's",
    )
    p.add_argument("--no-emulate-links", action="store_true", help="send messages without emulated delay")
    p.add_argument(
        "--host",
        default=_env("host", None),
        help="address the nodes listen on (default 127.0.0.1; with --rendezvous this "
        "host's address on the route to the rendezvous host)",
    )
    p.add_argument(
        "--base-port",
        type=int,
        default=_env("base_port", DEFAULT_BASE_PORT, int),
        help="node i listens on base-port + i (default %(default)s; 0 with --rendezvous: free ports)",
    )
    p.add_argument("--peers", help='multi-host, static: JSON file {node id: "host:port"} for every node')
    add_rendezvous_arguments(p)
    p.add_argument(
        "--run-key-file",
        metavar="PATH",
        help="multi-host: file with the run's secret key (64 hex digits, e.g. from "
        "`python -c 'import secrets; print(secrets.token_hex(32))'`), the same on "
        "every host; nodes without it cannot join (default: $SKIPPIPE_RUN_KEY, "
        "else a new key per run)",
    )
    p.add_argument(
        "--runs",
        default=_env("runs", str(RUNS_DIR)),
        help="parent of the run directory (default: runs/ in the repository)",
    )
    p.add_argument("--seed", type=int, default=None, help="training seed (default: the scenario's)")
    p.add_argument(
        "--plan-time-limit",
        type=float,
        default=DEFAULT_TIME_LIMIT_S,
        help="CP-SAT seconds when the schedule must be built (default %(default)s)",
    )
    p.add_argument(
        "--peer-timeout",
        type=float,
        default=DEFAULT_PEER_TIMEOUT_S,
        help="wall seconds before a silent peer counts as dead (default %(default)s)",
    )
    p.add_argument(
        "--fail",
        action="append",
        default=[],
        metavar="SPEC",
        help="failure to inject, repeatable: node=N[,iteration=I][,phase=start|forward|"
        "backward|averaging][,after_ops=K][,how=crash|hang|slow][,factor=F] "
        "(crash: kill -9; hang: stops answering; slow: compute and links F times "
        "slower), or @FILE.json with a list of such objects; e.g. "
        "node=3,iteration=1,phase=forward,how=crash",
    )
    p.add_argument("--checkpoint", action="store_true", help="save per-stage checkpoints at the end")
    p.add_argument(
        "--stand-in-model",
        default="",
        metavar="SETTINGS",
        help="run this settings file's [model] (with the scenario's layer count) instead "
        "of the scenario's, still emulating the scenario's costs: replays a large "
        "model's schedule on a CPU box (e.g. settings/tiny.toml)",
    )
    p.add_argument(
        "--gantt",
        metavar="PNG",
        help="draw the measured timeline beside the predicted one "
        "(a relative name lands in the run directory)",
    )
    p.add_argument("--timeout", type=float, help="stop everything after this many wall seconds")
    p.add_argument(
        "--rejoin",
        metavar="RUN_DIR",
        help="restart nodes FIRST..LAST-1 into the running training of RUN_DIR: they load "
        "their stage's current weights from a live peer and are planned in again",
    )
    p.add_argument("--dump-gradients", action="store_true", help=argparse.SUPPRESS)  # tests


def add_rendezvous_arguments(p: argparse.ArgumentParser) -> None:
    from ..runtime.launch.rendezvous import DEFAULT_TIMEOUT_S

    p.add_argument(
        "--rendezvous",
        metavar="HOST:PORT",
        help="multi-host: meet the other hosts there (the first process on HOST serves "
        "the address book); needs the same run key everywhere",
    )
    p.add_argument(
        "--rendezvous-timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="S",
        help="wall seconds for every node to register (default %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    from ..runtime.launch.prepare import RunOptions, run_command
    from ..util.options import options_from

    return run_command(options_from(RunOptions, args), lambda line: print(line, flush=True))
