"""Simulate one iteration of each variant of a schedule: times, node utilisation, timelines; or,
with --iterations / --fail / --rejoin, several iterations under stragglers and churn, with the
online variants' rebalancing (sim/session.py)."""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from ..errors import SkipPipeError
from ..failures import Condition, parse_failures
from ..schedule_file import load_schedule
from ..sim.online import predict
from ..sim.result import SimResult
from ..sim.session import simulate_session
from ..sim.simulate import simulate
from ..timeline import chrome_trace, gantt_png, write_jsonl
from ..util.rundir import writable_output
from ..util.tables import format_table
from ..variants import REFERENCE, VARIANTS

HELP = "simulate a schedule's variants: iteration time, busy/idle/waiting, Gantt and traces"
SUMMARY_HEADER = (
    "variant",
    "order",
    "iteration_s",
    "makespan_s",
    "predicted_s",
    "busy",
    "idle",
    "waiting",
    "vs baseline",
)
SESSION_HEADER = ("variant", "median_s", "min_s", "max_s", "per iteration (s)", "moves", "rerouted", "lost")
NODE_HEADER = ("node", "stage", "ops", "busy_s", "averaging_s", "waiting_s", "idle_s")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("schedule", help="schedule JSON, e.g. schedules/tiny.json")
    p.add_argument(
        "--variant",
        choices=VARIANTS,
        action="append",
        metavar="VARIANT",
        help=f"variant to simulate, repeatable (default: all in the file; one of {', '.join(VARIANTS)})",
    )
    p.add_argument(
        "--fcfs", action="store_true", help="ignore the planned per-node order: first come first served"
    )
    p.add_argument("--per-node", action="store_true", help="also print each node's times")
    p.add_argument("--gantt", metavar="PNG", help="write a Gantt chart, one panel per variant")
    p.add_argument(
        "--timeline",
        metavar="JSONL",
        help="write the events (one file per variant when several: NAME.VARIANT.jsonl)",
    )
    p.add_argument("--trace", metavar="JSON", help="write a Chrome trace (one file per variant when several)")
    p.add_argument(
        "--iterations",
        type=int,
        default=1,
        help="simulate a session of this many iterations (default 1: one iteration)",
    )
    p.add_argument(
        "--fail",
        action="append",
        default=[],
        metavar="SPEC",
        help="in a session: node=N,iteration=I,how=slow[,factor=F] slows node N from "
        "iteration I; how=crash or hang takes it out from I (repeatable)",
    )
    p.add_argument(
        "--rejoin",
        action="append",
        default=[],
        metavar="NODE:ITERATION",
        help="in a session: a crashed node is back from ITERATION (repeatable)",
    )


def run(args: argparse.Namespace) -> int:
    for option in ("gantt", "timeline", "trace"):
        if getattr(args, option):
            writable_output(getattr(args, option), f"--{option}")
    if args.iterations < 1:
        raise SkipPipeError(f"--iterations must be positive, got {args.iterations}")
    back = rejoin_iterations(args.rejoin)
    sched, scenario = load_schedule(args.schedule)
    names = list(dict.fromkeys(args.variant)) if args.variant else list(sched.variants)
    for name in names:
        sched.variant(name)  # unknown variant -> ScheduleError
    if args.iterations != 1 or args.fail or args.rejoin:
        condition = Condition(tuple(parse_failures(args.fail, scenario)), back)
        return run_session(args, sched, scenario, names, condition)
    use_order = not args.fcfs
    results = {n: simulate(sched, n, scenario, use_order) for n in names}
    base = results.get(REFERENCE)
    if base is None and REFERENCE in sched.variants:
        base = simulate(sched, REFERENCE, scenario, use_order)
    mode = "first come first served" if args.fcfs else "planned order where present"
    print(f"schedule {args.schedule} (scenario {sched.scenario_name}, {mode})")
    predicted = {n: sched.variants[n].predicted for n in names}
    print(format_table(SUMMARY_HEADER, summary_rows(results, base, predicted)))
    for name in names:
        routing = sched.variants[name].routing
        if routing is not None and routing.online:  # a routed variant varies by seed
            got = predict(sched, name, scenario)
            print(
                f"{name}: online routing over {routing.seeds} seeds: mean {got.mean_s:.3f} s, "
                f"sd {got.sd_s:.3f} s, min {got.min_s:.3f} s, max {got.max_s:.3f} s"
            )
    if args.per_node:
        for name, r in results.items():
            print(f"\n{name}:")
            print(format_table(NODE_HEADER, node_rows(r)))
    _write_outputs(args, results)
    return 0


