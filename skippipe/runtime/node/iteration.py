"""One iteration at one node: the microbatches it holds, on which paths and attempts, whether the
iteration runs degraded, and when it is over.

Normally an iteration is over when the node's dispatcher has run all its planned operations.
When the variant splits the backward, each B makes its W ready on the same node (ops.local_next,
as in the simulator), and the iteration is not over before every W that became ready has run:
the step needs its weight gradients.
Once a peer dies (or a node comes back) it turns *degraded*: the dispatcher runs first come
first served, each data node restarts its unfinished microbatches that touched a dead node on a
repaired path (recovery.py; attempt + 1, announced to everyone with a Restart notice), and the
iteration is over once every live data node has reported DONE. Data messages carry their path
and attempt (datamsg.py), so a node takes in a re-routed microbatch it was not planned for and
drops messages of superseded attempts.

Online routing (routes.py): a swarm or swarm-skip iteration starts with only the origins known,
runs first come first served and ends, like a degraded one, when every live data node reported
DONE; each data message feeds the router and extends the node's view of the path. When a peer
dies, an origin restarts every unfinished own microbatch that touched it or whose forward is
still out when the peer died (its path beyond the known part may cross it).
"""

from __future__ import annotations

import time

from ...dispatch import Dispatcher
from ...events import Restarted, Routed
from ...ops import B, F, L, Op, OpKind, local_next
from ...schedule import VariantSchedule
from ..net.wire import Kind, Message
from .compute import StageCompute
from .control import Reroute, Restart
from .datamsg import attempt_of, op_of, path_of
from .messenger import Messenger
from .routes import Routes


