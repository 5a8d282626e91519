"""Online routing: SWARM's stochastic wiring (Ryabinin et al., ICML 2023), the one rule the
simulator and the node processes both use to choose a microbatch's next hop at run time.

A node that has run a forward chooses the next node there and then, from what it has measured:
- *expected wait* of a peer j seen from node i: link_s(i, j) + (1 + load_j) x service_j, where
  service_j is the exponential moving average (weight `Routing.ema` for a new value) of j's
  forward durations, as j keeps it and reports it in its data messages (before i has a report
  from j: the scenario's cost model), and load_j the queue j reported with it plus the forwards
  i has sent j since;
- the next node is, among the live, not blacklisted candidates (`Routing.choice`):
  - least-time (SWARM's rule, the default): the one with the least accumulated expected time,
    a min-heap of expected completion as SWARM's trainers keep it per stage: each peer's key
    is the expected time of the work this node has sent it so far plus one more task there
    (link_s(i, j) + service_j); the chosen peer's key becomes that. A peer first seen joins at
    the least key of the others. Randomness only breaks ties;
  - weighted: a draw with probability proportional to 1 / expected wait;
  both from the node's own seeded RNG (`Routing.seed` and the node id): the same seed and the
  same measurements give the same choices. Stages (and swarm-skip's stage sets) are chosen by
  the same rule from the best node of each stage.
The rules (`Routing.rule`):
- swarm: stages 0, 1, ..., S-1 in order; only the node is chosen.
- swarm-skip: the origin chooses, when it starts a microbatch, which k-1 stages it will visit:
  it must spend its TC1 budget exactly (`stage_budgets`: its even share of every stage's
  forward visits), and among the sets that allow a CC3-valid order it chooses by the sum of
  the stages' best times, choosing again when a set would leave its later microbatches unable
  to spend the rest (CC3's forward jump limit leaves some sets unorderable). Each hop then
  chooses the next stage among those left whose choice keeps CC3 satisfiable (by its best
  time), then the node. CC1 and CC2 hold by construction (stage 0 only first, each stage
  once, k stages).
- repair (ca-repair): the planned next node, unless it is dead, blacklisted or its measured
  forward takes `slow_factor` times its planned time; then a swarm draw among the stage's other
  live nodes that are not slow themselves, for that microbatch only (when every node there is
  slow, say a loaded host, the plan stands). Around a slow (not dead) node only nodes expected
  to deliver sooner are drawn: expected wait plus the link on to the plan's next node.
The router takes the live nodes of every stage with each call, so the set of nodes serving a
stage may change between calls (failures, rejoins, rebalancing).
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from .costs import Costs
from .rules import cc3_problem
from .scenario import Scenario
from .schedule import Hop, Routing, VariantSchedule

SEED_STRIDE = 1_000_003  # node routers of one seed draw from disjoint RNG streams
TIE_S = 1e-9  # least-time: keys this close are a tie, broken at random
Live = Sequence[Sequence[int]]  # stage -> its live nodes, now


def origins_only(variant: VariantSchedule) -> VariantSchedule:
    """An unplanned online variant as an iteration starts it: each path its origin only, run
    first come first served."""
    return dataclasses.replace(
        variant,
        order=None,
        dispatch="fcfs",
        paths=tuple(dataclasses.replace(p, hops=p.hops[:1]) for p in variant.paths),
    )


@dataclass(frozen=True)
class Report:
    """What a node tells the receivers of its data messages about itself."""

    forward_s: float  # EMA of its own forward durations, scenario seconds
    queue: int  # operations waiting to run at it when it sent


class Router:
    """One node's routing state: its peers' measurements, its blacklist, its RNG. It lives as
    long as the node (measurements carry over iterations); `begin_iteration` resets the
    per-iteration stage sets."""

    def __init__(self, node: int, params: Routing, scenario: Scenario, k: int):
        self.node, self.params, self.k = node, params, k
        self.scenario, self.costs = scenario, Costs(scenario)
        self.rng = random.Random(params.seed * SEED_STRIDE + node)
        self.service: dict[int, float] = {}  # peer -> its last reported forward EMA, seconds
        self.queue: dict[int, int] = {}  # peer -> its last reported queue
        self.sent: Counter[int] = Counter()  # peer -> forwards sent to it since its last report
        self.blacklist: set[int] = set()
        self.accumulated: dict[int, float] = {}  # least-time: peer -> its key (module docstring)
        self.own_forward_s = self.costs.forward_s(node)
        self.stage_sets: dict[int, frozenset[int]] = {}  # microbatch -> stages it visits (skip)
        self._orderable: dict[tuple, bool] = {}

    # -- measurements -------------------------------------------------------------------------
    def ran_forward(self, seconds: float) -> None:
        """This node's own forward took `seconds` (scenario time)."""
        self.own_forward_s += self.params.ema * (seconds - self.own_forward_s)

    def report(self, queue: int) -> Report:
        return Report(self.own_forward_s, queue)

    def observe(self, peer: int, report: Report) -> None:
        """A data message from `peer` carried its report."""
        self.service[peer] = report.forward_s  # the peer averaged it already
        self.queue[peer] = report.queue
        self.sent[peer] = 0

    def service_s(self, peer: int) -> float:
        return self.service.get(peer, self.costs.forward_s(peer))

    def expected_wait_s(self, peer: int) -> float:
        load = self.queue.get(peer, 0) + self.sent[peer]
        return self.costs.link_s(self.node, peer) + (1 + load) * self.service_s(peer)

    def slow(self, peer: int) -> bool:
        """Is `peer` measured slower than planned by the slow factor?"""
        return self.service_s(peer) > self.params.slow_factor * self.costs.forward_s(peer)

    # -- choices ------------------------------------------------------------------------------
    def begin_iteration(self) -> None:
        self.stage_sets.clear()

    def choose_node(self, candidates: Sequence[int], avoid: Sequence[int] = ()) -> int | None:
        """Choose the next node among `candidates` (live nodes of one stage) by the routing
        choice, never a blacklisted or avoided one; None when none is left. Counts the send."""
        pool = [n for n in candidates if n not in self.blacklist and n not in avoid]
        if not pool:
            return None
        self._join(pool)
        node = self._choose(pool, [self._node_s(n) for n in pool])
        if self.params.choice == "least-time":
            self.accumulated[node] = self._node_s(node)
        self.sent[node] += 1
        return node

    def _node_s(self, peer: int) -> float:
        """What the routing choice ranks a peer by (lower is better): its expected completion
        under least-time, its expected wait under the weighted draw."""
        if self.params.choice == "weighted":
            return self.expected_wait_s(peer)
        return self.accumulated.get(peer, 0.0) + self.costs.link_s(self.node, peer) + self.service_s(peer)

    def _join(self, pool: Sequence[int]) -> None:
        """least-time: peers of `pool` first seen join the heap at the least key there."""
        if self.params.choice == "least-time":
            floor = min((self.accumulated[n] for n in pool if n in self.accumulated), default=0.0)
            for n in pool:
                self.accumulated.setdefault(n, floor)

    def _choose(self, items: list, seconds: list[float]):
        """The item with the least `seconds` (random among ties), or a draw by 1 / seconds."""
        if len(items) == 1:
            return items[0]
        if self.params.choice == "weighted":
            return self.rng.choices(items, [1.0 / max(x, 1e-12) for x in seconds])[0]
        least = min(seconds)
        return self.rng.choice([i for i, x in zip(items, seconds) if x <= least + TIE_S])

    def _stage_wait_s(self, stage: int, live: Live) -> float:
        pool = [n for n in live[stage] if n not in self.blacklist]
        self._join(pool)
        return min((self._node_s(n) for n in pool), default=float("inf"))

    def next_hop(
        self,
        microbatch: int,
        hops: Sequence[Hop],
        live: Live,
        planned: Hop | None = None,
        onward: int | None = None,
    ) -> Hop | None:
        """Where the microbatch that has run the forwards at `hops` goes next under this
        router's rule; None: back to its origin for the loss (path complete, or no stage left
        with a live node). `planned`: the plan's next hop (repair), `onward`: the node the plan
        sends it to after that."""
        if len(hops) >= self.k:
            return None
        rule = self.params.rule
        if rule == "repair":
            return self._repair(planned, live, onward) if planned is not None else None
        if rule == "swarm":
            stages = [s for s in range(hops[-1].stage + 1, len(live)) if live[s]]
        else:
            stages = self._next_stages(microbatch, hops, live)
        for _ in range(len(stages)):
            stage = stages[0] if rule == "swarm" else self._draw_stage(stages, live)
            node = self.choose_node(live[stage])
            if node is not None:
                return Hop(stage, node)
            stages.remove(stage)  # every node there blacklisted: try another stage
        return None

    def _repair(self, planned: Hop, live: Live, onward: int | None) -> Hop | None:
        ok = planned.node in live[planned.stage] and planned.node not in self.blacklist
        if ok and not self.slow(planned.node):
            return planned
        others = [n for n in live[planned.stage] if not self.slow(n)]
        if ok:  # slow, not dead: detour only where it is expected to deliver sooner
            keep = self._via_s(planned.node, onward)
            others = [n for n in others if self._via_s(n, onward) < keep]
        node = self.choose_node(others, avoid=(planned.node,))
        if node is not None:
            return Hop(planned.stage, node)
        return planned if ok else None  # no other node there: slow beats nothing

    def _via_s(self, peer: int, onward: int | None) -> float:
        """Expected seconds until `peer` has run the forward and handed it on to `onward`."""
        return self.expected_wait_s(peer) + (0.0 if onward is None else self.costs.link_s(peer, onward))

    def _draw_stage(self, stages: list[int], live: Live) -> int:
        return self._choose(stages, [self._stage_wait_s(s, live) for s in stages])

    # -- swarm-skip: which stages, in which order ---------------------------------------------
    def choose_stage_set(
        self, microbatch: int, budget: Counter[int], left: int, live: Live
    ) -> frozenset[int]:
        """At the origin, when it starts `microbatch`: the k-1 stages it will visit, spending
        `budget` (stage -> visits this origin still has to give, updated here) with `left` of its
        microbatches still to start, this one included."""
        if microbatch in self.stage_sets:  # a restarted attempt keeps its stages
            return self.stage_sets[microbatch]
        stages = [s for s in range(1, len(live)) if live[s]]
        need = min(self.k - 1, len(stages))
        waits = {s: self._stage_wait_s(s, live) for s in range(1, len(live))}
        sets = self._spending_sets(budget, left, stages, need)
        chosen = None
        while sets and chosen is None:
            chosen = self._choose(sets, [sum(waits[s] for s in c) for c in sets])
            # the later microbatches must still be able to spend the rest exactly: a forward jump
            # limit makes some sets unorderable, and a choice could leave only such a set
            if not self._can_spend(_spent(budget, chosen, stages), left - 1, stages, need):
                sets, chosen = [c for c in sets if c != chosen], None
        if chosen is None:  # no budget-respecting set can be ordered (nodes died): any orderable one
            sets = [
                frozenset(c)
                for c in itertools.combinations(stages, need)
                if self._can_order((0,), frozenset(c))
            ] or [frozenset()]
            chosen = self._choose(sets, [sum(waits[s] for s in c) for c in sets])
        budget.subtract({s: 1 for s in chosen})
        self.stage_sets[microbatch] = chosen
        return chosen

    def _spending_sets(
        self, budget: Counter[int], left: int, stages: list[int], need: int
    ) -> list[frozenset[int]]:
        """The orderable sets of `need` stages that spend `budget` (left microbatches) evenly."""
        forced = {s for s, b in budget.items() if b >= left}  # every later microbatch must visit it
        open_ = [s for s in stages if budget[s] > 0 or not budget]
        return [
            frozenset(c)
            for c in itertools.combinations(open_, need)
            if forced <= set(c) and self._can_order((0,), frozenset(c))
        ]

    def _can_spend(self, budget: tuple[int, ...], left: int, stages: list[int], need: int) -> bool:
        """Can `left` microbatches spend `budget` (visits per stage of `stages`) exactly, each
        with an orderable set? A depth-first search, the most loaded stages first (it rarely
        backtracks), memoized across routers: whether a set is orderable depends on CC3 only."""
        if left == 0 or not any(budget):
            return not any(budget)
        p = self.scenario.pipeline
        key = (
            p.max_forward_jump_stages,
            p.max_swap_back_stages,
            p.max_swaps,
            p.max_swap_distance,
            tuple(stages),
            need,
            budget,
            left,
        )
        if key not in _SPENDABLE:
            counter = Counter(dict(zip(stages, budget)))
            sets = sorted(
                self._spending_sets(counter, left, stages, need),
                key=lambda c: (-sum(counter[s] for s in c), sorted(c)),
            )
            _SPENDABLE[key] = max(budget) <= left and any(
                self._can_spend(_spent(counter, c, stages), left - 1, stages, need) for c in sets
            )
        return _SPENDABLE[key]

    def _next_stages(self, microbatch: int, hops: Sequence[Hop], live: Live) -> list[int]:
        visited = tuple(h.stage for h in hops)
        rest = self.stage_sets.get(microbatch, frozenset(range(1, len(live)))) - set(visited)
        rest = frozenset(s for s in rest if live[s])
        return [s for s in sorted(rest) if self._can_order(visited + (s,), rest - {s})]

    def _can_order(self, prefix: tuple[int, ...], rest: frozenset[int]) -> bool:
        """Can `rest` follow `prefix` in some order that keeps CC3? (memoized; k is small)"""
        key = (prefix, rest)
        if key not in self._orderable:
            self._orderable[key] = cc3_problem(prefix, self.scenario) is None and (
                not rest or any(self._can_order(prefix + (s,), rest - {s}) for s in sorted(rest))
            )
        return self._orderable[key]


