"""`python -m skippipe study-times`: the iteration times of the study's time to target, on the
study scenario at equal memory (skippipe/study/times.py says what each time is).

The full pipelines are planned and ranked exactly as `compare` ranks them (compare_rows); the
fastest is the comparator of the skip variants, whose trained paths are simulated on its
allocation. The result is RESULTS/times.json, which `python -m skippipe.study --report-only`
reads for its speed-up curve.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import SkipPipeError
from ..planner.effort import DEFAULT_EFFORT, DEFAULT_WORKERS, EFFORTS

HELP = "simulate the study's trained paths and the best full pipeline at equal memory: times.json"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..study.cli import PRESETS
    from ..study.inputs import INPUTS_FILE

    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="cpu",
        help="the study preset whose scenario and results folder to use (default cpu)",
    )
    p.add_argument("--settings", help="study scenario (default: the preset's)")
    p.add_argument("--results", help="folder for times.json (default results/study/PRESET)")
    p.add_argument("--inputs", default=str(INPUTS_FILE), help="the study's trained paths JSON")
    p.add_argument(
        "--effort",
        choices=EFFORTS,
        default=DEFAULT_EFFORT,
        help="planning effort of the full pipelines (default %(default)s)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="planning seed and LayerDrop's draws (default %(default)s)"
    )
    p.add_argument("--quiet", action="store_true", help="no planning progress lines")


def full_pipelines(scenario, effort: str, seed: int, progress):
    """The full-pipeline variants planned at the scenario's slots and compare's rows of them."""
    from ..plan_options import PlanOptions
    from ..planning import build_schedule
    from ..variants import REGISTRY
    from .compare import compare_rows

    full = tuple(n for n, v in REGISTRY.items() if v.full_pipeline)
    opts = PlanOptions(variants=full, seed=seed, workers=DEFAULT_WORKERS, effort=effort)
    sched = build_schedule(scenario, opts, progress)
    if "baseline" not in sched.variants:
        raise SkipPipeError(f"{scenario.name}: the baseline full pipeline could not be planned")
    return sched, compare_rows(sched, scenario, [n for n in full if n in sched.variants])


def compute_times(settings: str, paths: dict, effort: str, seed: int, progress=None) -> dict:
    """The times file's content for the study scenario `settings` and the trained `paths`."""
    from ..scenario import load_scenario
    from ..study.times import fingerprint, skip_times, split_s

    scenario = load_scenario(settings)
    sched, rows = full_pipelines(scenario, effort, seed, progress)
    best = next(r for r in rows if r["variant"] == r["best_full"])
    skip, how, split = skip_times(sched, scenario, paths, seed)
    # the same split for the full pipelines: the best of compare's and the baseline's, split
    base = sched.variants["baseline"]
    full_split = min(best["iteration_s"], split_s(sched, scenario, base.paths, base.loss_at))
    return {
        "fingerprint": fingerprint(settings, paths, effort, seed),
        "scenario": scenario.name,
        "comparator": best["variant"],
        "memory_slots": sorted({n.memory_slots for n in scenario.nodes}),
        "iteration_s": {"baseline": best["iteration_s"], **skip},
        "full_pipelines": {r["variant"]: r["iteration_s"] for r in rows},
        "how": {"baseline": f"{best['variant']}, the best full pipeline at equal memory", **how},
        "split_backward_s": {"baseline": full_split, **split},
    }


def run(args: argparse.Namespace) -> int:
    from ..study.cli import PRESETS, REPO_ROOT
    from ..study.inputs import load_inputs
    from ..study.times import comparator_label, write_times
    from ..util.rundir import can_create

    settings = str(args.settings or PRESETS[args.preset].settings)
    results = Path(args.results or REPO_ROOT / "results" / "study" / args.preset)
    paths = load_inputs(Path(args.inputs)).paths
    can_create(results, f"--results {results}")  # before the planning, not after
    progress = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    content = compute_times(settings, paths, args.effort, args.seed, progress)
    for variant, how in content["how"].items():
        print(f"{variant:>11}: {content['iteration_s'][variant]:.4g} s per iteration ({how})")
    split = content["split_backward_s"]
    print(
        "with the backward split on both sides (a sensitivity, not the curve): "
        + ", ".join(f"{v} {t:.4g} s" for v, t in split.items())
    )
    print(f"speed-ups are {comparator_label(content)}")
    print(f"wrote {write_times(results, content)}")
    return 0
