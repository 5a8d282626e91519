"""Train along planned paths with node processes on this host: ./run.sh FIRST LAST SETTING MB."""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from ..runtime import launch
from ..errors import SkipPipeError
from ..planning import DEFAULT_TIME_LIMIT_S
from ..runtime.emulation import Emulation
from ..runtime.runconfig import RunConfig, load_config
from ..scenario import load_scenario
from ..schedule import VARIANTS, load_schedule

HELP = "start nodes FIRST..LAST-1 of a scenario and train along the planned paths"
DEFAULT_SCENARIO = "settings/tiny.toml"  # the built-in scenario
DEFAULT_BASE_PORT = 29500
DEFAULT_PEER_TIMEOUT_S = 30.0  # wall seconds without an answer before a peer counts as dead
DEFAULT_CONNECT_TIMEOUT_S = 60.0
TIMEOUT_FACTOR = 20.0  # the whole run may take this many times its predicted duration ...
TIMEOUT_SLACK_S = 120.0  # ... plus this (start-up, tokenizer training on first use)

ENV = {  # option -> environment variable that sets its default
    "scenario": "SKIPPIPE_SCENARIO", "iterations": "SKIPPIPE_ITERATIONS",
    "time_scale": "SKIPPIPE_TIME_SCALE", "base_port": "SKIPPIPE_BASE_PORT",
    "runs": "SKIPPIPE_RUNS", "host": "SKIPPIPE_HOST",
}


def _env(name: str, default, cast=str):
    value = os.environ.get(ENV[name])
    return default if value in (None, "") else cast(value)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = ("environment: " + ", ".join(f"{v} (--{k.replace('_', '-')})" for k, v in ENV.items())
                + "\nexample: ./run.sh 0 6 ca-partial 2   # every node of the tiny scenario")
    p.add_argument("first", type=int, help="first node id to start on this host")
    p.add_argument("last", type=int, help="one past the last node id to start")
    p.add_argument("setting", choices=VARIANTS, help="which paths to train along")
    p.add_argument("mb", type=int, help="samples per microbatch (0: the scenario's value)")
    p.add_argument("--scenario", default=_env("scenario", DEFAULT_SCENARIO),
                   help="settings file (default %(default)s)")
    p.add_argument("--schedule", help="schedule file (default: schedules/<scenario>.json, built when missing)")
    p.add_argument("--iterations", type=int, default=_env("iterations", None, int),
                   help="iterations to train (default: the scenario's training.iterations)")
    p.add_argument("--time-scale", type=float, default=_env("time_scale", None, float),
                   help="emulated time multiplier (default: the scenario's training.time_scale)")
    p.add_argument("--no-emulate-compute", action="store_true",
                   help="run operations at this machine's speed instead of the scenario's")
    p.add_argument("--no-emulate-links", action="store_true", help="send messages without emulated delay")
    p.add_argument("--host", default=_env("host", "127.0.0.1"), help="address the nodes listen on")
    p.add_argument("--base-port", type=int, default=_env("base_port", DEFAULT_BASE_PORT, int),
                   help="node i listens on base-port + i (default %(default)s)")
    p.add_argument("--peers", help="multi-host: JSON file {node id: \"host:port\"} for every node")
    p.add_argument("--runs", default=_env("runs", "runs"), help="parent of the run directory")
    p.add_argument("--seed", type=int, default=None, help="training seed (default: the scenario's)")
    p.add_argument("--plan-time-limit", type=float, default=DEFAULT_TIME_LIMIT_S,
                   help="CP-SAT seconds when the schedule must be built (default %(default)s)")
    p.add_argument("--peer-timeout", type=float, default=DEFAULT_PEER_TIMEOUT_S,
                   help="wall seconds before a silent peer counts as dead (default %(default)s)")
    p.add_argument("--fail", action="append", default=[], metavar="SPEC",
                   help="failure to inject, e.g. node=3,iteration=1,phase=forward,how=crash")
    p.add_argument("--checkpoint", action="store_true", help="save per-stage checkpoints at the end")
    p.add_argument("--stand-in-model", default="", metavar="SETTINGS",
                   help="run this settings file's [model] (with the scenario's layer count) instead "
                        "of the scenario's, still emulating the scenario's costs: replays a large "
                        "model's schedule on a CPU box (e.g. settings/tiny.toml)")
    p.add_argument("--gantt", metavar="PNG", help="draw the measured timeline beside the predicted one")
    p.add_argument("--timeout", type=float, help="stop everything after this many wall seconds")
    p.add_argument("--rejoin", metavar="RUN_DIR",
                   help="restart nodes FIRST..LAST-1 into the running training of RUN_DIR: they load "
                        "their stage's current weights from a live peer and are planned in again")
    p.add_argument("--dump-gradients", action="store_true", help=argparse.SUPPRESS)  # tests


