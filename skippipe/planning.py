"""Build a whole schedule for a scenario: allocations, every requested variant, validation, and
the simulator's predicted iteration time and makespan for each (the simulator judges them all).

Allocations (the registry's `Variant.allocation`): the baseline and random (DT-FM with random
skipping, network-blind) run on the full-pipeline allocation (`planner.allocation_search.allocate`,
DT-FM's objective); the partial variants on one searched for their own objective
(`planner.skip_allocation`), unless `shared_allocation` keeps the full-pipeline one for all, as
the paper did; dualpipev on the full-pipeline one folded into a V (placement.fold: each node
holds a stage and its mirror); ca-partial-zb on ca-partial's paths and allocation
(planner/zb_fill.py). Each variant's planner: PLANNERS, keyed by `Variant.planner`. The build's
options: plan_options.PlanOptions; the table printed after it: schedule_summary.py.

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
from collections.abc import Callable, Iterator

from .errors import SkipPipeError
from .memory import fullest
from .plan_options import PlanOptions
from .planner.effort import WallCap, problem_size, work_seconds
from .rules import validate
from .scenario import Scenario
from .schedule import Schedule, VariantSchedule
from .variants import REGISTRY, VARIANTS, Variant

log = logging.getLogger(__name__)

FULL_ALLOCATION_RESTARTS, FULL_ALLOCATION_RESTARTS_FROM_S = 3, 30.0  # its annealing restarts
# (geo-distributed: ~0.4 s each); one below this many work seconds
SEARCH_SHARE = 0.25  # of the work seconds for the skip-aware allocation search
NON_CA_SHARE = 0.15  # for non-ca-partial
CA_SHARE = 0.45  # for ca-partial (the rest: allocation, simulation, validation)
MAX_LINE, MAX_STAGES_SHOWN = 300, 6  # progress lines stay short on huge scenarios

Progress = Callable[[str], None]


@dataclasses.dataclass
class _Build:
    """What planning one variant may use: the scenario, the options, the work seconds and the
    wall-clock cap, and the variants planned (and simulated) before it."""

    scenario: Scenario
    opts: PlanOptions
    work: float
    cap: WallCap
    line: Progress
    variants: dict[str, VariantSchedule] = dataclasses.field(default_factory=dict)
    sims: dict = dataclasses.field(default_factory=dict)
    skipped: list[str] = dataclasses.field(default_factory=list)  # why, for each variant skipped

    def skip(self, name: str, why: str, said: str | None = None) -> None:
        """Leave `name` out without failing it (it cannot be made for this scenario): `why` for
        the error when nothing is left, `said` (default: `why`) on its progress line."""
        self.skipped.append(why)
        self.line(f"{name} skipped: {said or why}")


def build_schedule(
    scenario: Scenario,
    opts: PlanOptions = PlanOptions(),
    progress: Progress | None = None,
    failures: dict[str, str] | None = None,
) -> Schedule:
    """Plan every variant in `opts.variants` and attach the simulator's prediction to each. A
    variant that fails to plan or to validate is left out with one progress line, and named in
    `failures` (variant -> why); the build fails only when no variant is left."""
    from .planner.allocation_search import allocate
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
    full = allocate(
        scenario,
        seed=opts.seed,
        time_budget_s=cap.left(),
        restarts=FULL_ALLOCATION_RESTARTS if work >= FULL_ALLOCATION_RESTARTS_FROM_S else 1,
    )
    line(f"full-pipeline allocation (score {full.score_s:.1f} s): " + _fmt_stages(full.stages))
    skip_stages = full.stages
    wanted = [v for v in VARIANTS if v in opts.variants]
    if cap.spent("the full-pipeline allocation") and not opts.shared_allocation:
        line("skip-aware allocation search skipped (past the wall-clock cap): the full-pipeline one")
    elif not opts.shared_allocation and any(REGISTRY[v].allocation == "skip" for v in wanted):
        from .planner.skip_allocation import skip_aware_allocation

        line(f"skip-aware allocation search for the {opts.objective} ({SEARCH_SHARE * work:.1f} work s) ...")
        found = skip_aware_allocation(
            scenario, full.stages, opts.objective, SEARCH_SHARE * work, opts.seed, line, cap
        )
        skip_stages = found.stages
        if found.evaluations:
            line(
                f"skip-aware allocation (greedy {opts.objective} {found.score_s:.2f} s, full-pipeline "
                f"one {found.start_score_s:.2f} s, {found.evaluations} evaluated): "
                + _fmt_stages(skip_stages)
            )
    build = _Build(scenario, opts, work, cap, line)
    variants, sims = build.variants, build.sims
    failed = {} if failures is None else failures

    def plan(spec: Variant) -> None:  # one variant into `variants` and `sims`
        alloc = _allocation(spec, full.stages, skip_stages, build)
        if alloc is None:
            return
        t0 = time.monotonic()
        v = PLANNERS[spec.planner](spec, alloc, build)
        if v is None:
            return
        name = spec.name
        v = dataclasses.replace(
            v,
            allocation=tuple(alloc),
            provenance=_capped(
                dataclasses.replace(v.provenance, wall_s=round(time.monotonic() - t0, 3)), cap
            ),
        )
        variants[name] = v
        sims[name] = simulate(_one(scenario, full.stages, v), name, scenario)
        if spec.rival in sims:
            variants[name], sims[name] = _not_worse(name, spec.rival, full.stages, build)

    for name in wanted:
        spec = REGISTRY[name]
        with _dropped_on_failure(name, failed, line):
            if spec.planner == "backward-split" and spec.built_on in failed:
                raise SkipPipeError(f"it is {spec.built_on} with the backward split, which failed")
            plan(spec)
        if name in failed:  # failed after it was stored (e.g. in the comparison with its rival)
            variants.pop(name, None)
    if not variants:
        raise PlanningError(
            "; ".join(build.skipped + [f"{n}: {why}" for n, why in failed.items()]) or "no variant to plan"
        )
    line("simulating and validating ...")
    for name, v in list(variants.items()):
        sim = sims[name]
        if v.order is None:  # every variant as per-node action lists: what its rule (fcfs) ran
            v = dataclasses.replace(v, order=sim.order, dispatch="fcfs")
        predicted = {
            **v.predicted,
            "makespan_s": round(sim.makespan_s, 4),
            "iteration_s": round(sim.iteration_s, 4),
            "bubble_share": round(sim.bubble_share, 4),
            "peak_activations": max(s.peak_activations for s in sim.per_node),
        }
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
    sched = Schedule(
        scenario.name, scenario.content_hash, scenario.source, full.stages, variants, dict(scenario.overrides)
    )
    line("done")
    return sched


def _allocation(spec: Variant, full, skip, build: _Build):
    """The stages `spec` is planned on (None: skipped, it cannot be placed)."""
    if spec.allocation == "skip":
        return skip
    if spec.allocation == "built_on":
        return build.variants[spec.built_on].allocation
    if spec.allocation == "v":  # each node holds a stage and its mirror
        from .placement import fold

        try:
            return fold(full)
        except ValueError as e:  # e.g. an odd number of stages: the other variants go on
            build.skip(spec.name, f"{spec.name}: {e}", str(e))
            return None
    return full


def _full_pipelines(spec: Variant, alloc, build: _Build) -> VariantSchedule:
    from .planner.baselines import baseline_variant

    v = baseline_variant(build.scenario, alloc)
    return dataclasses.replace(v, loss_at=build.opts.loss_at_of(spec.name))


def _random_skips(spec: Variant, alloc, build: _Build) -> VariantSchedule:
    from .planner.baselines import random_variant

    return random_variant(build.scenario, alloc, seed=build.opts.seed)


def _cp_sat(spec: Variant, alloc, build: _Build) -> VariantSchedule:
    """The partial planner (planner/partial.py); with a rival, its plan is a candidate too."""
    from .planner import partial

    opts = build.opts
    budget = (CA_SHARE if spec.collision_aware else NON_CA_SHARE) * build.work
    build.line(f"planning {spec.name} ({opts.objective}, {budget:.1f} work s) ...")
    maker = partial.ca_partial_variant if spec.collision_aware else partial.non_ca_partial_variant
    extra = {}
    if spec.rival in build.sims:
        extra["candidates"] = [(build.variants[spec.rival].paths, build.sims[spec.rival].order)]
    return maker(
        build.scenario,
        alloc,
        work_s=budget,
        seed=opts.seed,
        workers=opts.workers,
        progress=build.line,
        objective=opts.objective,
        cap=build.cap,
        **extra,
    )


def _backward_split(spec: Variant, alloc, build: _Build) -> VariantSchedule:
    """On the paths and allocation of the variant it is built on (planner/zb_fill.py)."""
    from .planner.zb_fill import zero_bubble_fill

    return zero_bubble_fill(spec.name, build.variants[spec.built_on], build.scenario, alloc)


def _family(spec: Variant, alloc, build: _Build) -> VariantSchedule | None:
    """Planned action lists (planner/families.py); skipped when no capped form fits the slots."""
    from .planner import families
    from .planner.paths import PlanningError

    own = build.opts.family_memory or build.scenario.pipeline.family_memory
    try:
        return families.family_variant(
            spec.name, build.scenario, alloc, family_memory=own, loss_at=build.opts.loss_at_of(spec.name)
        )
    except PlanningError as e:  # the others go on
        build.skip(spec.name, str(e))
        return None


def _online(spec: Variant, alloc, build: _Build) -> VariantSchedule:
    """The simulator's prediction of the routing rule; on the plan of the variant it is built on."""
    from .planner.online import online_variant

    return online_variant(
        spec.name,
        build.scenario,
        alloc,
        build.opts.seed,
        build.variants.get(spec.built_on),
        build.opts.loss_at_of(spec.name),
    )


