#!/usr/bin/env python3
"""Offline plan against online routing, and when: each variant under three conditions, run with
real node processes on this host (the emulated half of the experiment; sim/session.py simulates the same rows).

Variants (default): 1f1b (a planned full pipeline), swarm (SWARM's stochastic wiring, no plan),
swarm-skip (online choice with stage skips), ca-partial (SkipPipe's plan) and ca-repair
(ca-partial's plan, a dead or slow planned hop replaced online). Conditions:
  static     no failure
  straggler  one node slowed x3 from iteration 3
  churn      the same node crashes in iteration 2 and is restarted (--rejoin) as soon as its
             fault event appears (a restarted process needs ~10 s wall to come back: a run
             needs that much time left after the crash)
The node is chosen by role in each variant's own allocation: the last node of the first
non-data stage with more than one node (a stage an online router can route around).

Per run, iteration 0 excluded (warm-up): the median iteration time in scenario seconds and its
spread (min-max over the iterations), the mean training loss at the last iteration every run of
the scenario completed, microbatches re-sent (re-routed or restarted) and lost, rebalancing
moves and the exit code; beside them the simulator's median (skippipe.sim.session) when present.

    .venv/bin/python -m bench.swarm_bench --quick            # tiny only, 10 iterations
    .venv/bin/python -m bench.swarm_bench --figures docs     # tiny, geo-distributed, hetero-gpus
    .venv/bin/python -m bench.swarm_bench --scenarios geo-distributed --variants swarm ca-repair \\
        --conditions static churn --iterations 6

Wall time on this 2-core host: a tiny run 25-40 s (--quick: 15 runs, 9 min); a 20-node run of
4 iterations about a minute (ca-repair on hetero-gpus), swarm's about twice that; the whole
default bench about an hour. Give it an idle machine: load stretches every emulated time.

Writes OUT/report.md, OUT/report.json and OUT/swarm.png (OUT: --out, default runs/swarm-bench).
Each finished run leaves OUT/results/<scenario>-<variant>-<condition>-<N>it.json: a rerun of the
bench (after an interruption) skips those runs. Schedules are planned into OUT/schedules/ and
the run directories and launcher logs land in OUT/runs/.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

from bench.runs import finish, skippipe, start
from bench.swarm_report import common_iteration, losses, num, plot, row_of, spread, table, tally
from skippipe.runtime.launch.supervisor import Progress
from skippipe.runtime.node.runconfig import events_dir, load_config
from skippipe.schedule_file import load_schedule
from skippipe.timeline import read_jsonl
from skippipe.util.ports import free_port_range
from skippipe.util.procs import stop_sessions
from skippipe.variants import VARIANTS as ALL_VARIANTS

ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Case:
    settings: str
    nodes: int
    time_scale: float  # wall s per scenario s
    iterations: int
    peer_timeout_s: float  # failure detection deadline (wall s); a crash is seen within a quarter
    plan_s: float  # budget of the schedule's planning (all variants)
    deadline_s: float  # the bench's own wall limit for one run (the run has a tighter one itself)
    extra: tuple[str, ...] = ()


# 20 processes cannot run the 500M model on a CPU box: the stand-in keeps the scenario's compute
# times and message sizes (emulated), time-scaled as bench/runtime_bench.py does
STAND_IN = ("--stand-in-model", "settings/tiny.toml")
CASES = {
    "tiny": Case("settings/tiny.toml", 6, 4.0, 12, 3.0, 10, 900),
    "geo-distributed": Case("settings/geo-distributed.toml", 20, 0.05, 8, 10.0, 60, 3600, STAND_IN),
    "hetero-gpus": Case("settings/hetero-gpus.toml", 20, 0.05, 8, 10.0, 60, 3600, STAND_IN),
}
VARIANTS = ("1f1b", "swarm", "swarm-skip", "ca-partial", "ca-repair")
CONDITIONS = ("static", "straggler", "churn")
SLOW_FACTOR, SLOW_FROM = 3.0, 3
CRASH_AT = 2
BACK_AT = CRASH_AT + 1  # simulated churn without a measured rejoin: back after the next iteration
QUICK_ITERATIONS = 10
REJOIN_GRACE_S = 30.0  # a restarted node that rejoined finishes with the others, one too late waits on
MIN_ITERATIONS = SLOW_FROM + 2  # straggler and churn: steady iterations after the fault
SIM_SEEDS = range(5)  # router seeds of the online variants' simulation


def fail(message: str) -> None:
    print(f"swarm_bench: error: {message}", file=sys.stderr)
    raise SystemExit(2)


# -- conditions (tests/test_swarm_bench.py) ------------------------------------------------------
def fault_node(allocation) -> int | None:
    """The last node of the first non-data stage that has a peer; None when no stage has one."""
    return next((nodes[-1] for nodes in allocation[1:] if len(nodes) > 1), None)


def fail_args(condition: str, node: int | None) -> list[str]:
    """The run's --fail options for `condition` on `node`."""
    if condition == "static":
        return []
    if condition == "straggler":
        return ["--fail", f"node={node},iteration={SLOW_FROM},phase=start,how=slow,factor={SLOW_FACTOR:g}"]
    return ["--fail", f"node={node},iteration={CRASH_AT},phase=forward,how=crash"]