def _peers(args, n_nodes: int) -> dict[int, tuple[str, int]]:
    if not args.peers:
        return {i: (args.host, args.base_port + i) for i in range(n_nodes)}
    import json
    try:
        table = json.loads(Path(args.peers).read_text())
        peers = {int(k): (v.rsplit(":", 1)[0], int(v.rsplit(":", 1)[1])) for k, v in table.items()}
    except (OSError, ValueError, IndexError) as e:
        raise SkipPipeError(f"{args.peers}: not a peer table ({e})") from None
    missing = sorted(set(range(n_nodes)) - set(peers))
    if missing:
        raise SkipPipeError(f"{args.peers}: no address for node {missing[0]}")
    return peers


def _prepare_data(sc, stand_in_model: str, say) -> None:
    """Build the corpus and tokenizer caches once, before the data nodes all want them."""
    from ..train.data import prepare_data
    from ..runtime.compute import stand_in
    vocab = stand_in(sc.model, stand_in_model).vocab_size
    say(f"preparing the built-in corpus and a {vocab}-token tokenizer (cached after the first run)")
    prepare_data(None, vocab)


def run(args: argparse.Namespace) -> int:
    from ..runtime.faults import parse_failures
    from ..sim.simulate import simulate

    say = lambda line: print(line, flush=True)  # noqa: E731
    if args.rejoin:
        cfg = load_config(Path(args.rejoin) / "config.json")
        sc = load_scenario(cfg.scenario_path, cfg.scenario_overrides)
        return launch.rejoin(cfg, launch.check_range(args.first, args.last, sc),
                             args.timeout or TIMEOUT_SLACK_S + cfg.connect_timeout_s, say)
    if args.time_scale is not None and not args.time_scale > 0:
        raise SkipPipeError(f"--time-scale must be positive, got {args.time_scale:g}")
    sc = launch.scenario_for(args.scenario, args.mb or None)
    nodes = launch.check_range(args.first, args.last, sc)
    sched_path = launch.ensure_schedule(sc, args.setting, args.schedule, args.plan_time_limit, say)
    sched, _ = load_schedule(sched_path, sc)
    variant = sched.variant(args.setting)
    predicted = simulate(sched, args.setting, sc).iteration_s
    _prepare_data(sc, args.stand_in_model, say)
    peers = _peers(args, len(sc.nodes))
    launch.check_ports(peers, nodes)
    run_dir = launch.new_run_dir(args.runs, args.setting)
    cfg = RunConfig(
        run_dir=str(run_dir), scenario_path=str(Path(args.scenario).resolve()),
        scenario_overrides=dict(sc.overrides), schedule_path=str(Path(sched_path).resolve()),
        variant=variant.name, iterations=args.iterations or sc.training.iterations,
        # the run's one time scale from here on; the scenario's value is only the default
        time_scale=sc.training.time_scale if args.time_scale is None else args.time_scale,
        emulate_compute=not args.no_emulate_compute, emulate_links=not args.no_emulate_links,
        peers=peers, local_nodes=tuple(nodes), data_nodes=sched.allocation[0],
        epoch=time.time(), seed=sc.training.seed if args.seed is None else args.seed,
        peer_timeout_s=args.peer_timeout, connect_timeout_s=DEFAULT_CONNECT_TIMEOUT_S,
        save_checkpoint=args.checkpoint, failures=tuple(parse_failures(args.fail, sc)),
        dump_gradients=args.dump_gradients, stand_in_model=args.stand_in_model)
    timeout = args.timeout or (TIMEOUT_SLACK_S + TIMEOUT_FACTOR * cfg.iterations
                               * Emulation.from_config(cfg).wall_s(predicted))
    say(f"run {run_dir}: nodes {nodes.start}..{nodes.stop - 1} of {sc.name} ({len(sc.nodes)} nodes), "
        f"{args.setting}, {cfg.iterations} iterations, {sc.pipeline.samples_per_microbatch} samples "
        f"per microbatch, time scale {cfg.time_scale:g}")
    result = launch.run(cfg, nodes, predicted, timeout, say)
    say(launch.summary(result.iterations))
    if args.gantt:
        from ..runtime.report import measured_vs_predicted_gantt
        measured_vs_predicted_gantt(cfg, sched, sc, args.gantt)
        say(f"gantt: {args.gantt}")
    return result.exit_code
