"""Schedule families beside SkipPipe: every variant planned on several scenarios, one table.

    .venv/bin/python -m bench.families_bench [--time-limit 60] [--workers 2] [--seed 0]
        [--scenarios tiny geo-distributed hetero-gpus single-cluster] [--json PATH]
        [--gantt docs/families-gantt.png] [--gantt-scenario tiny]

Per scenario, `planning.build_schedule` (the code path of `create_schedule.py`, --time-limit for
the whole build) plans every variant; the simulator judges each. Prints a markdown table (paste
into README): per scenario and variant the simulated iteration time, its ratio to 1f1b, the
makespan, the bubble share, the peak activations any node holds and the most the scenario's
memory slots allow a node. Writes the same rows as JSON. With --gantt it also draws one Gantt
panel per variant in GANTT_VARIANTS on --gantt-scenario from the simulator's timeline events.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from skippipe.errors import SkipPipeError
from skippipe.plan_options import DEFAULT_TIME_LIMIT_S, PlanOptions
from skippipe.planning import build_schedule
from skippipe.scenario import load_scenario
from skippipe.sim.simulate import simulate
from skippipe.timeline import gantt_png

SETTINGS = Path(__file__).resolve().parents[1] / "settings"
SCENARIOS = ("tiny", "geo-distributed", "hetero-gpus", "single-cluster")
REFERENCE = "1f1b"  # every iteration time is compared with this family's on its scenario
GANTT_VARIANTS = ("baseline", "naive", "gpipe", "1f1b", "zb-h1", "dualpipev", "ca-partial", "ca-partial-zb")
GANTT_COLUMNS = 2
DEFAULT_WORKERS = 2
HEADER = (
    "scenario",
    "variant",
    "iteration s",
    f"vs {REFERENCE}",
    "makespan s",
    "bubble",
    "peak act",
    "slots",
)


def plan(name: str, args) -> tuple[list[dict], object, object]:
    """Plan every variant on one scenario: its rows, the schedule and the scenario."""
    sc = load_scenario(SETTINGS / f"{name}.toml")
    started, cpu = time.monotonic(), time.process_time()  # CP-SAT's threads count in the CPU
    sched = build_schedule(
        sc,
        PlanOptions(seed=args.seed, time_limit_s=args.time_limit, workers=args.workers),
        lambda line: print(f"  [{name}] {line}", flush=True),
    )
    wall, cpu = time.monotonic() - started, time.process_time() - cpu
    print(
        f"[{name}] planned {len(sched.variants)} variants in {wall:.1f} s wall, {cpu:.1f} s CPU "
        f"(load average {os.getloadavg()[0]:.1f})",
        flush=True,
    )
    slots = max(n.memory_slots for n in sc.nodes)
    return rows_of(name, {n: v.predicted for n, v in sched.variants.items()}, slots), sched, sc


def rows_of(scenario: str, predicted: dict[str, dict], slots: int) -> list[dict]:
    """One row per variant from its `predicted` figures; the ratio to REFERENCE when planned."""
    ref = predicted.get(REFERENCE, {}).get("iteration_s")
    return [
        {
            "scenario": scenario,
            "variant": name,
            "iteration_s": p["iteration_s"],
            "vs_ref": p["iteration_s"] / ref if ref else None,
            "makespan_s": p["makespan_s"],
            "bubble_share": p["bubble_share"],
            "peak_activations": p["peak_activations"],
            "memory_slots": slots,
        }
        for name, p in predicted.items()
    ]


def markdown(rows: list[dict]) -> str:
    """The rows as a markdown table (HEADER); the best iteration time of a scenario in bold."""
    best = {}
    for r in rows:
        best[r["scenario"]] = min(best.get(r["scenario"], r["iteration_s"]), r["iteration_s"])
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for r in rows:
        it = f"{r['iteration_s']:.3f}"
        if r["iteration_s"] == best[r["scenario"]]:
            it = f"**{it}**"
        ratio = "-" if r["vs_ref"] is None else f"{r['vs_ref']:.3f}"
        cells = (
            r["scenario"],
            r["variant"],
            it,
            ratio,
            f"{r['makespan_s']:.3f}",
            f"{r['bubble_share']:.1%}",
            str(r["peak_activations"]),
            str(r["memory_slots"]),
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def draw_gantt(sched, sc, path: str) -> None:
    """One panel per GANTT_VARIANTS entry the schedule has, from the simulator's events."""
    panels = []
    for name in (v for v in GANTT_VARIANTS if v in sched.variants):
        r = simulate(sched, name, sc)
        panels.append((f"{name}: iteration {r.iteration_s:.3f} s, bubble {r.bubble_share:.0%}", r.events))
    gantt_png(panels, path, columns=GANTT_COLUMNS)
    print(f"wrote {path}", flush=True)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), metavar="NAME")
    p.add_argument(
        "--time-limit",
        type=float,
        default=DEFAULT_TIME_LIMIT_S,
        help="seconds for each scenario's whole build (default %(default)s)",
    )
    p.add_argument("--workers", type=int, default=DEFAULT_WORKERS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default="runs/bench/families.json", metavar="PATH")
    p.add_argument("--gantt", metavar="PNG", help="also draw the Gantt grid to this file")
    p.add_argument("--gantt-scenario", default="tiny", metavar="NAME")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    names = list(dict.fromkeys(args.scenarios))
    if args.gantt and args.gantt_scenario not in names:
        names.append(args.gantt_scenario)
    rows = []
    try:
        for name in names:
            if not (SETTINGS / f"{name}.toml").is_file():
                raise SkipPipeError(f"no scenario {name!r} in {SETTINGS}")
            got, sched, sc = plan(name, args)
            rows += got
            if args.gantt and name == args.gantt_scenario:
                draw_gantt(sched, sc, args.gantt)
    except SkipPipeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {"time_limit_s": args.time_limit, "workers": args.workers, "seed": args.seed, "rows": rows},
            indent=1,
        )
    )
    print(f"wrote {out}\n")
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