# how each variant is planned: Variant.planner -> its planner
PLANNERS: dict[str, Callable[[Variant, object, _Build], VariantSchedule | None]] = {
    "full-pipelines": _full_pipelines,
    "random-skips": _random_skips,
    "cp-sat": _cp_sat,
    "backward-split": _backward_split,
    "family": _family,
    "online": _online,
}
assert {v.planner for v in REGISTRY.values()} <= set(PLANNERS)


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


def _not_worse(name: str, rival: str, full_stages, build: _Build):
    """Variant `name` as planned, or its `rival`'s replay when the simulator prefers the rival."""
    from .planner.partial import replay_variant
    from .sim.simulate import simulate

    variants, sims, objective = build.variants, build.sims, build.opts.objective
    mine, theirs = variants[name], variants[rival]
    if _objective(sims[name], objective) <= _objective(sims[rival], objective):
        return mine, sims[name]
    build.line(
        f"{name} simulates worse than {rival} ({objective}): it takes {rival}'s paths in simulator order"
    )
    replay = replay_variant(
        name, theirs, sims[rival].order, mine.provenance, objective, _objective(sims[rival], objective)
    )
    replay = dataclasses.replace(replay, allocation=theirs.allocation)
    return replay, simulate(_one(build.scenario, full_stages, replay), name, build.scenario)


def _fmt_stages(stages) -> str:
    """Stage -> nodes for a progress line, kept under MAX_LINE characters: past that each stage
    shows its size and first nodes, and only the first stages are listed."""
    full = " | ".join(f"stage {s}: {list(nodes)}" for s, nodes in enumerate(stages))
    if len(full) <= MAX_LINE:
        return full
    parts = [
        f"stage {s}: {len(ns)} nodes [{', '.join(map(str, ns[:3]))}, ...]"
        if len(ns) > 3
        else f"stage {s}: {list(ns)}"
        for s, ns in enumerate(stages[:MAX_STAGES_SHOWN])
    ]
    more = f" | {len(stages) - MAX_STAGES_SHOWN} more stages" if len(stages) > MAX_STAGES_SHOWN else ""
    return " | ".join(parts) + more
