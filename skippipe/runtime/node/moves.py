"""Adaptive rebalancing in a run (rebalance.py's rule): who measures, who decides, who moves.

- After its step, every node of stages 1..S-1 tells the live data nodes its forward moving
  average (Load): the number its data messages carry to routers already.
- The lowest live data node decides (data nodes never move, so the decider stays put): after
  its step of iteration `it` it applies the rule to the latest reports (once every node has
  reported) and announces Move(node, target stage, at = it + MOVE_AHEAD) to everyone.
- Every node records the move; from iteration `at` on it routes, averages, repairs and reads
  paths with the new allocation (membership.py: `allocation_at`, `stages_of`), while messages of earlier
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
from collections.abc import Callable

from ...rebalance import Move, throughputs
from .control import Load, MoveNotice
from .membership import Membership
from .messenger import STALL_FACTOR, Messenger
from .rejoin import Rejoin
from .routes import Routes
from .runconfig import RunConfig


class Moves:
    """One node's part in the run's moves; inert unless the variant rebalances."""

    def __init__(
        self,
        cfg: RunConfig,
        node: int,
        membership: Membership,
        routes: Routes,
        messenger: Messenger,
        rejoin: Rejoin,
    ):
        self.cfg, self.id, self.m, self.routes, self.rejoin = cfg, node, messenger, routes, rejoin
        self.members = membership
        self.forward_s: dict[int, float] = {}  # node -> its latest reported forward EMA

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
        before = self.members.allocation_at(notice.at - 1)
        source = next((s for s, nodes in enumerate(before) if notice.move in nodes), 0)
        if not (self.members.rebalances and 0 < source != notice.stage and 0 < notice.stage < len(before)):
            self.m.events.write("move_rejected", node_moved=notice.move, stage=notice.stage, sender=sender)
            return
        move = Move(notice.move, source, notice.stage, notice.at)
        if self.members.record(move):
            self._sponsor(move)

    def _sponsor(self, move: Move) -> None:
        """If this node is the target stage's lowest live node, send the mover our state after
        our step of the iteration before the move (rejoin's sponsoring)."""
        peers = [n for n in self.members.allocation_at(move.at - 1)[move.target] if n not in self.m.live.dead]
        if peers and peers[0] == self.id:
            self.members.sponsor(move.node, after=move.at - 1)

    # -- after each step --------------------------------------------------------------------
    def after_step(self, it: int) -> None:
        """Report our forward time; the decider applies the rule."""
        if not self.members.rebalances:
            return
        alloc, dead = self.members.allocation_at(it), self.m.live.dead
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
        alloc = self.members.allocation_at(it)
        if any(n not in self.forward_s for stage in alloc[1:] for n in stage if n not in self.m.live.dead):
            return
        forward = {n: self.forward_s[n] for stage in alloc[1:] for n in stage if n in self.forward_s}
        move = self.members.decide(it, forward, self.m.live.dead)
        if move is None:
            return
        rate = throughputs(alloc, forward, self.m.live.dead)
        self.m.events.write(
            "rebalance",
            iteration=it,
            moved=move.node,
            source=move.source,
            target=move.target,
            at=move.at,
            throughputs={s: round(r, 4) for s, r in rate.items()},
        )
        notice = MoveNotice(move.node, move.target, move.at)
        self.m.tell_live(notice)
        for r in sorted(self.members.coming_back() & self.m.live.dead):
            # coming back, and its welcome may have left already: it must hear of the move too
            asyncio.create_task(self.m.tell_direct(r, notice))
        self._sponsor(move)

    async def take_stage(self, it: int, place: Callable[[int], object]) -> None:
        """Before iteration `it`: if this node moves then, wait for its new stage's state from
        the sponsor, `place` it in the new stage (a new module) and load the state."""
        move = self.members.my_move_at(it)
        if move is None or it >= self.cfg.iterations:  # a move after the last iteration: moot
            return
        started = time.monotonic()
        deadline = started + STALL_FACTOR * self.cfg.peer_timeout_s
        welcome, state, sponsor = await self.rejoin.take_state(deadline, "the moved node's new stage")
        compute = place(move.target)
        compute.load_state_vector(state, welcome.steps)
        self.m.events.write(
            "moved",
            iteration=it,
            source=move.source,
            target=move.target,
            sponsor=sponsor,
            wait_s=round(time.monotonic() - started, 3),
        )
