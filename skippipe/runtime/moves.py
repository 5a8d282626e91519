"""Adaptive rebalancing in a run (rebalance.py's rule): who measures, who decides, who moves.

- After its step, every node of stages 1..S-1 tells the live data nodes its forward moving
  average (Load): the number its data messages carry to routers already.
- The lowest live data node decides (data nodes never move, so the decider stays put): after
  its step of iteration `it` it applies the rule to the latest reports (once every node has
  reported) and announces Move(node, target stage, at = it + MOVE_AHEAD) to everyone.
- Every node records the move; from iteration `at` on it routes, averages, repairs and reads
  paths with the new allocation (`allocation_at`, `stages_of`), while messages of earlier
  iterations still read with the old one.
- The lowest live node of the target stage sponsors the move as it would a rejoin (rejoin.py):
  after its step of iteration at - 1 it sends the mover its weights and AdamW state. The mover,
  after its own step of at - 1, waits for them, builds the new stage's module, loads the state
  and so ends every later iteration with exactly its new stage peers' weights.
- A node that rejoins gets every move so far from its sponsor before the welcome, and the
  decider tells it of later ones directly (it counts as dead until its join iteration), so it
  comes back with everyone's allocation.
"""
from __future__ import annotations

import asyncio
import time
from typing import Callable

from ..rebalance import Allocation, Move, Rebalancer, throughputs
from .control import Load, MoveNotice
from .messenger import STALL_FACTOR, Messenger
from .rejoin import Rejoin
from .routes import Routes
from .runconfig import RunConfig