# -- runs ----------------------------------------------------------------------------------------
def plan(name: str, out: Path, variants: list[str]) -> Path:
    """The scenario's schedule in OUT/schedules (planned once: one worker, seed 0)."""
    path = out / "schedules" / f"{name}.json"
    if path.is_file() and set(variants) <= set(load_schedule(path)[0].variants):
        return path
    wanted = [v for v in ALL_VARIANTS if v in set(VARIANTS) | set(variants)]
    path.parent.mkdir(parents=True, exist_ok=True)
    skippipe(
        [
            "schedule",
            CASES[name].settings,
            "--out",
            str(path),
            "--variants",
            *wanted,
            "--seed",
            "0",
            "--time-limit",
            f"{CASES[name].plan_s:g}",
            "--workers",
            "1",
            "--quiet",
        ],
        f"{name}: planning",
    )
    return path


def wait_for_event(runs: Path, node: int, event: str, proc, deadline_s: float) -> Path | None:
    """The run directory once `node` has written `event`; None if the run ends (or the deadline
    passes) first. Polls the event file the node appends to."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        ended = proc.poll() is not None
        for f in runs.glob(f"*/events/node-{node}.jsonl"):
            if f'"{event}"' in f.read_text():
                return f.parent.parent
        if ended:
            return None
        time.sleep(0.1)
    return None


def restart_when_down(main, runs: Path, node: int, variant: str, case: Case):
    """Restart the crashed node into the run (--rejoin) as soon as its fault event appears; the
    restarted process, or None when the fault never came."""
    run_dir = wait_for_event(runs, node, "fault", main, case.deadline_s)
    if run_dir is None:
        return None
    return start(
        ["run", str(node), str(node + 1), variant, "0", "--rejoin", str(run_dir)],
        runs.parent / f"{runs.name}-rejoin.log",
    )


def measure(run_dir: Path) -> dict:
    """What the run's files say: iteration times as the launcher measured them (its
    iterations.json, else the same computation over the events), losses, counts."""
    cfg = load_config(run_dir / "config.json")
    done = run_dir / "iterations.json"
    rows = json.loads(done.read_text()) if done.is_file() else Progress(cfg, float("nan")).update(final=True)
    events = read_jsonl(events_dir(cfg.run_dir))
    return {
        "iteration_s": [r["measured_s"] for r in rows],
        "losses": losses(events, cfg.data_nodes),
        "run_dir": str(run_dir),
        **tally(events),
    }


def run_one(
    name: str, variant: str, condition: str, node: int | None, sched: Path, out: Path, iterations: int
) -> dict:
    case, key = CASES[name], f"{name}-{variant}-{condition}"
    runs = out / "runs" / key
    shutil.rmtree(runs, ignore_errors=True)  # an interrupted attempt's leftovers: it left no result
    runs.mkdir(parents=True)
    args = [
        "run",
        "0",
        str(case.nodes),
        variant,
        "0",
        "--scenario",
        case.settings,
        "--schedule",
        str(sched),
        "--iterations",
        str(iterations),
        "--time-scale",
        f"{case.time_scale:g}",
        "--runs",
        str(runs),
        "--base-port",
        str(free_port_range(case.nodes)),
        "--peer-timeout",
        f"{case.peer_timeout_s:g}",
        *case.extra,
        *fail_args(condition, node),
    ]
    t0 = time.monotonic()
    main, back, rejoin = start(args, runs.parent / f"{key}.log"), None, None
    try:
        back = restart_when_down(main, runs, node, variant, case) if condition == "churn" else None
        code = finish(main, case.deadline_s)
        if back is not None:  # 124: it came back too late, after the others had finished
            rejoin = finish(back, REJOIN_GRACE_S)
    finally:
        stop_sessions([p for p in (main, back) if p is not None])  # interrupted: no node left behind
    run_dirs = [p for p in runs.iterdir() if (p / "config.json").is_file()]
    got = measure(run_dirs[0]) if run_dirs else {"iteration_s": [], "losses": [], **tally([])}
    return {
        "scenario": name,
        "variant": variant,
        "condition": condition,
        "node": node,
        "iterations": iterations,
        "time_scale": case.time_scale,
        "exit_code": code,
        "rejoin_exit_code": rejoin,
        "wall_s": round(time.monotonic() - t0, 1),
        **got,
    }


def result_of(
    name: str,
    variant: str,
    condition: str,
    node: int | None,
    sched: Path,
    out: Path,
    iterations: int,
    label: str,
) -> dict:
    """The run's result: from OUT/results when an earlier bench finished it, else run now."""
    path = out / "results" / f"{name}-{variant}-{condition}-{iterations}it.json"
    if path.is_file():
        print(f"{label}: kept from {path}", flush=True)
        return json.loads(path.read_text())
    print(f"{label}: started" + ("" if node is None else f" (node {node} {condition})"), flush=True)
    r = run_one(name, variant, condition, node, sched, out, iterations)
    s = spread(r["iteration_s"])
    print(
        f"{label}: done in {r['wall_s']:.0f} s, exit {r['exit_code']}, median {num(s and s[0])} s/iter, "
        f"{r['rerouted']} re-sent, {r['lost']} lost, {r['moves']} moves"
        + (f", rejoined {r['rejoined']} (exit {r['rejoin_exit_code']})" if condition == "churn" else ""),
        flush=True,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(r, indent=1))
    return r


