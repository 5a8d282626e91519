"""Failure injection into a running node: `FailureInjector` fires the node's planned failures
(failures.py: the one failure model, shared with the simulator and the scenario's [faults])."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING

from ...failures import FailureSpec
from ...ops import OpKind

if TYPE_CHECKING:  # annotations only
    from .emulation import Emulation
    from .runconfig import EventWriter

PHASE_OF = {OpKind.F: "forward", OpKind.L: "backward", OpKind.B: "backward", OpKind.W: "backward"}


class FailureInjector:
    """Fires one node's planned failures. `silence` makes the node stop answering (a hang)."""

    def __init__(
        self,
        plan: tuple[FailureSpec, ...],
        node_id: int,
        events: EventWriter,
        emulation: Emulation,
        silence: Callable[[], None],
    ):
        self.pending = [f for f in plan if f.node == node_id]
        self.events, self.emulation, self.silence = events, emulation, silence

    async def before(self, it: int, phase: str, done_ops: int) -> None:
        """Called before the node's next step of `phase` in iteration `it`, after `done_ops`
        operations of it."""
        for f in list(self.pending):
            if not f.fires(it, phase, done_ops):
                continue
            self.pending.remove(f)
            self.events.write("fault", how=f.how, phase=f.phase, iteration=it)
            if f.how == "crash":
                os.kill(os.getpid(), signal.SIGKILL)  # like kill -9: no clean-up at all
            if f.how == "hang":
                self.silence()
                await asyncio.Event().wait()  # answer nothing until the launcher stops us
            self.emulation.slow = f.factor