class Iteration:
    def __init__(
        self,
        it: int,
        variant: VariantSchedule,
        memory_slots: int | None,
        degraded: bool,
        data_node: bool,
        messenger: Messenger,
        compute: StageCompute,
        allocation: tuple[tuple[int, ...], ...],
        stages_of: dict[int, tuple[int, ...]],
        routes: Routes,
    ):
        self.it, self.m, self.compute, self.routes = it, messenger, compute, routes
        variant = routes.begin_iteration(variant)
        self.id = messenger.id
        self.allocation, self.stages_of = allocation, stages_of
        self.data_nodes = set(allocation[0])
        self.paths = {p.microbatch: p for p in variant.paths}
        self.attempt = {mb: 0 for mb in self.paths}
        self.data_node = data_node  # it starts microbatches of its own (in the planned variant)
        self.completed: set[int] = set()  # own microbatches back home
        self.degraded = degraded
        self.seen_dead = set(messenger.live.dead)  # deaths known when the iteration began
        self.split, self.loss_at = variant.split_backward, variant.loss_at
        ops = variant.actions(self.id)
        if routes.online and self.loss_at == "last":  # the loss joins the node the routed path ends at
            ops = [op for op in ops if op.kind is not OpKind.L]
        self.disp = Dispatcher(ops, memory_slots, planned=variant.planned, split=self.split)

    def start_own(self, mb: int) -> None:
        self.disp.arrive(F(mb, 0), time.monotonic())

    def over(self, done_from: set[int]) -> bool:
        """Whether this node is through with the iteration, given the data nodes that reported
        DONE for it."""
        if self.disp.running is not None:
            return False
        if not (self.degraded or self.routes.online):
            return self.disp.done
        if self._own_unfinished() or any(op.kind is OpKind.W for op in self.disp.arrived):
            return False
        return not (self.data_nodes - {self.id} - self.m.live.dead) - done_from

    def finished(self, op: Op) -> None:
        """After B at hop 0 of its last own microbatch a data node reports DONE to everyone.
        A split B makes its W ready here (added first for a microbatch the node serves
        unplanned: a restarted attempt)."""
        self.disp.finish(op)
        local = local_next(op, self.split)
        if local is not None:
            self.disp.add([local])
            self.disp.arrive(local, time.monotonic())
        if op.kind is OpKind.B and op.hop == 0:
            self.completed.add(op.microbatch)
            if not self._own_unfinished():
                self._report_done()

    def _own_unfinished(self) -> set[int]:
        return {mb for mb, p in self.paths.items() if p.origin == self.id} - self.completed

    def _report_done(self) -> None:
        for n in self.m.live.live_peers():
            self.m.send(n, Message(Kind.DONE, self.id, iteration=self.it))

    # -- failures ---------------------------------------------------------------------------
    def handle_deaths(self) -> None:
        """Turn degraded; restart own unfinished microbatches that touched a dead node."""
        self.degraded = True
        self.disp.planned = False
        dead = self.m.live.dead
        new, self.seen_dead = dead - self.seen_dead, set(dead)
        reporter = min(self.data_nodes - dead, default=None) == self.id  # logs losses once
        for mb, path in list(self.paths.items()):
            if path.origin in dead:
                self._forget(mb)
                del self.paths[mb]
                if reporter:
                    self.m.events.write(
                        "microbatch_lost", iteration=self.it, microbatch=mb, why="its data node died"
                    )
            elif path.origin == self.id and mb not in self.completed and self._crossed(mb, path, dead, new):
                self._restart(mb)
        if self.data_node and not self._own_unfinished():
            self._report_done()  # again: peers that just turned degraded wait for it

    def _crossed(self, mb: int, path, dead: set[int], new: set[int]) -> bool:
        """May `mb` have crossed a dead node? Its known path did, or (online) its forward was
        out when a node died: the part beyond this node's view may have. The origin sees the
        whole path with the first message back: the loss's input, or with the loss on the last
        hop, the backward's."""
        back = L(mb) if self.loss_at == "origin" else B(mb, 0)
        seen = back in self.disp.finished or back in self.disp.arrived or self.disp.running == back
        out = self.routes.online and F(mb, 0) in self.disp.finished and not seen
        return bool(set(path.nodes) & dead) or (out and bool(new))

    def _add(self, ops: list[Op]) -> None:
        """Operations this node was not planned for: beyond its slots when they join a plan
        (dispatch.py), within them under online routing."""
        self.disp.add(ops, beyond_slots=not self.routes.online)

    def _forget(self, mb: int) -> None:
        self.disp.forget(mb)
        self.compute.forget(mb)

    def _restart(self, mb: int) -> None:
        new = self.routes.restart_path(self.paths[mb], self.m.live.dead, self.allocation)
        self._forget(mb)
        if new is None:
            del self.paths[mb]
            self.m.events.write("microbatch_lost", iteration=self.it, microbatch=mb)
            return
        self.attempt[mb] += 1
        self.paths[mb] = new
        restarted = Restarted(self.it, mb, self.attempt[mb], tuple(new.nodes))
        self.m.events.write(restarted.name, **restarted.fields())
        self.m.tell_live(Restart(mb, self.attempt[mb], self.it))
        self._add([F(mb, 0)])
        self.disp.arrive(F(mb, 0), time.monotonic())

    # -- messages ---------------------------------------------------------------------------
    def take_messages(self, notices: list[Restart | Reroute]) -> None:
        """Move restart and reroute notices and this iteration's operation inputs into the
        dispatcher."""
        for notice in notices:
            if isinstance(notice, Reroute):  # routed around this node: stop waiting for it
                self.disp.forget(notice.reroute)
            elif notice.attempt > self.attempt.get(notice.restart, 0):
                self._forget(notice.restart)
                self.attempt[notice.restart] = notice.attempt
                self.degraded = True
        data = self.m.take(self.it, lambda msg: msg.kind in (Kind.FORWARD, Kind.BACKWARD))
        self.m.put_back(self.it, [msg for msg in data if not self._accept(msg)])
        self.routes.queue = len(self.disp.arrived)

    def _accept(self, msg: Message) -> bool:
        """Use a data message; False keeps it for later (a newer attempt not announced yet)."""
        mb, attempt = msg.microbatch, attempt_of(msg)
        if mb not in self.paths or attempt < self.attempt.get(mb, 0):
            return True  # a lost microbatch or a superseded attempt: drop it
        if attempt > self.attempt.get(mb, 0):
            return False
        path = path_of(msg, self.stages_of)
        self.paths[mb] = path
        op = op_of(msg, path)
        self.routes.observe(msg)
        if op.kind is OpKind.L and self.routes.rule is not None:  # the realized path, for the record
            routed = Routed(self.it, mb, attempt, tuple(path.nodes))
            self.m.events.write(routed.name, **routed.fields())
        # a forward this node was not planned for brings its backward: the node waits for it
        self._add([op, B(mb, op.hop)] if op.kind is OpKind.F else [op])
        self.compute.give(op, msg.to_torch())
        self.disp.arrive(op, time.monotonic())
        return True