def summary_rows(
    results: dict[str, SimResult], base: SimResult | None, predicted: dict[str, dict[str, float]]
) -> list[list[str]]:
    """One row per variant (SUMMARY_HEADER): times in seconds, mean fractions over nodes."""
    rows = []
    for name, r in results.items():
        pred = predicted.get(name, {}).get("iteration_s")
        ratio = f"{r.iteration_s / base.iteration_s:.3f}" if base and base.iteration_s > 0 else "-"
        rows.append(
            [
                name,
                "planned" if r.used_order else "fcfs",
                f"{r.iteration_s:.3f}",
                f"{r.makespan_s:.3f}",
                "-" if pred is None else f"{pred:.3f}",
                f"{r.mean_fraction('busy'):.1%}",
                f"{r.mean_fraction('idle'):.1%}",
                f"{r.mean_fraction('waiting'):.1%}",
                ratio,
            ]
        )
    return rows


def node_rows(r: SimResult) -> list[list[str]]:
    """One row per node of one result (NODE_HEADER), seconds."""
    rows = []
    for s in r.per_node:
        rows.append(
            [
                str(s.node),
                str(s.stage),
                str(s.n_ops),
                f"{s.busy_s:.3f}",
                f"{s.averaging_s:.3f}",
                f"{s.waiting_s:.3f}",
                f"{s.idle_s:.3f}",
            ]
        )
    return rows


def _write_outputs(args: argparse.Namespace, results: dict[str, SimResult]) -> None:
    several = len(results) > 1
    for name, r in results.items():
        if args.timeline:
            out = write_jsonl(r.events, _per_variant(args.timeline, name, several))
            print(f"timeline -> {out}")
        if args.trace:
            print(f"trace -> {chrome_trace(r.events, _per_variant(args.trace, name, several))}")
    if args.gantt:
        panels = [
            (
                f"{name}: {'planned order' if r.used_order else 'fcfs'}, iteration {r.iteration_s:.3f} s",
                r.events,
            )
            for name, r in results.items()
        ]
        print(f"gantt -> {gantt_png(panels, args.gantt)}")


def _per_variant(path: str, variant: str, several: bool) -> Path:
    p = Path(path)
    return p.with_name(f"{p.stem}.{variant}{p.suffix}") if several else p


def run_session(args: argparse.Namespace, sched, scenario, names: list[str], condition: Condition) -> int:
    """Several iterations per variant under `condition`."""
    rows = []
    for name in names:
        got = simulate_session(sched, name, scenario, args.iterations, condition)
        for m in got.moves:
            print(
                f"{name}: rebalancing moves node {m.node} from stage {m.source} to stage {m.target} "
                f"at iteration {m.at}"
            )
        if got.stopped:
            print(f"{name}: the run stops before {got.stopped}")
        times = got.iteration_s or [float("nan")]
        rows.append(
            [
                name,
                f"{statistics.median(times):.3f}",
                f"{min(times):.3f}",
                f"{max(times):.3f}",
                " ".join(f"{t:.2f}" for t in times),
                str(len(got.moves)),
                str(got.rerouted),
                str(got.lost),
            ]
        )
    print(f"schedule {args.schedule} (scenario {sched.scenario_name}), {args.iterations} iterations")
    print(format_table(SESSION_HEADER, rows))
    return 0


def rejoin_iterations(specs: list[str]) -> dict[int, int]:
    """--rejoin NODE:ITERATION specs -> node -> the iteration it is back from."""
    back = {}
    for spec in specs:
        try:
            node, it = (int(x) for x in spec.split(":"))
        except ValueError:
            raise SkipPipeError(f"--rejoin {spec!r}: expected NODE:ITERATION") from None
        back[node] = it
    return back
