"""Build a whole schedule for a scenario: allocations, every requested variant, validation, and
the simulator's predicted iteration time and makespan for each (the simulator judges them all).

Allocations: the baseline and random (DT-FM with random skipping, network-blind) run on the
full-pipeline allocation (`planner.allocation.allocate`, DT-FM's objective); the partial variants
on one searched for their own objective (`planner.skip_allocation`), unless
`shared_allocation` keeps the full-pipeline one for all, as the paper did; dualpipev on the
full-pipeline one folded into a V (placement.fold: each node holds a stage and its mirror);
ca-partial-zb on ca-partial's paths and allocation (planner/zb_fill.py).

Budget: `effort` gives the whole build's work seconds (planner/effort.py: deterministic work,
scaled to the problem's size), split into fixed shares (the skip-aware allocation search,
non-ca-partial, ca-partial), so a scenario, seed and effort give the same schedule on any
machine, loaded or idle, whatever the worker count. `time_limit_s` is only a wall-clock safety
cap: when it cuts in, the build says so in one line and the status of every variant planned
from then on records it.

ca-partial is never worse than non-ca-partial on the same allocation: non-ca-partial's paths in
the order the simulator ran them are a candidate plan of ca-partial's search, and if the
simulator still prefers non-ca-partial, ca-partial becomes that replay (same paths, that order).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from typing import Callable, Iterator

from .errors import SkipPipeError
from .memory import FAMILIES, fullest
from .planner.effort import (DEFAULT_EFFORT, DEFAULT_WORKERS, EFFORTS, WallCap, default_cap_s,
                             problem_size, work_seconds)
from .scenario import Scenario
from .rules import validate
from .schedule import Schedule, VariantSchedule
from .ops import LOSS_AT
from .variants import FULL_PIPELINE, ONLINE, V_PLACED, VARIANTS, ZERO_BUBBLE_OF, default_loss_at

log = logging.getLogger(__name__)

DEFAULT_TIME_LIMIT_S = default_cap_s(DEFAULT_EFFORT)  # wall-clock safety cap at the default effort
OBJECTIVES = ("iteration", "makespan")  # simulator's iteration time (with averaging) / makespan
FULL_ALLOCATION_RESTARTS, FULL_ALLOCATION_RESTARTS_FROM_S = 3, 30.0  # its annealing restarts
# (geo-distributed: ~0.4 s each); one below this many work seconds
SEARCH_SHARE = 0.25  # of the work seconds for the skip-aware allocation search
NON_CA_SHARE = 0.15  # for non-ca-partial
CA_SHARE = 0.45  # for ca-partial (the rest: allocation, simulation, validation)
MAX_LINE, MAX_STAGES_SHOWN = 300, 6  # progress lines stay short on huge scenarios
PARTIAL = ("non-ca-partial", "ca-partial")  # the variants planned on the skip-aware allocation
SKIP_ALLOCATION = (*PARTIAL, "swarm-skip", "ca-repair")  # the variants that run on it

Progress = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class PlanOptions:
    variants: tuple[str, ...] = VARIANTS
    seed: int = 0
    time_limit_s: float | None = None  # wall-clock safety cap of the whole build (None: the effort's)
    workers: int = DEFAULT_WORKERS  # CP-SAT threads: the schedule does not depend on them
    objective: str = "iteration"  # what the partial variants and their allocation minimise
    shared_allocation: bool = False  # one (full-pipeline) allocation for every variant
    family_memory: bool = False  # the classic families under their own memory rules, not the slots
    loss_at: str | None = None  # the full pipelines' loss placement (ops.LOSS_AT); None: each one's default
    effort: str = DEFAULT_EFFORT  # planner/effort.py: quick, default or thorough

    def check(self) -> None:
        from .planner.paths import PlanningError
        if self.objective not in OBJECTIVES:
            raise PlanningError(f"objective {self.objective!r} is not one of {', '.join(OBJECTIVES)}")
        if self.effort not in EFFORTS:
            raise PlanningError(f"effort {self.effort!r} is not one of {', '.join(EFFORTS)}")
        if self.time_limit_s is not None and not 0 < self.time_limit_s < float("inf"):
            raise PlanningError(f"time limit {self.time_limit_s} s must be positive and finite")
        if self.workers < 1:
            raise PlanningError(f"workers {self.workers} must be at least 1")
        if self.loss_at not in (None, *LOSS_AT):
            raise PlanningError(f"loss placement {self.loss_at!r} is not one of {', '.join(LOSS_AT)}")
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown:
            raise PlanningError(f"unknown variant {unknown[0]!r} (known: {', '.join(VARIANTS)})")
        for name, source in ZERO_BUBBLE_OF.items():
            if name in self.variants and source not in self.variants:
                raise PlanningError(f"{name} is {source} with the backward split: plan {source} too")

    @property
    def cap_s(self) -> float:
        return default_cap_s(self.effort) if self.time_limit_s is None else self.time_limit_s

    def loss_at_of(self, variant: str) -> str:
        """Where `variant`'s loss runs: the chosen placement for a full pipeline, else its default
        (a partial path may skip the last stage: its loss stays at the origin)."""
        return self.loss_at if self.loss_at and variant in FULL_PIPELINE else default_loss_at(variant)


def build_schedule(scenario: Scenario, opts: PlanOptions = PlanOptions(),
                   progress: Progress | None = None, failures: dict[str, str] | None = None) -> Schedule:
    """Plan every variant in `opts.variants` and attach the simulator's prediction to each. A
    variant that fails to plan or to validate is left out with one progress line, and named in
    `failures` (variant -> why); the build fails only when no variant is left."""
    from .planner import baselines, families, partial
    from .planner.zb_fill import zero_bubble_fill
    from .placement import fold
    from .planner.allocation import allocate
    from .planner.paths import PlanningError
    from .sim.simulate import simulate

    opts.check()
    started = time.monotonic()
    say = progress or log.info

    def line(text: str) -> None:
        say(f"[{time.monotonic() - started:6.1f} s] {text}")

    cap = WallCap(opts.cap_s, line)
    work = work_seconds(opts.effort, problem_size(scenario))
    line(f"effort {opts.effort}: {work:.1f} work seconds, wall-clock cap {cap.limit_s:g} s")
    line("full-pipeline allocation (DT-FM's objective) ...")
    full = allocate(scenario, seed=opts.seed, time_budget_s=cap.left(),
                    restarts=FULL_ALLOCATION_RESTARTS if work >= FULL_ALLOCATION_RESTARTS_FROM_S else 1)
    line(f"full-pipeline allocation (score {full.score_s:.1f} s): " + _fmt_stages(full.stages))
    skip_stages = full.stages
    wanted = [v for v in VARIANTS if v in opts.variants]
    if cap.spent("the full-pipeline allocation") and not opts.shared_allocation:
        line("skip-aware allocation search skipped (past the wall-clock cap): the full-pipeline one")
    elif not opts.shared_allocation and any(v in SKIP_ALLOCATION for v in wanted):
        from .planner.skip_allocation import skip_aware_allocation
        line(f"skip-aware allocation search for the {opts.objective} "
             f"({SEARCH_SHARE * work:.1f} work s) ...")
        found = skip_aware_allocation(scenario, full.stages, opts.objective, SEARCH_SHARE * work,
                                      opts.seed, line, cap)
        skip_stages = found.stages
        if found.evaluations:
            line(f"skip-aware allocation (greedy {opts.objective} {found.score_s:.2f} s, full-pipeline "
                 f"one {found.start_score_s:.2f} s, {found.evaluations} evaluated): "
                 + _fmt_stages(skip_stages))
    variants: dict[str, VariantSchedule] = {}
    sims, skipped = {}, []
    failed = {} if failures is None else failures

    def plan(name: str) -> None:  # one variant into `variants` and `sims`
        alloc = skip_stages if name in SKIP_ALLOCATION else full.stages
        if name in V_PLACED:  # each node holds a stage and its mirror
            try:
                alloc = fold(full.stages)
            except ValueError as e:  # e.g. an odd number of stages: the other variants go on
                skipped.append(f"{name}: {e}")
                line(f"{name} skipped: {e}")
                return
        t0 = time.monotonic()
        if name in ONLINE:  # swarm, swarm-skip: the simulator's prediction; ca-repair: ca-partial's plan
            from .planner.online import online_variant
            v = online_variant(name, scenario, alloc, opts.seed, variants.get("ca-partial"),
                               opts.loss_at_of(name))
        elif name in FAMILIES:  # naive, gpipe, 1f1b, zb-h1, dualpipev: planned action lists
            own = opts.family_memory or scenario.pipeline.family_memory
            try:
                v = families.family_variant(name, scenario, alloc, family_memory=own,
                                             loss_at=opts.loss_at_of(name))
            except PlanningError as e:  # no capped form fits the slots: the others go on
                skipped.append(str(e))
                line(f"{name} skipped: {e}")
                return
        elif name in ZERO_BUBBLE_OF:  # on its source's paths and allocation
            source = variants[ZERO_BUBBLE_OF[name]]
            alloc = source.allocation
            v = zero_bubble_fill(name, source, scenario, alloc)
        elif name == "baseline":
            v = baselines.baseline_variant(scenario, alloc)
            v = dataclasses.replace(v, loss_at=opts.loss_at_of(name))
        elif name == "random":
            v = baselines.random_variant(scenario, alloc, seed=opts.seed)
        else:
            budget = (NON_CA_SHARE if name == "non-ca-partial" else CA_SHARE) * work
            line(f"planning {name} ({opts.objective}, {budget:.1f} work s) ...")
            maker = partial.non_ca_partial_variant if name == "non-ca-partial" else partial.ca_partial_variant
            extra = {}
            if name == "ca-partial" and "non-ca-partial" in sims:
                extra["candidates"] = [(variants["non-ca-partial"].paths, sims["non-ca-partial"].order)]
            v = maker(scenario, alloc, work_s=budget, seed=opts.seed, workers=opts.workers,
                      progress=line, objective=opts.objective, cap=cap, **extra)
        v = dataclasses.replace(v, allocation=tuple(alloc), provenance=_capped(dataclasses.replace(
            v.provenance, wall_s=round(time.monotonic() - t0, 3)), cap))
        variants[name] = v
        sims[name] = simulate(_one(scenario, full.stages, v), name, scenario)
        if name == "ca-partial" and "non-ca-partial" in sims:
            variants[name], sims[name] = _not_worse(scenario, full.stages, variants, sims, opts, line)

    for name in wanted:
        with _dropped_on_failure(name, failed, line):
            if ZERO_BUBBLE_OF.get(name) in failed:
                raise SkipPipeError(f"it is {ZERO_BUBBLE_OF[name]} with the backward split, which failed")
            plan(name)
        if name in failed:  # failed after it was stored (e.g. in the comparison with non-ca-partial)
            variants.pop(name, None)
    if not variants:
        raise PlanningError("; ".join(skipped + [f"{n}: {why}" for n, why in failed.items()])
                            or "no variant to plan")
    line("simulating and validating ...")
    for name, v in list(variants.items()):
        sim = sims[name]
        if v.order is None:  # every variant as per-node action lists: what its rule (fcfs) ran
            v = dataclasses.replace(v, order=sim.order, dispatch="fcfs")
        predicted = {**v.predicted, "makespan_s": round(sim.makespan_s, 4), "iteration_s": round(sim.iteration_s, 4),
                     "bubble_share": round(sim.bubble_share, 4),
                     "peak_activations": max(s.peak_activations for s in sim.per_node)}
        peaks = {s.node: s.peak_activations for s in sim.per_node}
        slots = {n.id: n.memory_slots for n in scenario.nodes}
        predicted["fullest_peak"], predicted["fullest_slots"] = fullest(peaks, slots)
        if v.routing is not None and v.routing.online:  # the mean over the router's seeds
            predicted["iteration_s"] = v.predicted["iteration_s"]
        variants[name] = dataclasses.replace(v, predicted=predicted)
        with _dropped_on_failure(name, failed, line):
            validate(_one(scenario, full.stages, variants[name]), scenario)
        if name in failed:
            del variants[name]
    if not variants:
        raise PlanningError("; ".join(f"{n}: {why}" for n, why in failed.items()))
    sched = Schedule(scenario.name, scenario.content_hash, scenario.source, full.stages, variants,
                     dict(scenario.overrides))
    line("done")
    return sched


@contextlib.contextmanager
def _dropped_on_failure(name: str, failed: dict[str, str], line: Progress) -> Iterator[None]:
    """Run one variant's planning or check; a planning error drops that variant only."""
    try:
        yield
    except (SkipPipeError, ValueError) as e:
        failed[name] = str(e)
        line(f"{name} failed, left out: {e}")


