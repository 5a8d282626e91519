"""Simulating a run of several iterations under changing conditions: a straggler, a crash and a
rejoin, and the online variants' adaptive rebalancing in between.

What happens to the nodes is a `Condition` (failures.py: the failure plan by whole iterations).
Each iteration is simulated on its own (simulate.py; sim/online.py for routed variants) with:
- the nodes down in it left out: a routed variant routes around them; a planned one runs its
  paths repaired around them first come first served (recovery.py, as the nodes do once a
  death is known); microbatches whose origin is down are lost;
- the stragglers' operation times multiplied by their factors;
- the allocation the rebalancer has reached by then (rebalance.py), for variants that
  rebalance. After each iteration every node's measured forward time (its router's moving
  average) goes to the rebalancer, as the nodes' Load reports do in a run.
A session stops, as a run does, before an iteration in which its nodes break the quorum rule
(recovery.quorum_verdict: a stage without a live node, or no majority of all nodes up); its
`stopped` says when and why. The routers live through the whole session, so their measurements carry over iterations as in
the node processes. Simplifications, against a run: a crash takes its node out from the start
of its iteration (the run loses the work in flight and restarts it), and a moved node's weight
transfer is not timed (the run sends it while the other nodes finish their iteration).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..events import Rerouted
from ..failures import Condition
from ..rebalance import Move, Rebalancer
from ..recovery import live_variant, quorum_verdict
from ..routing import routers as make_routers
from ..scenario import Scenario
from ..schedule import Schedule
from .online import _Online
from .result import SimResult
from .simulate import _Simulation


@dataclass
class Session:
    """A simulated run: per iteration its time (seconds), and what happened on the way."""

    iteration_s: list[float] = field(default_factory=list)
    rerouted: int = 0  # microbatches a repair rule routed around a planned hop
    lost: int = 0  # microbatches whose origin was down
    moves: list[Move] = field(default_factory=list)
    results: list[SimResult] = field(default_factory=list)
    stopped: str | None = None  # "iteration I: why" when the quorum rule stopped the session


def simulate_session(
    schedule: Schedule,
    variant: str,
    scenario: Scenario,
    iterations: int,
    condition: Condition = Condition(),
    seed: int | None = None,
) -> Session:
    """`iterations` iterations of `variant` under `condition`; `seed`: the routers' (default
    the variant's)."""
    v = schedule.variant(variant)
    routing = v.routing
    rebalancer = Rebalancer(schedule.allocation_of(variant), routing.rebalance if routing else 0.0)
    routers = (
        None
        if routing is None
        else make_routers(routing if seed is None else dataclasses.replace(routing, seed=seed), scenario)
    )
    out = Session()
    for it in range(iterations):
        down = condition.down(it)
        alloc = rebalancer.allocation_at(it)
        why = quorum_verdict(len(scenario.nodes), set(down), alloc)
        if why is not None:  # the nodes stop here too (runtime/node/quorum.py)
            out.stopped = f"iteration {it}: {why}"
            break
        live = tuple(tuple(n for n in nodes if n not in down) for nodes in alloc)
        sched = _on(schedule, variant, live)
        out.lost += sum(1 for p in v.paths if p.origin in down)
        result = _iteration(sched, variant, scenario, it, down, condition.factors(it), routers, alloc, seed)
        out.results.append(result)
        out.iteration_s.append(result.iteration_s)
        out.rerouted += sum(1 for e in result.events if e.get("event") == Rerouted.name)
        if routers is not None:
            move = rebalancer.after_iteration(it, {n: r.own_forward_s for n, r in routers.items()}, down)
            if move is not None:
                out.moves.append(move)
    return out


def _on(schedule: Schedule, variant: str, allocation) -> Schedule:
    """The schedule with `variant` alone, on `allocation`."""
    v = dataclasses.replace(schedule.variant(variant), allocation=allocation)
    return dataclasses.replace(schedule, allocation=allocation, variants={variant: v})


def _iteration(
    sched: Schedule,
    variant: str,
    scenario: Scenario,
    it: int,
    down: frozenset[int],
    slow: dict[int, float],
    routers,
    full_allocation,
    seed,
) -> SimResult:
    v = sched.variant(variant)
    if v.routing is not None and v.routing.online:  # routed around down nodes as it runs
        v = dataclasses.replace(v, paths=tuple(p for p in v.paths if p.origin not in down))
    else:  # a plan (ca-repair's too): repaired around down nodes first, as the nodes do
        v = live_variant(v, set(down), full_allocation)
    if routers is None:
        sim = _Simulation(sched.for_variant(variant), v, scenario, True, it, frozenset())
        sim.slow = slow
        return sim.run()
    for r in routers.values():
        r.begin_iteration()
    return _Online(
        dataclasses.replace(sched, variants={variant: v}), variant, scenario, seed, slow, it, routers
    ).run()
