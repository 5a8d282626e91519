"""The partial-pipeline variants: `ca-partial` (SkipPipe) and `non-ca-partial` (without TC2).

ca-partial: the greedy list scheduler gives a first feasible timed plan; the data-node
relaxation (bounds.py) proves a lower bound and guides a second greedy plan; a large
neighbourhood search over paths (lns.py: CP-SAT on sub-models where most microbatches keep their
paths) improves the better one; then the full model, hinted with the best plan and bounded by
it, spends the rest of the work to improve it further. A plan that meets the proven bound is
optimal and returned at once. The work is counted in work seconds (effort.py), so the same
inputs give the same plan on any machine, loaded or idle. The variant
holds each microbatch's path and every node's op order with planned start times; its provenance
holds the status, the objective and the proven bound (seconds of the model's objective: the
simulator's iteration time). If nothing better than the greedy plan is found, the
greedy plan is returned and the status says so.

non-ca-partial: the same model without TC2 (collision-blind: memory slots and the visit share
are kept, ops on a node may overlap), returned without an order, so the simulator runs its
paths first come first served.

Every plan is checked before it is returned: `rules.validate` on the variant, and the
independent recomputations (`rules.planned_makespan`, `planned_iteration_s`) must agree with
the model's values within its rounding (one tick per rounded-up duration on the critical end).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..costs import Costs
from ..ops import chain
from ..rules import TIME_TOLERANCE_S, op_end_times, planned_makespan, validate
from ..scenario import Scenario
from ..schedule import Hop, MicrobatchPath, Op, Provenance, Schedule, ScheduleError, VariantSchedule
from ..sim.simulate import simulate
from .allocation import as_stages, check_allocation
from .bounds import PathBounds
from .cpsat import PathModel, SolveResult, solve
from .effort import DEFAULT_WORKERS, WallCap, unlimited
from .greedy import GREEDY_VARIANTS, greedy_plan, greedy_seconds, relabel_by_start
from .lns import improve_paths
from .model_data import ModelData, Rules, TimedPlan, all_sequences, build_data, plan_values

log = logging.getLogger(__name__)

DEFAULT_WORK_S = 20.0  # work seconds per variant (effort.py) when called on its own
GREEDY_SHARE = 0.3  # of the work at most for the first greedy plans (each setting one run)
RELAX_SHARE = 0.2  # of the work for the data-node relaxation (bound, greedy guide)
LNS_SHARE = 0.4  # of the solving work for path LNS; the rest for the full model, which kept
# improving to the end of its 20% (geo-distributed, default effort, iteration, seeds 0, 1, 2:
# 84.34 / 87.09 / 82.63 s with 0.4 against 85.68 / 88.55 / 85.04 s with 0.8)
FULL_MODEL_LNS_ONLY = True  # with several workers the full model only improves the plan (CP-SAT's
# LNS on every worker): on geo-distributed median of 3 seeds 78.2 s against 79.3 s with its
# default portfolio, whose search never raised the bound above the relaxation's
FCFS_REPLAY = True  # keep the better of the plan and its paths' FCFS replay (better_of_fcfs)
MAKESPAN_TICKS_TOLERANCE = 1  # the last B's duration is rounded up by less than one tick
ITERATION_TICKS_TOLERANCE = 2  # ... plus the stage's averaging time, rounded up as well

Progress = Callable[[str], None]


@dataclass(frozen=True)
class PlanResult:
    """A timed plan with the numbers its provenance reports (ticks of the model's objective)."""

    plan: TimedPlan
    status: str
    objective: int
    bound: int | None


def ca_partial_variant(
    scenario: Scenario,
    allocation,
    work_s: float = DEFAULT_WORK_S,
    seed: int = 0,
    workers: int = DEFAULT_WORKERS,
    progress: Progress | None = None,
    objective: str = "iteration",
    candidates: Sequence[tuple[Sequence[MicrobatchPath], dict]] = (),
    cap: WallCap | None = None,
) -> VariantSchedule:
    """SkipPipe's collision-aware partial pipeline: paths, per-node order and start times (s).

    `allocation`: an allocation.Allocation or stage -> node ids; `work_s`: the work seconds of
    the whole call (effort.py: the same inputs give the same plan on any machine); `workers`:
    CP-SAT threads (the plan does not depend on them); `progress` gets one line per improving
    solution; `objective`: 'iteration' or 'makespan'; `candidates`: (paths, node -> ops in run
    order) plans to start from, e.g. non-ca-partial's paths in the order the simulator ran them;
    `cap`: the build's wall-clock safety cap. Raises PlanningError for infeasible inputs."""
    return _variant(
        "ca-partial",
        scenario,
        allocation,
        Rules(objective=objective),
        work_s,
        seed,
        workers,
        progress,
        candidates,
        cap,
    )


def non_ca_partial_variant(
    scenario: Scenario,
    allocation,
    work_s: float = DEFAULT_WORK_S,
    seed: int = 0,
    workers: int = DEFAULT_WORKERS,
    progress: Progress | None = None,
    objective: str = "iteration",
    cap: WallCap | None = None,
) -> VariantSchedule:
    """SkipPipe without TC2: paths chosen collision-blind, no per-node order (the simulator runs
    them first come first served). Arguments as for `ca_partial_variant`."""
    return _variant(
        "non-ca-partial",
        scenario,
        allocation,
        Rules(tc2=False, objective=objective),
        work_s,
        seed,
        workers,
        progress,
        (),
        cap,
    )


def _variant(
    name: str,
    scenario: Scenario,
    allocation,
    rules: Rules,
    work_s: float,
    seed: int,
    workers: int,
    progress: Progress | None,
    candidates,
    cap: WallCap | None,
) -> VariantSchedule:
    started = time.monotonic()
    stages = as_stages(allocation)
    check_allocation(scenario, stages)
    data = build_data(scenario, stages)
    starts = [timed_from_order(data, paths, order) for paths, order in candidates]
    result = plan(data, rules, work_s, seed, workers, progress, cap, starts)
    if rules.tc2 and FCFS_REPLAY:
        result = better_of_fcfs(scenario, data, result, rules, progress)
    tick = data.tick_s
    prov = Provenance(
        "cp-sat",
        seed,
        workers,
        work_s,
        result.status,
        result.objective * tick,
        None if result.bound is None else result.bound * tick,
        round(time.monotonic() - started, 3),
    )
    variant = to_variant(name, data, result.plan, prov, ordered=rules.tc2)
    check_plan(scenario, data, variant, result.plan)
    return variant


def plan(
    data: ModelData,
    rules: Rules,
    work_s: float,
    seed: int,
    workers: int,
    progress: Progress | None = None,
    cap: WallCap | None = None,
    candidates: Sequence[TimedPlan] = (),
) -> PlanResult:
    """Greedy first; the data-node relaxation (bounds.Relaxation: a proven bound, and a guide
    for a second greedy plan) for RELAX_SHARE of `work_s`; then path LNS (CP-SAT on sub-models)
    for LNS_SHARE of the rest; then the full model, hinted with the best plan, for what is left.
    `work_s` is work seconds (effort.py): every budget follows from it and from the problem's
    size, never from the clock, so a seed reproduces; `cap` (the build's wall-clock safety cap)
    only cuts phases short. `candidates`: further feasible plans; the search starts from the
    best plan of all. Returns the best plan, the status and the proven bound (ticks)."""
    cap = cap or unlimited()
    greedy_s = greedy_seconds(data)
    runs = max(1, min(len(GREEDY_VARIANTS), int(GREEDY_SHARE * work_s / greedy_s)))
    first = greedy_plan(data, rules.objective, runs=runs, cap=cap)
    say = progress or (lambda line: None)
    say(f"greedy: first feasible plan, objective {_seconds(data, first, rules)}")
    for given in candidates:
        say(f"candidate plan (given): objective {_seconds(data, given, rules)}")
        if plan_values(data, given)[rules.objective] < plan_values(data, first)[rules.objective]:
            first = given
    lower = PathBounds(data, data.sequences if rules.cc3 else all_sequences(data))
    relaxed = None if cap.spent("the relaxation") else lower.relax(rules, RELAX_SHARE * work_s, workers, cap)
    if relaxed is not None:
        say(f"relaxation: bound {relaxed.bound * data.tick_s:.2f} s ({relaxed.status})")
        if relaxed.stage_set and not cap.spent("the guided greedy plan"):
            guided = greedy_plan(data, rules.objective, guide=relaxed, cap=cap)
            say(f"greedy guided by the relaxation: objective {_seconds(data, guided, rules)}")
            if plan_values(data, guided)[rules.objective] < plan_values(data, first)[rules.objective]:
                first = guided
    if cap.spent("path LNS"):  # its bounds alone take minutes at thousands of nodes
        value = plan_values(data, first)[rules.objective]
        return PlanResult(first, "FEASIBLE: the greedy plan, past the wall-clock cap", value, None)
    # the greedy's estimated (not measured) time, so the LNS steps and CP-SAT's work reproduce
    total = max(0.0, (1 - RELAX_SHARE) * work_s - (runs + 1) * greedy_s)
    lns_s, full_s = LNS_SHARE * total, (1 - LNS_SHARE) * total
    best = improve_paths(data, rules, first, lns_s, seed, workers, lower, progress, cap)
    best_value = plan_values(data, best)[rules.objective]
    floor = lower.objective_floor(rules)
    if best_value <= floor:
        return PlanResult(best, "OPTIMAL", best_value, floor)  # the plan meets the proven bound
    if full_s <= 0 or cap.spent("the full model"):
        return PlanResult(best, "FEASIBLE: no work left for the full model", best_value, floor)
    model = PathModel(data, rules, upper_bound=best_value, lower=lower)
    model.add_hint(relabel_by_start(data, best))
    solved: SolveResult = solve(
        model, full_s, seed, workers, progress, cap, lns_only=workers > 1 and FULL_MODEL_LNS_ONLY
    )
    cap.spent("the full model")
    bound = max(floor, solved.bound)
    if solved.plan is not None and solved.objective < best_value:
        return PlanResult(solved.plan, solved.status, solved.objective, bound)
    if solved.status == "OPTIMAL":
        return PlanResult(best, "OPTIMAL", best_value, bound)
    status = (
        "GREEDY: CP-SAT found nothing better than the greedy plan"
        if best is first
        else f"FEASIBLE: the path-LNS plan, the full model ({solved.status}) found nothing better"
    )
    log.info("%s", status)
    return PlanResult(best, status, best_value, bound)


def better_of_fcfs(
    scenario: Scenario, data: ModelData, result: PlanResult, rules: Rules, progress: Progress | None = None
) -> PlanResult:
    """`result`, or its paths run first come first served (the simulator's order, timed as
    planned) when that is better in the objective: the order the solver chose is not always
    the best one for its paths, and a plan that is its own FCFS run loses nothing when a
    message is late (one simulation, deterministic)."""
    variant = to_variant("ca-partial", data, result.plan, Provenance("cp-sat", 0, 1, 0.0, ""), True)
    sched = Schedule(
        scenario.name, scenario.content_hash, scenario.source, data.stages, {variant.name: variant}
    )
    order = simulate(sched, variant.name, scenario, use_order=False).order
    replay = timed_from_order(data, variant.paths, order)
    value = plan_values(data, replay)[rules.objective]
    (progress or (lambda line: None))(
        f"first-come-first-served replay of the plan's paths: objective {value * data.tick_s:.2f} s"
    )
    if value >= result.objective:
        return result
    return PlanResult(
        replay,
        f"FCFS: the plan's paths first come first served, "
        f"{value * data.tick_s:.2f} s against {result.objective * data.tick_s:.2f} s "
        f"in the planned order ({result.status})",
        value,
        result.bound,
    )


def timed_from_order(
    data: ModelData, paths: Sequence[MicrobatchPath], order: dict[int, Sequence[Op]]
) -> TimedPlan:
    """The plan that runs `paths` with every node's ops in `order` (e.g. the order the simulator
    ran a collision-blind variant in), each op as early as its node and its input allow over
    idle links (ticks). It keeps TC2 (one op at a time), TC1 memory (a node's holds open and
    close in the same sequence as in `order`, which respected them) and the paths' own rules."""
    nodes = {p.microbatch: p.nodes for p in paths}
    ops = chain(data.k)
    queue = {n: [(op.kind, op.microbatch, op.hop) for op in seq] for n, seq in order.items()}
    at = {n: 0 for n in queue}
    free = {n: 0 for n in queue}
    step = {mb: 0 for mb in nodes}  # next op of each microbatch (index in chain)
    ready = {mb: 0 for mb in nodes}  # when that op's input is there
    last = {mb: None for mb in nodes}  # node of its previous op
    starts: dict[tuple[str, int, int], int] = {}
    moved = True
    while moved:
        moved = False
        for n, seq in queue.items():
            while at[n] < len(seq):
                kind, mb, hop = seq[at[n]]
                if step[mb] >= len(ops) or ops[step[mb]] != (kind, hop):
                    break  # its input comes from an op not yet placed
                prev = last[mb]
                t = max(free[n], ready[mb] + (0 if prev is None else data.link[prev][n]))
                starts[kind, mb, hop] = t
                free[n] = ready[mb] = t + data.dur[kind][n]
                last[mb], step[mb], at[n], moved = n, step[mb] + 1, at[n] + 1, True
    if len(starts) != len(nodes) * len(ops):
        raise ScheduleError("candidate order is inconsistent with its paths (it cannot run)")
    return relabel_by_start(data, TimedPlan(nodes, starts))


def replay_variant(
    name: str,
    source: VariantSchedule,
    order: dict[int, Sequence[Op]],
    provenance: Provenance,
    objective: str,
    value_s: float,
) -> VariantSchedule:
    """`source`'s paths with `order` (the simulator's run of them, start times set) as a timed
    variant, which the simulator replays exactly; `value_s`: its simulated `objective`."""
    status = (
        f"NON-CA ORDER: non-ca-partial's paths in simulator order (the solver's plan "
        f"simulated worse in {objective})"
    )
    prov = dataclasses.replace(provenance, status=status, objective=value_s)
    return VariantSchedule(name, source.paths, {n: tuple(ops) for n, ops in sorted(order.items())}, {}, prov)


def _seconds(data: ModelData, plan_: TimedPlan, rules: Rules) -> str:
    return f"{plan_values(data, plan_)[rules.objective] * data.tick_s:.2f} s"


def to_variant(
    name: str, data: ModelData, plan_: TimedPlan, provenance: Provenance, ordered: bool
) -> VariantSchedule:
    """The plan as a VariantSchedule (seconds); `ordered`: with per-node order and start times."""
    paths = tuple(
        MicrobatchPath(mb, origin, tuple(Hop(data.stage_of[n], n) for n in plan_.nodes[mb]))
        for mb, origin in sorted(data.microbatches)
    )
    if not ordered:  # collision-blind times mean nothing: the simulator predicts this variant
        return VariantSchedule(name, paths, None, {}, provenance)
    values = plan_values(data, plan_)
    predicted = {
        "planned_makespan_s": values["makespan"] * data.tick_s,
        "planned_iteration_s": values["iteration"] * data.tick_s,
    }
    by_node: dict[int, list[tuple[int, Op]]] = {}
    for (kind, mb, hop), t in plan_.starts.items():
        node = data.op_node(plan_.nodes[mb], kind, hop)
        by_node.setdefault(node, []).append((t, Op(kind, mb, hop, t * data.tick_s)))
    order = {
        n: tuple(op for _, op in sorted(ops, key=lambda item: item[0])) for n, ops in sorted(by_node.items())
    }
    return VariantSchedule(name, paths, order, predicted, provenance)


def planned_iteration_s(variant: VariantSchedule, costs: Costs, stages: Sequence[Sequence[int]]) -> float:
    """Independent recomputation of the iteration time from planned start times (seconds): max
    over stages of (its last op end + its gradient averaging), as the simulator defines it."""
    ends = op_end_times(variant, costs)
    last: dict[int, float] = {}
    for _, end, node in ends.values():
        last[node] = max(last.get(node, 0.0), end)
    return max(
        max((last.get(n, 0.0) for n in nodes), default=0.0) + costs.averaging_s(s, nodes)
        for s, nodes in enumerate(stages)
    )


def check_plan(scenario: Scenario, data: ModelData, variant: VariantSchedule, plan_: TimedPlan) -> None:
    """Validate the variant with the shared validator and, when it is timed, recompute its
    makespan and iteration time independently; disagreement beyond rounding is a bug."""
    sched = Schedule(
        scenario.name, scenario.content_hash, scenario.source, data.stages, {variant.name: variant}
    )
    validate(sched, scenario, where=f"planned {variant.name}")
    if variant.order is None:
        return
    costs, tick, values = Costs(scenario), data.tick_s, plan_values(data, plan_)
    checks = (
        ("makespan", planned_makespan(variant, costs), MAKESPAN_TICKS_TOLERANCE),
        ("iteration", planned_iteration_s(variant, costs, data.stages), ITERATION_TICKS_TOLERANCE),
    )
    for what, recomputed, tolerance in checks:
        model_s = values[what] * tick
        if not model_s - tolerance * tick <= recomputed <= model_s + TIME_TOLERANCE_S:
            raise ScheduleError(
                f"{variant.name}: recomputed {what} {recomputed:.4f} s disagrees "
                f"with the model's {model_s:.4f} s (tick {tick} s)"
            )