def _capped(prov, cap: WallCap):
    """`prov` with the wall-clock cap's cut recorded in its status, when it has cut in."""
    if cap.cut is None:
        return prov
    return dataclasses.replace(prov, status=f"{prov.status} [wall-clock cap cut in during {cap.cut}]")


def _one(scenario: Scenario, allocation, v: VariantSchedule) -> Schedule:
    return Schedule(scenario.name, scenario.content_hash, scenario.source, allocation, {v.name: v})


def _objective(sim, objective: str) -> float:
    return sim.iteration_s if objective == "iteration" else sim.makespan_s


def _not_worse(scenario: Scenario, full_stages, variants: dict, sims: dict, opts: PlanOptions,
               line: Progress):
    """ca-partial, or non-ca-partial's replay when the simulator prefers non-ca-partial."""
    from .planner.partial import replay_variant
    from .sim.simulate import simulate
    ca, non_ca = variants["ca-partial"], variants["non-ca-partial"]
    if _objective(sims["ca-partial"], opts.objective) <= _objective(sims["non-ca-partial"], opts.objective):
        return ca, sims["ca-partial"]
    line(f"ca-partial simulates worse than non-ca-partial ({opts.objective}): it takes non-ca-partial's "
         f"paths in simulator order")
    replay = replay_variant("ca-partial", non_ca, sims["non-ca-partial"].order, ca.provenance,
                            opts.objective, _objective(sims["non-ca-partial"], opts.objective))
    replay = dataclasses.replace(replay, allocation=non_ca.allocation)
    return replay, simulate(_one(scenario, full_stages, replay), "ca-partial", scenario)