# -- simulation and report -----------------------------------------------------------------------
def simulated(
    schedule,
    variant: str,
    scenario,
    condition_name: str,
    node: int | None,
    iterations: int,
    back_at: int | None = None,
) -> dict:
    """The simulator's median iteration time (scenario s) for one row, iteration 0 excluded:
    planned variants once (spread min-max over iterations), routed variants over router seeds
    0..4 (the median of the per-seed medians, spread min-max over seeds). ImportError while
    skippipe.sim.session is missing. Churn: the node is back from `back_at` (the iteration the
    run's restarted node rejoined at), else BACK_AT."""
    from skippipe.failures import Condition, FailureSpec
    from skippipe.sim.session import simulate_session

    cond = {
        "static": Condition(),
        "straggler": Condition((FailureSpec(node, SLOW_FROM, how="slow", factor=SLOW_FACTOR),)),
        "churn": Condition((FailureSpec(node, CRASH_AT),), {node: back_at or BACK_AT}),
    }[condition_name]
    # every routed variant over seeds, ca-repair too: its replacement hops are drawn by the swarm rule
    online = schedule.variant(variant).routing is not None
    sessions = [
        simulate_session(schedule, variant, scenario, iterations, cond, seed=s)
        for s in (SIM_SEEDS if online else (0,))
    ]
    if online:
        medians = [spread(s.iteration_s)[0] for s in sessions]
        med, lo, hi = statistics.median(medians), min(medians), max(medians)
    else:
        med, lo, hi = spread(sessions[0].iteration_s)
    return {
        "sim_median_s": med,
        "sim_lo_s": lo,
        "sim_hi_s": hi,
        "sim_rerouted": statistics.median(s.rerouted for s in sessions),
        "sim_lost": statistics.median(s.lost for s in sessions),
        "sim_moves": statistics.median(len(s.moves) for s in sessions),
    }


def report_rows(results: list[dict], schedules: dict) -> list[dict]:
    rows, simulate = [], True
    for name in dict.fromkeys(r["scenario"] for r in results):
        mine = [r for r in results if r["scenario"] == name]
        loss_at, (sched, sc, _) = common_iteration(mine), schedules[name]
        for r in mine:
            sim = None
            if simulate:
                try:
                    sim = simulated(
                        sched,
                        r["variant"],
                        sc,
                        r["condition"],
                        r["node"],
                        r["iterations"],
                        r.get("rejoined_at"),
                    )
                except ImportError as e:
                    print(f"simulation rows skipped: {e}", flush=True)
                    simulate = False
            rows.append(row_of(r, loss_at, sim))
    return rows


