"""The routing step: what a node does with a microbatch's forward it has just run, under an online
rule (routing.py), and what its data messages carry for the receivers' routers. The simulator
(sim/online.py) and the nodes (runtime/node/routes.py) both call these functions and nothing else
that decides a hop, so the simulator predicts the nodes' decisions by construction.

- `route_forward`: the forward ended; the node's router takes its duration into its moving
  average, a swarm-skip origin chooses the microbatch's stage set at hop 0 (spending its TC1
  budget, `Spending`), and the router chooses the next hop: online, it appends it to the path so
  far; under repair it keeps the planned next hop or splices a replacement in. The result is the
  path the forward's output travels on, the planned hop routed around (if any) and the events.
- `restarted`: the path a microbatch's origin restarts it on after it may have crossed a dead
  node: online, its origin only (routed afresh); under repair, the plan's with the dead hops
  replaced by a router draw; without routing, recovery's repair.
- `carried` / `received`: the routing part of a data message: the sender's report (its forward
  average and queue) and the microbatch's stage set, which thus travels with the microbatch.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from .events import Event, Rerouted, StageSetChosen
from .recovery import repair_path
from .routing import Live, Report, Router, onward_of, stage_budgets
from .schedule import Hop, MicrobatchPath


@dataclass
class Spending:
    """A swarm-skip origin's TC1 budget in one iteration: stage -> forward visits it still has
    to give, and how many of its microbatches have no stage set yet."""

    budget: Counter[int]
    left: int


def spendings(paths: Sequence[MicrobatchPath], n_stages: int, k: int) -> dict[int, Spending]:
    """origin -> its Spending at the start of an iteration of `paths`."""
    origins = Counter(p.origin for p in paths)
    budgets = stage_budgets(sorted(origins.items()), n_stages, k)
    return {o: Spending(budgets[o], count) for o, count in origins.items()}


@dataclass(frozen=True)
class Step:
    """A routing step's outcome."""

    hops: tuple[Hop, ...]  # the path the forward's output travels on
    avoided: Hop | None = None  # the planned hop a repair routed around
    events: tuple[Event, ...] = ()


def route_forward(
    router: Router,
    microbatch: int,
    hop: int,
    hops: Sequence[Hop],
    live: Live,
    forward_s: float,
    spending: Spending | None,
    iteration: int,
) -> Step:
    """The forward of `microbatch` at `hop` of `hops` (the path as known here) ran `forward_s`
    scenario seconds on the router's node; `live`: the live nodes of every stage, now;
    `spending`: the node's own, if it is an origin."""
    router.ran_forward(forward_s)
    done = tuple(hops[: hop + 1])
    if router.params.online:
        events = _stage_set(router, microbatch, hop, live, spending, iteration)
        nxt = router.next_hop(microbatch, done, live)
        return Step(done if nxt is None else done + (nxt,), None, events)
    if hop + 1 >= len(hops):
        return Step(tuple(hops))
    planned = hops[hop + 1]
    nxt = router.next_hop(microbatch, done, live, planned, onward_of(hops, hop))
    if nxt is None or nxt == planned:
        return Step(tuple(hops))
    event = Rerouted(iteration, microbatch, hop + 1, planned.node, nxt.node)
    return Step(done + (nxt,) + tuple(hops[hop + 2 :]), planned, (event,))


def _stage_set(
    router: Router, microbatch: int, hop: int, live: Live, spending: Spending | None, iteration: int
) -> tuple[Event, ...]:
    """swarm-skip, at the origin's first forward of a microbatch: its stage set (a restarted
    attempt keeps the one it has)."""
    if router.params.rule != "swarm-skip" or hop != 0 or microbatch in router.stage_sets:
        return ()
    stages = router.choose_stage_set(microbatch, spending.budget, spending.left, live)
    spending.left -= 1
    return (StageSetChosen(iteration, microbatch, tuple(sorted(stages))),)


def carried(router: Router, microbatch: int, queue: int) -> tuple[Report, frozenset[int]]:
    """What a data message of `microbatch` from the router's node carries for routing: the
    node's report (`queue` operations waiting there) and the microbatch's stage set (empty when
    it has none)."""
    return router.report(queue), router.stage_sets.get(microbatch, frozenset())


def received(router: Router, sender: int, microbatch: int, report: Report, stages: frozenset[int]) -> None:
    """A data message from `sender` arrived with what `carried` gave it."""
    if stages:
        router.stage_sets[microbatch] = frozenset(stages)
    router.observe(sender, report)


def restarted(
    router: Router | None, path: MicrobatchPath, dead: set[int], allocation: Sequence[Sequence[int]]
) -> MicrobatchPath | None:
    """A restarted attempt's path (module docstring); `router`: None without routing. None when
    no live node can replace a dead hop."""
    if router is not None and router.params.online:
        return dataclasses.replace(path, hops=path.hops[:1])
    return repair_path(path, dead, allocation, None if router is None else router.choose_node)