_SPENDABLE: dict[tuple, bool] = {}  # Router._can_spend's answers (CC3, stages, budget, left)


def _spent(budget: Counter[int], chosen: frozenset[int], stages: list[int]) -> tuple[int, ...]:
    """What is left of `budget` (in the order of `stages`) once `chosen` is visited."""
    return tuple(budget[s] - (s in chosen) for s in stages)


def routers(params: Routing, scenario: Scenario) -> dict[int, Router]:
    """One router per node of the scenario, as the simulator keeps them."""
    k = path_length(params.rule, scenario)
    return {n.id: Router(n.id, params, scenario, k) for n in scenario.nodes}


def onward_of(hops: Sequence[Hop], hop: int) -> int:
    """The node the plan sends the forward of hop `hop` + 1 on to: the hop after, or the origin
    for the loss."""
    return hops[hop + 2].node if hop + 2 < len(hops) else hops[0].node


def stage_budgets(origins: Sequence[tuple[int, int]], n_stages: int, k: int) -> dict[int, Counter[int]]:
    """TC1's even load split among the data nodes: (origin, its microbatches) in a fixed order
    -> per origin, stage -> forward visits it gives that stage in one iteration. The visits are
    dealt round robin over stages 1..S-1 in that order, so every stage gets at most
    ceil(N (k-1) / (S-1)) (rules.stage_visit_cap) and an origin at most one per microbatch."""
    out, unit = {}, 0
    for origin, count in origins:
        need = count * (k - 1)
        out[origin] = Counter(1 + (unit + i) % (n_stages - 1) for i in range(need))
        unit += need
    return out


def path_length(rule: str, scenario: Scenario) -> int:
    """k: the stages a path visits under `rule` (the plan's own length under repair)."""
    return scenario.pipeline.n_stages if rule == "swarm" else scenario.pipeline.path_length
