"""The quorum rule: a node trains on only while its side of the run can train the whole model
and no other side can.

In a node's own view (every node of the run it has not declared dead, liveness.py) two things
must hold at every iteration:

- every stage of the iteration's allocation has a live node: a run whose paths skip a stage
  because none of its nodes is left would update the other stages without that stage's layers,
  and its summary would look like a normal run;
- its live nodes are a strict majority of all the run's nodes: two sides of a partition can
  never both hold one, so at most one side goes on (no split brain). The majority counts every
  node, not only the data nodes: each node holds a share of the model's state, and a run has
  few data nodes (2 of 6 in the tiny scenario), so a majority of them would stop a run at the
  loss of any single data node.

The verdict is taken whenever this node declares a death (so a side that lost stops when its
silence deadline, one peer timeout, runs out) and before every iteration. A node that lost its
quorum cancels its work, writes a `quorum_lost` event with the reason and exits QUORUM_EXIT
(process.py saves its stage first when the run checkpoints); the launcher prints the reason in
one line and exits non-zero. Once a node ran its last iteration the verdict is moot.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence

from ...recovery import quorum_verdict as verdict
from .messenger import Messenger

QUORUM_EXIT = 3  # a node's exit code when it stopped for want of a quorum


class QuorumLost(Exception):
    """This node's side of the run may not train on (the message says why)."""


class Quorum:
    """One node's guard: checks the rule and stops the node's run when it fails (by
    cancelling it, and at the messenger's next wait)."""

    def __init__(
        self, n_nodes: int, messenger: Messenger, allocation_at: Callable[[int], Sequence[Sequence[int]]]
    ):
        self.n_nodes, self.allocation_at = n_nodes, allocation_at
        self.live, self.events = messenger.live, messenger.events
        messenger.stopping = self.enforce
        self.lost: str | None = None
        self.over = False  # the last iteration ran: nothing is left to protect
        self._task: asyncio.Task | None = None

    async def guarded(self, work: Coroutine) -> None:
        """Run `work` (the node's whole run) as the task a lost quorum cancels; it then ends
        in QuorumLost."""
        self._task = asyncio.current_task()
        try:
            await work
        except asyncio.CancelledError:
            if self.lost is None:
                raise
            self._task.uncancel()
            raise QuorumLost(self.lost) from None

    def enforce(self) -> None:
        """Raise QuorumLost once the quorum is lost (the node's waits call this)."""
        if self.lost is not None and not self.over:
            raise QuorumLost(self.lost)

    def check(self, it: int) -> None:
        """Before iteration `it`, or after a death in it: stop the node if its side lost."""
        if self.over:
            return
        if self.lost is None:
            why = verdict(self.n_nodes, self.live.dead, self.allocation_at(it))
            if why is None:
                return
            self.lost = why
            self.events.write("quorum_lost", why=why, iteration=it, dead=sorted(self.live.dead))
            self.live.stop()  # no heartbeats from a stopping node: it is leaving the run
        if self._task is None or self._task is asyncio.current_task():
            raise QuorumLost(self.lost)
        self._task.cancel()  # from another task (a liveness verdict): stop the run's
