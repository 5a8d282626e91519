"""The partial-pipeline variants: `ca-partial` (SkipPipe) and `non-ca-partial` (without TC2).

ca-partial: the greedy list scheduler gives a first feasible timed plan; CP-SAT (the full model
of cpsat.py, hinted with it and bounded by it) improves it until optimal or out of time. The
variant holds each microbatch's path and every node's op order with planned start times; its
provenance holds CP-SAT's status, objective and proven bound (seconds of the model's objective,
the simulator's iteration time). If CP-SAT finds nothing better than the greedy plan in time,
the greedy plan is returned and the status says so.

non-ca-partial: the same model without TC2 (collision-blind: memory slots and the visit share
are kept, ops on a node may overlap), returned without an order, so the simulator runs its
paths first come first served.

Every plan is checked before it is returned: `schedule.validate` on the variant, and the
independent recomputations (`schedule.planned_makespan`, `planned_iteration_s`) must agree with
the model's values within its rounding (one tick per rounded-up duration on the critical end).
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from ..costs import Costs
from ..scenario import Scenario
from ..schedule import (TIME_TOLERANCE_S, Hop, MicrobatchPath, Op, Provenance, Schedule,
                        ScheduleError, VariantSchedule, op_end_times, planned_makespan, validate)
from .allocation import check_allocation, stages_of
from .cpsat import ModelData, PathModel, Rules, SolveResult, TimedPlan, build_data, plan_values, solve
from .greedy import greedy_plan

log = logging.getLogger(__name__)

DEFAULT_TIME_LIMIT_S = 60.0  # CP-SAT budget per variant (the paper's planner took minutes)
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


def ca_partial_variant(scenario: Scenario, allocation, time_limit_s: float = DEFAULT_TIME_LIMIT_S,
                       seed: int = 0, workers: int | None = None,
                       progress: Progress | None = None) -> VariantSchedule:
    """SkipPipe's collision-aware partial pipeline: paths, per-node order and start times (s).

    `allocation`: an allocation.Allocation or stage -> node ids; `time_limit_s`: CP-SAT's wall
    budget (seconds); `workers`: CP-SAT threads (default: every CPU); `progress` gets one line
    per improving solution. Raises PlanningError for infeasible inputs."""
    return _variant("ca-partial", scenario, allocation, Rules(), time_limit_s, seed, workers, progress)


def non_ca_partial_variant(scenario: Scenario, allocation, time_limit_s: float = DEFAULT_TIME_LIMIT_S,
                           seed: int = 0, workers: int | None = None,
                           progress: Progress | None = None) -> VariantSchedule:
    """SkipPipe without TC2: paths chosen collision-blind, no per-node order (the simulator runs
    them first come first served). Arguments as for `ca_partial_variant`."""
    return _variant("non-ca-partial", scenario, allocation, Rules(tc2=False), time_limit_s, seed,
                    workers, progress)


def _variant(name: str, scenario: Scenario, allocation, rules: Rules, time_limit_s: float, seed: int,
             workers: int | None, progress: Progress | None) -> VariantSchedule:
    started = time.monotonic()
    stages = stages_of(allocation)
    check_allocation(scenario, stages)
    data = build_data(scenario, stages)
    result = plan(data, rules, started + time_limit_s, seed, workers or os.cpu_count() or 1, progress)
    wall = time.monotonic() - started
    tick = data.tick_s
    prov = Provenance("cp-sat", seed, workers or os.cpu_count() or 1, time_limit_s, result.status,
                      result.objective * tick, None if result.bound is None else result.bound * tick,
                      round(wall, 3))
    variant = to_variant(name, data, result.plan, prov, ordered=rules.tc2)
    check_plan(scenario, data, variant, result.plan)
    return variant


def plan(data: ModelData, rules: Rules, deadline: float, seed: int, workers: int,
         progress: Progress | None = None) -> PlanResult:
    """Greedy first, then CP-SAT hinted with it until `deadline` (time.monotonic() seconds);
    the better of the two (ticks)."""
    first = greedy_plan(data)
    first_value = plan_values(data, first)[rules.objective]
    if progress is not None:
        progress(f"greedy: first feasible plan, objective {first_value * data.tick_s:.2f} s")
    model = PathModel(data, rules, upper_bound=first_value)
    model.add_hint(first)
    budget = deadline - time.monotonic()
    if budget <= 0:
        return PlanResult(first, "GREEDY: no time left for CP-SAT", first_value, None)
    solved: SolveResult = solve(model, budget, seed, workers, progress)
    if solved.plan is not None and solved.objective < first_value:
        return PlanResult(solved.plan, solved.status, solved.objective, solved.bound)
    if solved.status == "OPTIMAL":
        return PlanResult(first, "OPTIMAL: the greedy plan, proven optimal by CP-SAT", first_value,
                          solved.bound)
    status = (f"GREEDY: CP-SAT ({solved.status}) found nothing better than the greedy plan "
              f"in {budget:.1f} s")
    log.info("%s", status)
    return PlanResult(first, status, first_value, solved.bound)


def to_variant(name: str, data: ModelData, plan_: TimedPlan, provenance: Provenance,
               ordered: bool) -> VariantSchedule:
    """The plan as a VariantSchedule (seconds); `ordered`: with per-node order and start times."""
    paths = tuple(MicrobatchPath(mb, origin, tuple(Hop(data.stage_of[n], n) for n in plan_.nodes[mb]))
                  for mb, origin in sorted(data.microbatches))
    values = plan_values(data, plan_)
    predicted = {"planned_makespan_s": values["makespan"] * data.tick_s,
                 "planned_iteration_s": values["iteration"] * data.tick_s}
    if not ordered:
        return VariantSchedule(name, paths, None, predicted, provenance)
    by_node: dict[int, list[tuple[int, Op]]] = {}
    for (kind, mb, hop), t in plan_.starts.items():
        node = data.op_node(plan_.nodes[mb], kind, hop)
        by_node.setdefault(node, []).append((t, Op(kind, mb, hop, t * data.tick_s)))
    order = {n: tuple(op for _, op in sorted(ops, key=lambda item: item[0]))
             for n, ops in sorted(by_node.items())}
    return VariantSchedule(name, paths, order, predicted, provenance)


def planned_iteration_s(variant: VariantSchedule, costs: Costs, stages: Sequence[Sequence[int]]) -> float:
    """Independent recomputation of the iteration time from planned start times (seconds): max
    over stages of (its last op end + its gradient averaging), as the simulator defines it."""
    ends = op_end_times(variant, costs)
    last: dict[int, float] = {}
    for _, end, node in ends.values():
        last[node] = max(last.get(node, 0.0), end)
    return max(max((last.get(n, 0.0) for n in nodes), default=0.0) + costs.averaging_s(s, nodes)
               for s, nodes in enumerate(stages))


def check_plan(scenario: Scenario, data: ModelData, variant: VariantSchedule, plan_: TimedPlan) -> None:
    """Validate the variant with the shared validator and, when it is timed, recompute its
    makespan and iteration time independently; disagreement beyond rounding is a bug."""
    sched = Schedule(scenario.name, scenario.content_hash, scenario.source, data.stages,
                     {variant.name: variant})
    validate(sched, scenario, where=f"planned {variant.name}")
    if variant.order is None:
        return
    costs, tick, values = Costs(scenario), data.tick_s, plan_values(data, plan_)
    checks = (("makespan", planned_makespan(variant, costs), MAKESPAN_TICKS_TOLERANCE),
              ("iteration", planned_iteration_s(variant, costs, data.stages), ITERATION_TICKS_TOLERANCE))
    for what, recomputed, tolerance in checks:
        model_s = values[what] * tick
        if not model_s - tolerance * tick <= recomputed <= model_s + TIME_TOLERANCE_S:
            raise ScheduleError(f"{variant.name}: recomputed {what} {recomputed:.4f} s disagrees "
                                 f"with the model's {model_s:.4f} s (tick {tick} s)")
