"""Build a schedule for a scenario: allocation and paths for every variant, simulated."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..planning import DEFAULT_TIME_LIMIT_S, PlanOptions, build_schedule, format_table, summary_rows
from ..scenario import load_scenario
from ..schedule import VARIANTS, save_schedule

HELP = "plan a scenario: allocation + paths for each variant, simulated, written as JSON"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("settings", help="scenario file, e.g. settings/geo-distributed.toml")
    p.add_argument("--out", help="schedule path (default: schedules/<scenario>.json)")
    p.add_argument("--seed", type=int, default=0, help="seed for allocation, random paths, solver")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS),
                   metavar="VARIANT", help=f"variants to build (default: all of {', '.join(VARIANTS)})")
    p.add_argument("--time-limit", type=float, default=DEFAULT_TIME_LIMIT_S,
                   help="CP-SAT time limit for ca-partial, seconds (default %(default)s)")
    p.add_argument("--workers", type=int, default=None, help="CP-SAT workers (default: all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")


def run(args: argparse.Namespace) -> int:
    scenario = load_scenario(args.settings)
    opts = PlanOptions(tuple(dict.fromkeys(args.variants)), args.seed, args.time_limit,
                       args.workers or PlanOptions().workers)
    progress = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    sched = build_schedule(scenario, opts, progress)
    out = Path(args.out or f"schedules/{scenario.name}.json")
    save_schedule(sched, out)
    print(f"scenario {scenario.name} ({len(scenario.nodes)} nodes, stages "
          f"{list(scenario.pipeline.stage_sizes)}, k={scenario.pipeline.path_length}) -> {out}")
    print(format_table(summary_rows(sched)))
    return 0