def _fmt_stages(stages) -> str:
    """Stage -> nodes for a progress line, kept under MAX_LINE characters: past that each stage
    shows its size and first nodes, and only the first stages are listed."""
    full = " | ".join(f"stage {s}: {list(nodes)}" for s, nodes in enumerate(stages))
    if len(full) <= MAX_LINE:
        return full
    parts = [f"stage {s}: {len(ns)} nodes [{', '.join(map(str, ns[:3]))}, ...]" if len(ns) > 3
             else f"stage {s}: {list(ns)}" for s, ns in enumerate(stages[:MAX_STAGES_SHOWN])]
    more = f" | {len(stages) - MAX_STAGES_SHOWN} more stages" if len(stages) > MAX_STAGES_SHOWN else ""
    return " | ".join(parts) + more


def summary_rows(sched: Schedule, failures: dict[str, str] | None = None) -> list[dict]:
    """One row per variant: predicted iteration time and makespan, ratios to the baseline,
    solver bound (of the variant's objective), gap and time; a row marked FAILED for each of
    `failures` (variant -> why)."""
    base = sched.variants.get("baseline")
    rows = []
    for name, v in sched.variants.items():
        it, mk = v.predicted.get("iteration_s"), v.predicted.get("makespan_s")
        p = v.provenance
        rows.append({
            "variant": name, "iteration_s": it, "makespan_s": mk,
            "vs_baseline": it / base.predicted["iteration_s"] if base and it else None,
            "makespan_vs_baseline": mk / base.predicted["makespan_s"] if base and mk else None,
            "bound_s": p.bound, "gap": p.gap, "solve_s": p.wall_s, "limit_s": p.time_limit_s,
            "bubble": v.predicted.get("bubble_share"), "peak": v.predicted.get("peak_activations"),
            "peak_slots": _peak_slots(v), "memory": v.memory,
            "status": p.status,
        })
    return rows + [{"variant": name, "status": f"FAILED: {why}"} for name, why in (failures or {}).items()]