def write_report(rows: list[dict], out: Path, figures: str | None) -> None:
    parts = [
        "# Offline plan vs online routing (bench/swarm_bench.py)",
        "",
        f"Median iteration time in scenario seconds over the iterations after the first; min-max "
        f"over the same iterations. straggler: the node slowed x{SLOW_FACTOR:g} from iteration "
        f"{SLOW_FROM}; churn: it crashes in iteration {CRASH_AT} and is restarted. loss: mean training "
        f"loss at the last iteration every run of the scenario completed. re-sent: microbatches "
        f"re-routed or restarted. simulated: skippipe.sim.session's median (router seeds 0-4 for "
        f"online variants), '-' when it was not run.",
    ]
    for name in dict.fromkeys(r["scenario"] for r in rows):
        mine = [r for r in rows if r["scenario"] == name]
        parts += [
            "",
            f"## {name} (time scale {mine[0]['time_scale']:g}, loss at iteration "
            f"{mine[0]['loss_iteration']})",
            "",
            table(mine),
        ]
    text = "\n".join(parts) + "\n"
    print("\n" + text)
    (out / "report.md").write_text(text)
    (out / "report.json").write_text(json.dumps(rows, indent=1))
    pngs = [out / "swarm.png"] + ([Path(figures) / "swarm-experiments.png"] if figures else [])
    plot(rows, pngs)
    print("wrote", ", ".join(str(p) for p in [out / "report.md", out / "report.json", *pngs]))


# -- command line --------------------------------------------------------------------------------
class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse would print usage too)
        fail(message)


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--scenarios",
        nargs="+",
        default=list(CASES),
        metavar="S",
        help=f"scenarios (default: {' '.join(CASES)})",
    )
    ap.add_argument(
        "--variants",
        nargs="+",
        default=list(VARIANTS),
        metavar="V",
        help=f"variants (default: {' '.join(VARIANTS)}; any of python -m skippipe schedule's)",
    )
    ap.add_argument(
        "--conditions",
        nargs="+",
        default=list(CONDITIONS),
        metavar="C",
        help=f"conditions (default: {' '.join(CONDITIONS)})",
    )
    ap.add_argument(
        "--iterations",
        type=int,
        help="iterations per run (default: tiny "
        f"{CASES['tiny'].iterations}, 20-node scenarios {CASES['geo-distributed'].iterations}, "
        f"--quick {QUICK_ITERATIONS})",
    )
    ap.add_argument("--out", default="runs/swarm-bench", help="output folder (default %(default)s)")
    ap.add_argument("--quick", action="store_true", help=f"tiny only, {QUICK_ITERATIONS} iterations")
    ap.add_argument("--figures", metavar="DIR", help="also write the plot as DIR/swarm-experiments.png")
    args = ap.parse_args(argv)
    for what, given, known in (
        ("scenario", args.scenarios, CASES),
        ("variant", args.variants, ALL_VARIANTS),
        ("condition", args.conditions, CONDITIONS),
    ):
        bad = [x for x in given if x not in known]
        if bad:
            fail(f"unknown {what} {bad[0]!r} (choose from {', '.join(known)})")
    lowest = MIN_ITERATIONS if set(args.conditions) - {"static"} else 2
    if args.iterations is not None and args.iterations < lowest:
        fail(
            f"--iterations must be at least {lowest} for {', '.join(args.conditions)}, got {args.iterations}"
        )
    if args.figures and not Path(args.figures).is_dir():
        fail(f"--figures {args.figures}: no such folder")
    args.conditions = [c for c in CONDITIONS if c in args.conditions]  # the report's order, once each
    if args.quick:
        args.scenarios, args.iterations = ["tiny"], args.iterations or QUICK_ITERATIONS
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    out = Path(args.out).resolve()
    results, schedules = [], {}
    runs = [(n, v, c) for n in args.scenarios for v in args.variants for c in args.conditions]
    for k, (name, variant, condition) in enumerate(runs, 1):
        if name not in schedules:
            sched_path = plan(name, out, args.variants)
            schedules[name] = (*load_schedule(sched_path), sched_path)
        sched, _, sched_path = schedules[name]
        node = None if condition == "static" else fault_node(sched.allocation_of(variant))
        label = f"[{k}/{len(runs)}] {name} {variant} {condition}"
        if node is None and condition != "static":
            print(f"{label}: skipped, no non-data stage of {variant}'s allocation has two nodes", flush=True)
            continue
        iterations = args.iterations or CASES[name].iterations
        results.append(result_of(name, variant, condition, node, sched_path, out, iterations, label))
    write_report(report_rows(results, schedules), out, args.figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
