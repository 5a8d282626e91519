"""Build a schedule for a scenario: allocations and paths for each variant, simulated."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from ..ops import LOSS_AT
from ..plan_options import OBJECTIVES, PlanOptions
from ..planner.effort import DEFAULT_EFFORT, DEFAULT_WORKERS, EFFORTS, default_cap_s
from ..planning import build_schedule
from ..scenario import load_scenario
from ..schedule_file import save_schedule
from ..schedule_summary import format_summary, summary_rows
from ..variants import VARIANTS

HELP = "plan a scenario: allocation + paths for each variant, simulated, written as JSON"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("settings", help="scenario file, e.g. settings/geo-distributed.toml")
    p.add_argument("--out", help="schedule path (default: schedules/<scenario>.json)")
    p.add_argument("--seed", type=int, default=0, help="seed for allocations, random paths, solver")
    p.add_argument(
        "--variants",
        nargs="+",
        choices=VARIANTS,
        default=list(VARIANTS),
        metavar="VARIANT",
        help=f"variants to build (default: all of {', '.join(VARIANTS)})",
    )
    p.add_argument(
        "--effort",
        choices=list(EFFORTS),
        default=DEFAULT_EFFORT,
        help="how much search, counted in deterministic work (not wall time), so the same "
        "scenario, seed and effort give the same schedule on any machine, loaded or "
        "idle (default %(default)s)",
    )
    p.add_argument(
        "--time-limit",
        type=float,
        default=None,
        help="wall-clock safety cap of the whole command in seconds; it only cuts in on a "
        "very slow machine, says so, and the schedule then depends on the machine "
        f"(default: {', '.join(f'{e} {default_cap_s(e):g}' for e in EFFORTS)})",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=DEFAULT_WORKERS,
        help="CP-SAT threads (default %(default)s); they share CP-SAT's interleaved search, "
        "so the schedule does not depend on their timing",
    )
    p.add_argument(
        "--objective",
        default="iteration",
        help=f"what the partial variants and their allocation minimise: {' or '.join(OBJECTIVES)} "
        "(iteration: the simulator's iteration time with averaging; makespan: the "
        "paper's metric; default %(default)s); the table reports both",
    )
    p.add_argument(
        "--shared-allocation",
        action="store_true",
        help="one (full-pipeline) allocation for every variant, as the paper did",
    )
    p.add_argument(
        "--family-memory",
        action="store_true",
        help="the classic families (gpipe, 1f1b, ...) under their own published memory "
        "rules instead of the scenario's memory_slots, which every variant shares "
        "by default (also: pipeline.family_memory = true)",
    )
    p.add_argument(
        "--loss-at",
        choices=LOSS_AT,
        default=None,
        help="where the full pipelines run the LM head and loss: last (their papers' "
        "placement, the default) or origin (SkipPipe's ring: the data node); the "
        "partial variants keep theirs at the origin; also: pipeline.loss_at)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines")


def run(args: argparse.Namespace) -> int:
    opts = PlanOptions(
        tuple(dict.fromkeys(args.variants)),
        args.seed,
        args.time_limit,
        args.workers,
        args.objective,
        args.shared_allocation,
        family_memory=args.family_memory,
        loss_at=args.loss_at,
        effort=args.effort,
    )
    opts.check()  # bad options: one line, exit 2, before the scenario is even read
    scenario = load_scenario(args.settings)
    if args.loss_at is None and scenario.pipeline.loss_at is not None:  # the scenario's key
        opts = dataclasses.replace(opts, loss_at=scenario.pipeline.loss_at)
    progress = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    failures: dict[str, str] = {}  # variants left out, and why (the table marks them)
    sched = build_schedule(scenario, opts, progress, failures)
    out = Path(args.out or f"schedules/{scenario.name}.json")
    save_schedule(sched, out)
    print(
        f"scenario {scenario.name} ({len(scenario.nodes)} nodes, stages "
        f"{list(scenario.pipeline.stage_sizes)}, k={scenario.pipeline.path_length}, "
        f"objective {opts.objective}, effort {opts.effort}) -> {out}"
    )
    print(format_summary(summary_rows(sched, failures)))
    return 0