class Moves:
    """One node's view of the run's moves; inert unless the variant rebalances."""

    def __init__(self, cfg: RunConfig, node: int, allocation: Allocation, stages_of: dict[int, tuple[int, ...]],
                 routes: Routes, messenger: Messenger, rejoin: Rejoin):
        self.cfg, self.id, self.m, self.routes, self.rejoin = cfg, node, messenger, routes, rejoin
        online = routes.online
        self.rebalancer = Rebalancer(allocation, routes.routing.rebalance if online else 0.0)
        self.base_stages_of = stages_of  # while no node has moved (it may hold two stages: V placement)
        self.forward_s: dict[int, float] = {}  # node -> its latest reported forward EMA
        rejoin.history = self.notices
        rejoin.move_sponsor = self.sponsors_my_move

    @property
    def enabled(self) -> bool:
        return self.rebalancer.enabled

    def allocation_at(self, it: int) -> Allocation:
        return self.rebalancer.allocation_at(it)

    def stages_of(self, it: int) -> dict[int, tuple[int, ...]]:
        return self.rebalancer.stages_of(it) if self.rebalancer.moves else self.base_stages_of

    def begin(self, it: int) -> tuple[Allocation, dict[int, tuple[int, ...]]]:
        """Iteration `it`'s allocation and node -> stages map, handed to routing and rejoin."""
        alloc, stages_of = self.allocation_at(it), self.stages_of(it)
        self.routes.allocation = self.rejoin.allocation = alloc
        self.rejoin.stage_of = {n: stages[0] for n, stages in stages_of.items()}
        return alloc, stages_of

    def notices(self) -> list[MoveNotice]:
        """Every move so far, as notices: a rejoining node replays them before its welcome."""
        return [MoveNotice(m.node, m.target, m.at) for m in self.rebalancer.moves]

    def sponsors_my_move(self, sender: int) -> bool:
        """Whether `sender` may send this node a stage's state: a move of this node is due and
        `sender` serves its target stage."""
        return any(m.node == self.id and m.at > self.m.iteration_now
                   and sender in self.allocation_at(m.at - 1)[m.target] for m in self.rebalancer.moves)

    def mine(self, it: int) -> Move | None:
        """This node's move that takes effect at iteration `it`, if any."""
        return next((m for m in self.rebalancer.moves if m.node == self.id and m.at == it), None)

    # -- messages ---------------------------------------------------------------------------
    def on_control(self, ctrl, sender: int) -> bool:
        """Take a Load or MoveNotice; False for any other message."""
        if isinstance(ctrl, Load):
            self.forward_s[sender] = ctrl.forward_us / 1e6
        elif isinstance(ctrl, MoveNotice):
            self._take(ctrl, sender)
        else:
            return False
        return True

    def _take(self, notice: MoveNotice, sender: int) -> None:
        before = self.allocation_at(notice.at - 1)
        source = next((s for s, nodes in enumerate(before) if notice.move in nodes), 0)
        if not (self.enabled and 0 < source != notice.stage and 0 < notice.stage < len(before)):
            self.m.events.write("move_rejected", node_moved=notice.move, stage=notice.stage, sender=sender)
            return
        move = Move(notice.move, source, notice.stage, notice.at)
        if self.rebalancer.record(move):
            self._sponsor(move)

    def _sponsor(self, move: Move) -> None:
        """If this node is the target stage's lowest live node, send the mover our state after
        our step of the iteration before the move (rejoin's sponsoring)."""
        peers = [n for n in self.allocation_at(move.at - 1)[move.target] if n not in self.m.live.dead]
        if peers and peers[0] == self.id:
            self.rejoin.sponsoring.setdefault(move.at - 1, set()).add(move.node)

    # -- after each step --------------------------------------------------------------------
    def after_step(self, it: int) -> None:
        """Report our forward time; the decider applies the rule."""
        if not self.enabled:
            return
        alloc, dead = self.allocation_at(it), self.m.live.dead
        data_nodes = [n for n in alloc[0] if n not in dead]
        own = self.routes.router.own_forward_s
        if self.id not in alloc[0]:
            for n in data_nodes:
                self.m.tell(n, Load(it, min(round(own * 1e6), 2**31 - 1)))
        if data_nodes and data_nodes[0] == self.id:
            self._decide(it)

    def _decide(self, it: int) -> None:
        """Apply the rule once every live node of stages 1..S-1 has reported (mixing reports with
        the cost model's times would compare measured speeds with modelled ones)."""
        alloc = self.allocation_at(it)
        if any(n not in self.forward_s for stage in alloc[1:] for n in stage if n not in self.m.live.dead):
            return
        forward = {n: self.forward_s[n] for stage in alloc[1:] for n in stage if n in self.forward_s}
        move = self.rebalancer.after_iteration(it, forward, self.m.live.dead)
        if move is None:
            return
        rate = throughputs(alloc, forward, self.m.live.dead)
        self.m.events.write("rebalance", iteration=it, moved=move.node, source=move.source, target=move.target,
                            at=move.at, throughputs={s: round(r, 4) for s, r in rate.items()})
        notice = MoveNotice(move.node, move.target, move.at)
        self.m.tell_live(notice)
        for r in sorted(set().union(*self.rejoin.revive_at.values()) & self.m.live.dead):
            # coming back, and its welcome may have left already: it must hear of the move too
            asyncio.create_task(self.m.tell_direct(r, notice))
        self._sponsor(move)

    async def take_stage(self, it: int, place: Callable[[int], object]) -> None:
        """Before iteration `it`: if this node moves then, wait for its new stage's state from
        the sponsor, `place` it in the new stage (a new module) and load the state."""
        move = self.mine(it)
        if move is None or it >= self.cfg.iterations:  # a move after the last iteration: moot
            return
        started = time.monotonic()
        deadline = started + STALL_FACTOR * self.cfg.peer_timeout_s
        welcome, state = await self.rejoin.receive_state(deadline, "the moved node's new stage")
        compute = place(move.target)
        compute.load_state_vector(state, welcome.steps)
        self.m.events.write("moved", iteration=it, source=move.source, target=move.target,
                            sponsor=self.rejoin.sponsor, wait_s=round(time.monotonic() - started, 3))
        self.rejoin.welcome = self.rejoin.state = None
