"""Adaptive rebalancing (SWARM, Ryabinin et al. 2023): at iteration boundaries, move a node from
the stage that drains its work fastest to the one that drains it slowest.

Under online routing every stage gets the same share of the forwards (swarm: each microbatch
visits every stage; swarm-skip: TC1's even budgets), so a stage's *throughput* is the sum of
its live nodes' forward rates, 1 / each node's measured forward time (the moving average its
router keeps, routing.Router.own_forward_s). The pipeline runs at its slowest stage's pace.

The rule (`decide`), on stages 1..S-1 that have a live node (stage 0's nodes hold the data and
start every path; a stage whose nodes all died is skipped, and nobody could hand it over): when
the fastest stage's throughput exceeds the slowest's by more than `threshold` times, the node
of the fastest stage (which keeps at least one node) whose move gives the best new minimum
moves to the slowest stage, if that raises the minimum by MIN_GAIN (a move that only shifts the
bottleneck elsewhere is not made). Ties go to the lower node id, so every process that applies
the rule to the same measurements makes the same move.

`Rebalancer` keeps one run's allocation over iterations: a move decided after iteration `it`
takes effect at iteration `it + MOVE_AHEAD` (every node hears of it before starting that
iteration: nodes are at most one iteration apart), at most one move is under way, and after a
move the next decision waits until the moved node has served a whole iteration in its new stage.
The simulator (sim/session.py) and the node processes (runtime/node/moves.py) both use it; in a run,
the moved node loads its new stage's weights and optimizer state from a live peer of that
stage, as a rejoining node does.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

Allocation = tuple[tuple[int, ...], ...]  # stage -> its nodes
MOVE_AHEAD = 2  # iterations between a decision and the move (as rejoin's JOIN_AHEAD)
MIN_GAIN = 1.1  # a move must raise the slowest stage's throughput by 10%: measurements are noisy


@dataclass(frozen=True)
class Move:
    """`node` leaves stage `source` and serves stage `target` from iteration `at` on."""

    node: int
    source: int
    target: int
    at: int


def throughputs(
    allocation: Allocation, forward_s: Mapping[int, float], dead: Collection[int] = ()
) -> dict[int, float]:
    """Stage (1..S-1) -> forwards per second its live nodes drain together."""
    return {
        s: sum(1.0 / forward_s[n] for n in nodes if n not in dead)
        for s, nodes in enumerate(allocation)
        if s > 0
    }


def decide(
    allocation: Allocation, forward_s: Mapping[int, float], threshold: float, dead: Collection[int] = ()
) -> tuple[int, int, int] | None:
    """(node, source stage, target stage) of the move the rule makes now, or None."""
    # a stage without a live node is skipped by routing, and no peer could hand a mover its state
    rate = {
        s: r
        for s, r in throughputs(allocation, forward_s, dead).items()
        if any(n not in dead for n in allocation[s])
    }
    if len(rate) < 2:
        return None
    slowest = min(rate, key=lambda s: (rate[s], s))
    fastest = max(rate, key=lambda s: (rate[s], -s))
    if rate[slowest] > 0 and rate[fastest] <= threshold * rate[slowest]:
        return None
    donors = [n for n in allocation[fastest] if n not in dead]
    if len(donors) < 2:
        return None

    def new_minimum(node: int) -> float:
        after = dict(rate)
        after[fastest] -= 1.0 / forward_s[node]
        after[slowest] += 1.0 / forward_s[node]
        return min(after.values())

    best = max(sorted(donors), key=new_minimum)  # max keeps the first (lowest id) of ties
    if new_minimum(best) <= MIN_GAIN * rate[slowest]:
        return None
    return best, fastest, slowest


def moved(allocation: Allocation, move: Move) -> Allocation:
    """The allocation after `move`."""
    return tuple(
        tuple(n for n in nodes if n != move.node) + ((move.node,) if s == move.target else ())
        for s, nodes in enumerate(allocation)
    )


class Rebalancer:
    """One run's allocation over iterations and its moves (threshold <= 0: never moves)."""

    def __init__(self, allocation: Allocation, threshold: float):
        self.initial, self.threshold = allocation, threshold
        self.moves: list[Move] = []  # every move, decided or taken, in order of `at`

    @property
    def enabled(self) -> bool:
        return self.threshold > 0

    def allocation_at(self, it: int) -> Allocation:
        """The allocation iteration `it` runs on."""
        alloc = self.initial
        for m in self.moves:
            if m.at <= it:
                alloc = moved(alloc, m)
        return alloc

    def stages_of(self, it: int) -> dict[int, tuple[int, ...]]:
        return {n: (s,) for s, nodes in enumerate(self.allocation_at(it)) for n in nodes}

    def after_iteration(
        self, it: int, forward_s: Mapping[int, float], dead: Collection[int] = ()
    ) -> Move | None:
        """The move to make after iteration `it`, given every node's measured forward time
        (seconds), or None; a move made is recorded here."""
        if not self.enabled or (self.moves and self.moves[-1].at > it):
            return None  # one move at a time, judged on an iteration it has run in
        choice = decide(self.allocation_at(it + MOVE_AHEAD), forward_s, self.threshold, dead)
        if choice is None:
            return None
        move = Move(*choice, at=it + MOVE_AHEAD)
        self.moves.append(move)
        return move

    def record(self, move: Move) -> bool:
        """Another process decided `move`: take it into this allocation (False: known already)."""
        if move in self.moves:
            return False
        self.moves.append(move)
        self.moves.sort(key=lambda m: m.at)
        return True
