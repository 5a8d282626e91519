"""A restarted node comes back into a running training, sponsored by a live peer of its stage.

The restarted node asks every peer (RejoinRequest). After its next iteration, the lowest live node of
the same stage, its sponsor, announces to everyone the iteration it joins at (RejoinAt: two
ahead, so every stage peer hears it before starting that iteration; stage peers are at most
one iteration apart) and, one iteration before that, sends it the dead set and the step counts
(Welcome) and then the stage's weights and AdamW moments (a WEIGHTS tensor, taken right after
its own step). The joining node loads them and so ends each later iteration with exactly its
peers' weights. Everyone plans it in again from the join iteration on, which runs degraded.

A Welcome is taken only when this node asked for one: while it comes back (it then takes the
sponsor's dead set as its own view, having none), or from a node of the target stage of a move
of its own that is due (moves.py; the dead set is not used then). Any other Welcome is rejected
and logged: one well-formed message from a key holder must not change who is in the run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import torch

from ..net.wire import Kind, Message
from .compute import StageCompute
from .control import Control, RejoinAt, RejoinRequest, Welcome
from .membership import Membership
from .messenger import STALL_FACTOR, Messenger, NodeFailure
from .runconfig import RunConfig

log = logging.getLogger(__name__)

JOIN_AHEAD = 2  # iterations between the sponsor's announcement and the join


class Rejoin:
    def __init__(
        self,
        cfg: RunConfig,
        messenger: Messenger,
        compute: Callable[[], StageCompute],
        membership: Membership,
    ):
        self.cfg, self.m, self.members = cfg, messenger, membership
        self.compute = compute  # the node's current stage compute (a move replaces it)
        self.requests: set[int] = set()  # restarted peers asking to come back
        self.welcome: Welcome | None = None  # rejoining: the sponsor's plan ...
        self.sponsor: int | None = None
        self.state: torch.Tensor | None = None  # ... and our stage's state
        self.joined_at: int | None = None  # the iteration this node came back at
        self.coming_back = False  # waiting for the sponsor of this node's rejoin
        messenger.handlers[Kind.WEIGHTS] = self._weights

    # -- messages ---------------------------------------------------------------------------
    def on_control(self, ctrl: Control, sender: int) -> None:
        if isinstance(ctrl, RejoinRequest):
            self.requests.add(sender)
        elif isinstance(ctrl, RejoinAt):
            self.members.plan_join(ctrl.node, ctrl.rejoin_at)
        elif isinstance(ctrl, Welcome):
            self._welcome(ctrl, sender)

    def _welcome(self, ctrl: Welcome, sender: int) -> None:
        rejoining = self.coming_back and self.welcome is None
        if not (rejoining or self.members.serves_my_move(sender, self.m.iteration_now)):
            log.warning("rejected: a welcome from node %d that this node did not ask for", sender)
            self.m.events.write("welcome_rejected", sender=sender, dead=list(ctrl.dead))
            return
        self.welcome, self.sponsor = ctrl, sender
        if rejoining:  # back from the dead, this node has no view of its own yet: the sponsor's
            self.m.live.declare(set(ctrl.dead), f"reported by node {sender}, this node's sponsor")

    def _weights(self, msg: Message) -> None:
        self.state = msg.to_torch()

    # -- the restarted node -----------------------------------------------------------------
    async def come_back(self) -> int:
        """Ask every peer, wait for the sponsor's welcome and our stage's state, load it.
        Returns the iteration to start at."""
        self.coming_back = True
        for n in self.cfg.peers:
            if n != self.m.id:
                asyncio.create_task(self.m.tell_direct(n, RejoinRequest()))
        deadline = time.monotonic() + self.cfg.connect_timeout_s + STALL_FACTOR * self.cfg.peer_timeout_s
        w, state, _ = await self.take_state(deadline, "the rejoin")
        self.coming_back = False
        self.compute().load_state_vector(state, w.steps)
        self.joined_at = w.welcome
        self.m.events.write("rejoined", iteration=w.welcome, sponsor=self.sponsor)
        return w.welcome

    async def take_state(self, deadline: float, what: str) -> tuple[Welcome, torch.Tensor, int]:
        """The sponsor's Welcome, stage state and node id, once both are in (by `deadline`,
        time.monotonic; `what` names the wait in the error); the next sponsored state (a later
        move's) is awaited afresh."""
        while self.welcome is None or self.state is None:
            if time.monotonic() > deadline:
                raise NodeFailure(f"no live peer of the stage sponsored {what} in time")
            await self.m.wait(deadline - time.monotonic())
        taken = self.welcome, self.state, self.sponsor
        self.welcome = self.state = None
        return taken

    # -- the sponsor and everyone else ------------------------------------------------------
    def revived(self, it: int) -> set[int]:
        """Peers planned in again from iteration `it` (alive from now on)."""
        back = self.members.joining_at(it)
        for r in back:
            self.m.live.revive(r)
        return back

    def after_step(self, it: int) -> None:
        """After iteration `it`'s step: announce the joins this node sponsors, and send the
        state to peers that join at the next iteration."""
        live = self.m.live
        for r in sorted(self.requests):
            alloc, stage_of = self.members.allocation, self.members.stage_of
            peers = [n for n in alloc[stage_of[r]] if n != r and n not in live.dead]
            if peers and peers[0] == self.m.id:
                join = it + JOIN_AHEAD
                self.members.plan_join(r, join)
                self.members.sponsor(r, after=join - 1)
                self.m.tell_live(RejoinAt(join, r), skip=frozenset({r}))
                self.m.events.write("sponsor", peer=r, join_iteration=join)
        self.requests.clear()
        for r in self.members.sponsored_after(it):
            state, steps = self.compute().state_vector()
            dead = tuple(sorted(live.dead - {r}))
            asyncio.create_task(self._send_state(r, it + 1, dead, tuple(steps), state))

    async def _send_state(
        self, r: int, join: int, dead: tuple[int, ...], steps: tuple[int, ...], state
    ) -> None:
        for notice in self.members.notices():  # what the peer missed while it was away (moves)
            await self.m.tell_direct(r, notice)
        await self.m.tell_direct(r, Welcome(join, dead, steps))
        await self.m.send_direct(r, Message.from_tensor(Kind.WEIGHTS, self.m.id, state, iteration=join))
