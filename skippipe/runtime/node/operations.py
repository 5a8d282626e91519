"""Running a node's operations: the torch work off the event loop (one worker thread, so in
order), padded to the operation's emulated duration, logged, and its output sent on to the next
hop (chosen now for online variants: routes.py); and the late operations of iterations this node
already finished (a re-routed microbatch's), served between its own."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from .datamsg import attempt_of, op_of, path_of

if TYPE_CHECKING:
    from ...ops import Op
    from ...schedule import VariantSchedule
    from .compute import StageCompute
    from .emulation import Emulation
    from .iteration import Iteration
    from .membership import Membership
    from .messenger import Messenger
    from .routes import Routes
    from .runconfig import EventWriter


class Operations:
    def __init__(
        self,
        variant: VariantSchedule,
        activation_bytes: float,
        routes: Routes,
        messenger: Messenger,
        emulation: Emulation,
        events: EventWriter,
        members: Membership,
    ):
        self.variant, self.activation_bytes, self.routes = variant, activation_bytes, routes
        self.m, self.emulation, self.events, self.members = messenger, emulation, events, members
        self.pool = ThreadPoolExecutor(max_workers=1)  # torch work off the event loop, in order
        self.compute: StageCompute | None = None
        self.stage = -1

    def place(self, compute: StageCompute, stage: int) -> None:
        """Run on `compute` from now on: the node's stage module (a move replaces it)."""
        self.compute, self.stage = compute, stage

    async def in_worker(self, fn, *args):
        """`fn(*args)` on the worker thread, after the torch work queued before it."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def run(self, cur: Iteration, op: Op) -> None:
        """Run `op` of the current iteration and send its output on."""
        start, t_event = time.monotonic(), self.events.now()
        path = cur.paths[op.microbatch]
        out = await self.in_worker(self.compute.run, op, path.hops[op.hop].stage)
        await self.emulation.pad(start, self.emulation.op_s(op.kind, self.variant.split_backward))
        self.events.write(
            "op",
            t=t_event,
            kind=op.kind.value,
            microbatch=op.microbatch,
            hop=op.hop,
            stage=self.stage,
            dur=self.events.now() - t_event,
            iteration=cur.it,
        )
        self._send_on(cur.it, path, op, out, cur.attempt[op.microbatch], time.monotonic() - start)

    def _send_on(self, it: int, path, op: Op, out, attempt: int, wall_s: float) -> None:
        nxt = self.routes.onward(it, path, op, out, attempt, wall_s)  # online: next hop chosen now
        if nxt is not None:
            self.m.send(*nxt, nominal_bytes=self.activation_bytes)

    async def serve_late(self) -> bool:
        """Run one operation of an iteration this node already finished (a re-routed
        microbatch). Returns whether it ran one."""
        if not self.m.late:
            return False
        msg = self.m.late.pop(0)
        path = path_of(msg, self.members.stages_of(msg.iteration))
        op = op_of(msg, path)
        stage = path.hops[op.hop].stage
        if not self.compute.serves(op, stage):  # a stage this node moved away from
            self.events.write("late_op_dropped", microbatch=op.microbatch, iteration=msg.iteration)
            return True
        start = time.monotonic()
        out = await self.in_worker(lambda: self.compute.run_late(msg.iteration, op, msg.to_torch(), stage))
        await self.emulation.pad(start, self.emulation.op_s(op.kind, self.variant.split_backward))
        self.events.write(
            "late_op", kind=op.kind.value, microbatch=op.microbatch, hop=op.hop, iteration=msg.iteration
        )
        if out is not None:
            self._send_on(msg.iteration, path, op, out, attempt_of(msg), time.monotonic() - start)
        return True