def _peak_slots(v: VariantSchedule) -> str:
    """"peak/slots" at the variant's fullest node ("-" for a schedule planned before it was kept)."""
    p = v.predicted
    if "fullest_peak" not in p:
        return "-"
    return f"{p['fullest_peak']:.0f}/{p['fullest_slots']:.0f}"


def format_table(rows: list[dict]) -> str:
    def f(x, spec):
        return format(x, spec) if x is not None else format("-", f">{spec.split('.')[0]}")
    blank = {**dict.fromkeys(("iteration_s", "makespan_s", "vs_baseline", "makespan_vs_baseline",
                              "bound_s", "gap", "solve_s", "limit_s", "bubble", "peak")),
             "peak_slots": "-", "memory": "-"}  # a failed variant's row has only its status
    rows = [{**blank, **r} for r in rows]
    lines = [f"{'variant':<15} {'iteration s':>11} {'makespan s':>10} {'it/base':>8} {'mk/base':>8} "
             f"{'bound s':>8} {'gap':>6} {'solve s':>8} {'limit s':>8} {'bubble':>6} {'peak act':>8} "
             f"{'peak/slots':>10} {'memory':>6}  status"]
    for r in rows:
        lines.append(f"{r['variant']:<15} {f(r['iteration_s'], '11.2f')} {f(r['makespan_s'], '10.2f')} "
                     f"{f(r['vs_baseline'], '8.3f')} {f(r['makespan_vs_baseline'], '8.3f')} "
                     f"{f(r['bound_s'], '8.2f')} {f(r['gap'], '6.1%')} {f(r['solve_s'], '8.1f')} "
                     f"{f(r['limit_s'], '8.1f')} {f(r['bubble'], '6.1%')} {f(r['peak'], '8.0f')} "
                     f"{r['peak_slots']:>10} {r['memory']:>6}  {r['status']}")
    return "\n".join(lines)
