"""ca-partial-zb: ca-partial with the backward split, its W ops placed into the nodes' idle gaps.

ca-partial's planned order fixes every node's F, L and B; splitting the backward makes each B
the input gradient only (sent on at once, so the microbatch's next backward starts earlier) and
adds its W (the weight gradient) on the same node, which nothing but the end of the iteration
waits for. Placement of the W ops (a local search judged by the simulator):

1. Start with each W right after its B: the fused backward's timing and memory, except that
   B's gradient now leaves before W runs.
2. Simulate. A W that delayed the op after it on its node (that op's input was there before W
   ended) moves to the first later idle gap of its node's simulated timeline that holds it
   whole (or to the end of the list), unless the slot it keeps longer breaks the node's memory
   limit (TC1: W frees the activation).
3. Keep the moves if the simulated iteration time is no worse and no F, L or B starts later
   (`no_later`: two W moved into one gap may not fit); repeat until nothing moves, or
   MAX_ROUNDS.

So every F, L and B keeps the start it had with W right after B, or starts earlier.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

from ..costs import Costs
from ..memory import peak_along
from ..ops import Op, OpKind, W
from ..scenario import Scenario
from ..schedule import Provenance, Schedule, VariantSchedule
from .paths import PlanningError

MAX_ROUNDS = 20  # simulations at most; each moves every W that delayed an op
GAP_SLACK_S = 1e-9  # float noise when asking whether a W fits a gap


def zero_bubble_fill(
    name: str, source: VariantSchedule, scenario: Scenario, allocation: Sequence[Sequence[int]]
) -> VariantSchedule:
    """`source` (a planned variant with a fused backward) with the backward split and its W ops
    placed into idle gaps (module docstring); the order as the simulator ran it."""
    from ..sim.simulate import simulate

    if source.order is None:
        raise PlanningError(f"{name}: {source.name} has no planned order to split")
    started = time.monotonic()
    stages = tuple(tuple(nodes) for nodes in allocation)
    order = {n: _split(ops) for n, ops in source.order.items()}
    costs = Costs(scenario)

    def run(candidate):
        v = dataclasses.replace(
            source, name=name, order=candidate, split_backward=True, dispatch="planned", predicted={}
        )  # the source's planned times are not this variant's
        return v, simulate(
            Schedule(scenario.name, scenario.content_hash, scenario.source, stages, {name: v}), name, scenario
        )

    best_v, best = run(order)
    for _ in range(MAX_ROUNDS):
        moved = {n: _moved(best.order[n], best_v, costs, scenario, n) for n in best.order}
        if all(new is None for new in moved.values()):
            break
        candidate = {n: tuple(_plain(new if new is not None else best.order[n])) for n, new in moved.items()}
        v, sim = run(candidate)
        if sim.iteration_s > best.iteration_s or not no_later(sim.order, best.order):
            break
        best_v, best = v, sim
    provenance = Provenance(
        name,
        status=f"W placed into idle gaps of {source.name}'s order",
        objective=round(best.iteration_s, 6),
        wall_s=time.monotonic() - started,
    )
    return dataclasses.replace(best_v, order=best.order, provenance=provenance)


def no_later(order: dict[int, Sequence[Op]], than: dict[int, Sequence[Op]]) -> bool:
    """Does every F, L and B of `order` start no later than in `than` (both simulated)?"""
    before = {o: o.start_s for ops in than.values() for o in ops}
    return all(
        o.start_s <= before[o] + GAP_SLACK_S
        for ops in order.values()
        for o in ops
        if o.kind is not OpKind.W and o in before
    )


def _plain(ops: Sequence[Op]) -> list[Op]:
    return [Op(o.kind, o.microbatch, o.hop) for o in ops]


def _split(ops: Sequence[Op]) -> tuple[Op, ...]:
    """The action list with each B followed by its W."""
    out = []
    for o in _plain(ops):
        out.append(o)
        if o.kind is OpKind.B:
            out.append(W(o.microbatch, o.hop))
    return tuple(out)


def _moved(timed: Sequence[Op], v: VariantSchedule, costs: Costs, sc: Scenario, node: int) -> list[Op] | None:
    """The node's order with each W that delayed the op after it moved before the first later
    op that had idle time enough for it in front (the end when none had); None when no W
    moves. Gaps come from this simulated timeline and shrink as W ops fill them."""

    def dur(o: Op) -> float:
        return costs.op_s(o.kind, node, True)

    room = {o: o.start_s - (p.start_s + dur(p)) for p, o in zip(timed, timed[1:])}  # idle before o
    delayed = [
        i
        for i, (w, nxt) in enumerate(zip(timed, timed[1:]))
        if w.kind is OpKind.W and nxt.start_s <= w.start_s + dur(w) + GAP_SLACK_S
    ]
    ops, limit, changed = list(timed), v.memory_slots(node, sc), False
    for i in delayed:
        w = timed[i]
        target = next((o for o in timed[i + 2 :] if room[o] >= dur(w) - GAP_SLACK_S), None)
        trial = [o for o in ops if o != w]
        trial.insert(len(trial) if target is None else trial.index(target), w)
        if limit is None or peak_along(trial, True) <= limit:
            ops, changed = trial, True
            if target is not None:
                room[target] -= dur(w)
    return ops if changed else None
