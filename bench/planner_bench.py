"""Planner benchmark: schedule quality and solve time of the four variants, and planner scaling.

    .venv/bin/python bench/planner_bench.py [--time-limit 60] [--workers N] [--seed 0]
        [--scenarios geo-distributed hetero-gpus] [--scale] [--long] [--json runs/bench/x.json]

Quality (per scenario in --scenarios): one allocation (`allocate`, seed), then baseline, random,
non-ca-partial and ca-partial on it (the last two with --time-limit of CP-SAT each); every
variant is validated and simulated (the simulator is the judge: predicted iteration time).
Targets, checked and printed: ca/baseline <= 0.40, ca/random <= 0.75, ca/non-ca <= 0.95,
gap to CP-SAT's proven bound <= 10%, ca-partial wall time <= the time limit (60 s).

Scaling (--scale): settings/scale-{40,80,120}.toml, the `allocate` allocation (its own search
time is not counted): time to the first feasible schedule (model data + one greedy run),
then ca-partial at --time-limit (and 300 s with --long): its simulated iteration time against
random and against CP-SAT's bound.

Prints markdown tables (paste into README); exits 1 when a quality target is missed.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from skippipe.planner.allocation import allocate  # noqa: E402
from skippipe.planner.baselines import baseline_variant, random_variant  # noqa: E402
from skippipe.planner.cpsat import Rules  # noqa: E402
from skippipe.planner.model_data import build_data, plan_values  # noqa: E402
from skippipe.planner.greedy import GREEDY_VARIANTS, GreedyScheduler  # noqa: E402
from skippipe.planner.partial import ca_partial_variant, non_ca_partial_variant  # noqa: E402
from skippipe.scenario import load_scenario  # noqa: E402
from skippipe.schedule import Schedule, validate  # noqa: E402
from skippipe.sim.simulate import simulate  # noqa: E402

SETTINGS = Path(__file__).resolve().parents[1] / "settings"
DEFAULT_TIME_LIMIT_S = 60.0  # the planner's default CP-SAT budget
LONG_TIME_LIMIT_S = 300.0  # the scaling table's second budget (--long)
SCALE_SCENARIOS = ("scale-40", "scale-80", "scale-120")
TARGETS = {  # name -> (largest allowed value, what it measures)
    "ca/baseline": (0.40, "iteration time vs the full pipeline"),
    "ca/random": (0.75, "vs network-blind random skipping"),
    "ca/non-ca": (0.95, "vs SkipPipe without TC2"),
    "gap": (0.10, "ca-partial objective vs CP-SAT's proven bound"),
}


def run_quality(name: str, args) -> dict:
    """All four variants on one scenario: simulated times, ratios, targets."""
    sc = load_scenario(SETTINGS / f"{name}.toml")
    alloc = allocate(sc, seed=args.seed)
    progress = (lambda line: print(f"  [{name}] {line}", flush=True)) if args.verbose else None
    variants = {
        "baseline": baseline_variant(sc, alloc),
        "random": random_variant(sc, alloc, seed=args.seed),
        "non-ca-partial": non_ca_partial_variant(sc, alloc, time_limit_s=args.time_limit,
                                                 seed=args.seed, workers=args.workers),
        "ca-partial": ca_partial_variant(sc, alloc, time_limit_s=args.time_limit, seed=args.seed,
                                         workers=args.workers, progress=progress),
    }
    sched = Schedule(sc.name, sc.content_hash, sc.source, alloc.stages, variants)
    validate(sched, sc)
    sim = {v: simulate(sched, v, sc) for v in variants}
    it = {v: r.iteration_s for v, r in sim.items()}
    ca = variants["ca-partial"].provenance
    ratios = {"ca/baseline": it["ca-partial"] / it["baseline"],
              "ca/random": it["ca-partial"] / it["random"],
              "ca/non-ca": it["ca-partial"] / it["non-ca-partial"], "gap": ca.gap}
    return {"scenario": name, "allocation": [list(s) for s in alloc.stages],
            "iteration_s": it, "makespan_s": {v: r.makespan_s for v, r in sim.items()},
            "planned_s": {v: variants[v].predicted.get("planned_iteration_s") for v in variants},
            "objective_s": {v: variants[v].provenance.objective for v in variants},
            "bound_s": {v: variants[v].provenance.bound for v in variants},
            "status": {v: variants[v].provenance.status for v in variants},
            "wall_s": {v: variants[v].provenance.wall_s for v in variants}, "ratios": ratios,
            "time_limit_s": args.time_limit}


def quality_table(r: dict) -> str:
    lines = [f"### {r['scenario']} (allocation {r['allocation']})", "",
             "| variant | iteration s (sim) | makespan s (sim) | planned s | objective s | bound s | wall s | status |",
             "|---|---|---|---|---|---|---|---|"]
    for v in r["iteration_s"]:
        lines.append(f"| {v} | {r['iteration_s'][v]:.2f} | {r['makespan_s'][v]:.2f} | "
                     f"{_f(r['planned_s'][v])} | {_f(r['objective_s'][v])} | {_f(r['bound_s'][v])} | "
                     f"{r['wall_s'][v]:.1f} | {r['status'][v]} |")
    lines += ["", "| target | value | limit | met |", "|---|---|---|---|"]
    for key, (limit, what) in TARGETS.items():
        value = r["ratios"][key]
        lines.append(f"| {key} ({what}) | {_f(value, '.3f')} | {limit} | "
                     f"{'yes' if value is not None and value <= limit else 'NO'} |")
    wall = r["wall_s"]["ca-partial"]
    lines.append(f"| ca-partial wall s | {wall:.1f} | {r['time_limit_s']:g} | "
                 f"{'yes' if wall <= r['time_limit_s'] else 'NO'} |")
    return "\n".join(lines)


def met(r: dict) -> bool:
    return (all(r["ratios"][k] is not None and r["ratios"][k] <= lim for k, (lim, _) in TARGETS.items())
            and r["wall_s"]["ca-partial"] <= r["time_limit_s"])


def run_scale(name: str, limits: list[float], args) -> dict:
    """First feasible schedule time, then ca-partial per time limit, on the searched allocation."""
    sc = load_scenario(SETTINGS / f"{name}.toml")
    stages = allocate(sc, seed=args.seed).stages
    started = time.monotonic()
    data = build_data(sc, stages)
    first = GreedyScheduler(data, *GREEDY_VARIANTS[0]).run()  # the first feasible schedule
    first_s = time.monotonic() - started
    rnd = random_variant(sc, stages, seed=args.seed)
    out = {"scenario": name, "nodes": len(sc.nodes), "stages": len(stages), "pruned": data.pruned,
           "first_feasible_s": first_s,
           "first_planned_s": plan_values(data, first)[Rules().objective] * data.tick_s,
           "runs": []}
    for limit in limits:
        ca = ca_partial_variant(sc, stages, time_limit_s=limit, seed=args.seed, workers=args.workers)
        sched = Schedule(sc.name, sc.content_hash, sc.source, stages, {"random": rnd, "ca-partial": ca})
        validate(sched, sc)
        it_rnd = simulate(sched, "random", sc).iteration_s
        it_ca = simulate(sched, "ca-partial", sc).iteration_s
        out["runs"].append({"time_limit_s": limit, "iteration_s": it_ca, "random_s": it_rnd,
                            "bound_s": ca.provenance.bound, "gap": ca.provenance.gap,
                            "wall_s": ca.provenance.wall_s, "status": ca.provenance.status})
    return out


def scale_table(rows: list[dict]) -> str:
    lines = ["| scenario | nodes | stages | pruned | first feasible s | first planned s | limit s | "
             "ca iteration s (sim) | random s (sim) | ca/random | bound s | gap | wall s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for run in r["runs"]:
            lines.append(f"| {r['scenario']} | {r['nodes']} | {r['stages']} | {r['pruned']} | "
                         f"{r['first_feasible_s']:.1f} | {r['first_planned_s']:.1f} | "
                         f"{run['time_limit_s']:g} | {run['iteration_s']:.1f} | {run['random_s']:.1f} | "
                         f"{run['iteration_s'] / run['random_s']:.3f} | {_f(run['bound_s'])} | "
                         f"{_f(run['gap'], '.1%')} | {run['wall_s']:.1f} |")
    return "\n".join(lines)


def _f(x, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--time-limit", type=float, default=DEFAULT_TIME_LIMIT_S, help="CP-SAT seconds per variant")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="CP-SAT threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scenarios", nargs="*", default=["geo-distributed", "hetero-gpus"])
    p.add_argument("--scale", action="store_true", help="also the scale-40/80/120 table")
    p.add_argument("--long", action="store_true", help=f"scaling also at {LONG_TIME_LIMIT_S:g} s")
    p.add_argument("--json", type=Path, help="also write the figures as JSON here (under runs/)")
    p.add_argument("-v", "--verbose", action="store_true", help="CP-SAT progress lines")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    print(f"planner bench: time limit {args.time_limit:g} s, {args.workers} workers, seed {args.seed}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}\n")
    results = {"quality": [], "scale": []}
    for name in args.scenarios:
        r = run_quality(name, args)
        results["quality"].append(r)
        print(quality_table(r) + "\n", flush=True)
    if args.scale:
        limits = [args.time_limit] + ([LONG_TIME_LIMIT_S] if args.long else [])
        results["scale"] = [run_scale(name, limits, args) for name in SCALE_SCENARIOS]
        print("### scaling (allocation by `allocate`)\n\n" + scale_table(results["scale"]) + "\n")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1, default=str) + "\n")
    return 0 if all(met(r) for r in results["quality"]) else 1


if __name__ == "__main__":
    sys.exit(main())
