"""Who serves which stage, iteration by iteration, as one node sees it.

One object per node, shared by the node's iteration loop, its rebalancing (moves.py) and its
rejoin logic (rejoin.py), which change it only through these methods: the allocation with the
moves rebalancing made (rebalance.Rebalancer), the peers planned back in from a given iteration
(rejoins), and the peers this node sends its stage's state to after a given iteration (the
sponsoring of a rejoin or of a move). Who is alive is Liveness's business, not this one's.
"""

from __future__ import annotations

from ...rebalance import Allocation, Move, Rebalancer
from .control import MoveNotice


class Membership:
    def __init__(
        self, node: int, allocation: Allocation, stages_of: dict[int, tuple[int, ...]], rebalance: float
    ):
        self.id = node
        self.rebalancer = Rebalancer(allocation, rebalance)  # threshold 0: never moves anyone
        self.base_stages_of = stages_of  # while no node has moved (V placement: two stages)
        self.allocation = allocation  # of the iteration begun last
        self.stage_of = {n: stages[0] for n, stages in stages_of.items()}
        self._revive_at: dict[int, set[int]] = {}  # iteration -> peers planned in again from then
        self._sponsoring: dict[int, set[int]] = {}  # after this iteration, send these peers our state

    # -- the allocation and its moves -------------------------------------------------------
    @property
    def rebalances(self) -> bool:
        return self.rebalancer.enabled

    def allocation_at(self, it: int) -> Allocation:
        return self.rebalancer.allocation_at(it)

    def stages_of(self, it: int) -> dict[int, tuple[int, ...]]:
        return self.rebalancer.stages_of(it) if self.rebalancer.moves else self.base_stages_of

    def begin(self, it: int) -> tuple[Allocation, dict[int, tuple[int, ...]]]:
        """Iteration `it` starts: its allocation and node -> stages map become the current ones."""
        self.allocation, stages_of = self.allocation_at(it), self.stages_of(it)
        self.stage_of = {n: stages[0] for n, stages in stages_of.items()}
        return self.allocation, stages_of

    def record(self, move: Move) -> bool:
        """Take a move announced by the decider; False if it was known already."""
        return self.rebalancer.record(move)

    def decide(self, it: int, forward_s: dict[int, float], dead: set[int]) -> Move | None:
        """The decider's rule after iteration `it` (rebalance.py)."""
        return self.rebalancer.after_iteration(it, forward_s, dead)

    def notices(self) -> list[MoveNotice]:
        """Every move so far, as notices: a rejoining node replays them before its welcome."""
        return [MoveNotice(m.node, m.target, m.at) for m in self.rebalancer.moves]

    def my_move_at(self, it: int) -> Move | None:
        """This node's move that takes effect at iteration `it`, if any."""
        return next((m for m in self.rebalancer.moves if m.node == self.id and m.at == it), None)

    def serves_my_move(self, sender: int, now: int) -> bool:
        """Whether `sender` may send this node a stage's state at iteration `now`: a move of this
        node is due and `sender` serves its target stage."""
        return any(
            m.node == self.id and m.at > now and sender in self.allocation_at(m.at - 1)[m.target]
            for m in self.rebalancer.moves
        )

    # -- rejoins and sponsoring -------------------------------------------------------------
    def plan_join(self, peer: int, at: int) -> None:
        self._revive_at.setdefault(at, set()).add(peer)

    def joining_at(self, it: int) -> set[int]:
        """The peers planned in again from iteration `it`, taken off the plan."""
        return self._revive_at.pop(it, set())

    def coming_back(self) -> set[int]:
        """Every peer planned in again at a later iteration."""
        return set().union(*self._revive_at.values())

    def sponsor(self, peer: int, after: int) -> None:
        """Send `peer` this node's stage state after iteration `after`'s step."""
        self._sponsoring.setdefault(after, set()).add(peer)

    def sponsored_after(self, it: int) -> set[int]:
        """The peers to send the state to after iteration `it`'s step, taken off the plan."""
        return self._sponsoring.pop(it, set())


def rebalance_factor(variant) -> float:
    """The throughput ratio at which `variant` moves a node (schedule.Routing.rebalance); 0 for
    a variant that does not route online, which never moves anyone."""
    routing = variant.routing
    return routing.rebalance if routing is not None and routing.online else 0.0
