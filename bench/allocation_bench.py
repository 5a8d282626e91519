"""Allocation quality and speed: the searched allocation against random ones.

For each settings file: the score (seconds, `skippipe.planner.allocation_score`) of the
allocation `allocate` finds, against `--samples` uniformly random allocations (median, best,
and the share of them scoring at or below the found one: 0% = better than every random one),
plus the round-robin allocation and the search's wall time.

With `--plan-samples K`, also the iteration time (seconds) the greedy ca-partial planner
(`skippipe.planner.greedy`, SkipPipe's first feasible plan) achieves on the found allocation
against K random ones: whether a better score gives a faster plan.

    .venv/bin/python -m bench.allocation_bench [settings/geo-distributed.toml ...]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

from skippipe.planner import allocate, allocation_score, random_allocation, round_robin_allocation
from skippipe.planner.allocation_search import DEFAULT_TIME_BUDGET_S
from skippipe.scenario import load_scenario
from skippipe.util.tables import format_table

ROOT = Path(__file__).resolve().parent.parent

DEFAULT_SETTINGS = ["settings/geo-distributed.toml", "settings/hetero-gpus.toml"]
DEFAULT_SAMPLES = 100  # random allocations to compare with
HEADER = ("scenario", "nodes", "found_s", "rand_med", "rand_best", "pct", "rr_s", "wall_s", "moves")
FORMATS = ("", "d", ".2f", ".2f", ".2f", "", ".2f", ".2f", "d")


def bench(path: str, samples: int, seed: int, time_budget_s: float) -> dict:
    scenario = load_scenario(ROOT / path if not Path(path).is_absolute() else path)
    started = time.monotonic()
    found = allocate(scenario, seed=seed, time_budget_s=time_budget_s)
    wall = time.monotonic() - started
    rng = random.Random(seed)
    randoms = sorted(allocation_score(scenario, random_allocation(scenario, rng)) for _ in range(samples))
    at_or_below = sum(score <= found.score_s for score in randoms)
    return {
        "scenario": scenario.name,
        "nodes": len(scenario.nodes),
        "found": found.score_s,
        "breakdown": found.breakdown,
        "median": statistics.median(randoms),
        "best": randoms[0],
        "percentile": 100.0 * at_or_below / samples,
        "round_robin": allocation_score(scenario, round_robin_allocation(scenario)),
        "wall_s": wall,
        "moves": found.evaluations,
        "stages": found.stages,
    }


def planned_iteration_s(scenario, stages) -> float:
    """Iteration time (s) of the greedy ca-partial plan on this allocation."""
    from skippipe.planner.greedy import greedy_plan
    from skippipe.planner.model_data import build_data, plan_values

    data = build_data(scenario, stages)
    return plan_values(data, greedy_plan(data))["iteration"] * data.tick_s


def bench_plans(path: str, samples: int, seed: int) -> dict:
    scenario = load_scenario(ROOT / path if not Path(path).is_absolute() else path)
    found = allocate(scenario, seed=seed)
    rng = random.Random(seed)
    randoms = sorted(planned_iteration_s(scenario, random_allocation(scenario, rng)) for _ in range(samples))
    return {
        "found": planned_iteration_s(scenario, found.stages),
        "median": statistics.median(randoms),
        "best": randoms[0],
    }


def _row(r: dict) -> list:
    return [
        r["scenario"],
        r["nodes"],
        r["found"],
        r["median"],
        r["best"],
        f"{r['percentile']:.0f}%",
        r["round_robin"],
        r["wall_s"],
        r["moves"],
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("settings", nargs="*", default=DEFAULT_SETTINGS)
    parser.add_argument("--samples", type=int, default=DEFAULT_SAMPLES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-budget-s", type=float, default=DEFAULT_TIME_BUDGET_S)
    parser.add_argument(
        "--plan-samples",
        type=int,
        default=0,
        help="random allocations to plan with the greedy ca-partial planner",
    )
    args = parser.parse_args(argv)
    results = [bench(path, args.samples, args.seed, args.time_budget_s) for path in args.settings]
    print(format_table(HEADER, [_row(r) for r in results], FORMATS))
    for path, r in zip(args.settings, results):
        parts = ", ".join(f"{k} {v:.2f}" for k, v in r["breakdown"].items())
        print(f"{r['scenario']}: found {parts}; stages {[list(s) for s in r['stages']]}")
        if args.plan_samples:
            p = bench_plans(path, args.plan_samples, args.seed)
            print(
                f"  greedy ca-partial iteration_s: found {p['found']:.1f}, "
                f"{args.plan_samples} random allocations median {p['median']:.1f} "
                f"best {p['best']:.1f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
