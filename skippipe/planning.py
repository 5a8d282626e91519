"""Build a whole schedule for a scenario: allocation, every requested variant, validation, and
the simulator's predicted iteration time for each (the simulator is the judge of all variants)."""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Callable

from .memory import FAMILIES
from .scenario import Scenario
from .schedule import VARIANTS, Schedule, VariantSchedule, validate

log = logging.getLogger(__name__)

DEFAULT_TIME_LIMIT_S = 60.0  # CP-SAT budget for ca-partial (the paper's planner took ~17 min)


@dataclasses.dataclass(frozen=True)
class PlanOptions:
    variants: tuple[str, ...] = VARIANTS
    seed: int = 0
    time_limit_s: float = DEFAULT_TIME_LIMIT_S
    workers: int = max(1, os.cpu_count() or 1)


def _make_variant(name: str, scenario: Scenario, allocation, opts: PlanOptions,
                  progress: Callable[[str], None] | None) -> VariantSchedule:
    from .planner import baselines, families, partial
    if name in FAMILIES:  # naive, gpipe, 1f1b, zb-h1 (issue 14)
        return families.family_variant(name, scenario, allocation)
    if name == "baseline":
        return baselines.baseline_variant(scenario, allocation)
    if name == "random":
        return baselines.random_variant(scenario, allocation, seed=opts.seed)
    if name == "non-ca-partial":
        return partial.non_ca_partial_variant(scenario, allocation, seed=opts.seed)
    return partial.ca_partial_variant(scenario, allocation, time_limit_s=opts.time_limit_s,
                                      seed=opts.seed, workers=opts.workers, progress=progress)


def build_schedule(scenario: Scenario, opts: PlanOptions = PlanOptions(),
                   progress: Callable[[str], None] | None = None) -> Schedule:
    """Plan every variant in `opts.variants` and attach the simulator's prediction to each."""
    from .planner.allocation import allocate
    from .sim.simulate import simulate

    say = progress or log.info
    alloc = allocate(scenario, seed=opts.seed)
    say(f"allocation (score {alloc.score_s:.1f} s): "
        + " | ".join(f"stage {s}: {list(nodes)}" for s, nodes in enumerate(alloc.stages)))
    variants = {}
    for name in opts.variants:
        t0 = time.perf_counter()
        say(f"planning {name} ...")
        v = _make_variant(name, scenario, alloc.stages, opts, progress)
        variants[name] = dataclasses.replace(
            v, provenance=dataclasses.replace(v.provenance, wall_s=round(time.perf_counter() - t0, 3)))
    sched = Schedule(scenario.name, scenario.content_hash, scenario.source, alloc.stages, variants,
                     dict(scenario.overrides))
    validate(sched, scenario)
    for name, v in sched.variants.items():
        sim = simulate(sched, name, scenario)
        variants[name] = dataclasses.replace(
            v, predicted={**v.predicted, "makespan_s": round(sim.makespan_s, 4),
                          "iteration_s": round(sim.iteration_s, 4),
                          "bubble_share": round(sim.bubble_share, 4),
                          "peak_activations": max(s.peak_activations for s in sim.per_node)})
    return dataclasses.replace(sched, variants=variants)


def summary_rows(sched: Schedule) -> list[dict]:
    """One row per variant: predicted times, ratio to baseline, solver bound, gap and time."""
    base = sched.variants.get("baseline")
    rows = []
    for name, v in sched.variants.items():
        it = v.predicted.get("iteration_s")
        p = v.provenance
        rows.append({
            "variant": name, "iteration_s": it, "makespan_s": v.predicted.get("makespan_s"),
            "vs_baseline": it / base.predicted["iteration_s"] if base and it else None,
            "bound_s": p.bound, "gap": p.gap, "solve_s": p.wall_s, "status": p.status,
            "bubble": v.predicted.get("bubble_share"), "peak": v.predicted.get("peak_activations"),
        })
    return rows


def format_table(rows: list[dict]) -> str:
    def f(x, spec):
        return format(x, spec) if x is not None else format("-", f">{spec.split('.')[0]}")
    lines = [f"{'variant':<15} {'iteration s':>11} {'makespan s':>10} {'vs baseline':>11} "
             f"{'bound s':>8} {'gap':>6} {'solve s':>8} {'bubble':>6} {'peak act':>8}  status"]
    for r in rows:
        lines.append(f"{r['variant']:<15} {f(r['iteration_s'], '11.2f')} {f(r['makespan_s'], '10.2f')} "
                     f"{f(r['vs_baseline'], '11.3f')} {f(r['bound_s'], '8.2f')} "
                     f"{f(r['gap'], '6.1%')} {f(r['solve_s'], '8.1f')} {f(r['bubble'], '6.1%')} "
                     f"{f(r['peak'], '8.0f')}  {r['status']}")
    return "\n".join(lines)
