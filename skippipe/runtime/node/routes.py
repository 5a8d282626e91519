"""One node's online routing in a run: routing.py's Router, driven by the routing step
(routing_step.py, which the simulator calls too) with what this node measures and hears, and
what travels in data messages for it.

The measurement: every node keeps the moving average of its own forward durations (scenario
seconds: wall time over the time scale, so a node slowed by failure injection reports slow) and
puts it, with the number of operations waiting at it, into every data message it sends (the
hop tag's bits above datamsg.HOP_BITS); receivers hand it to their routers. A peer's own op
time isolates that peer's speed, where a round trip from a send to the next message back would
fold in the whole rest of the path, and it costs no extra message. A swarm-skip microbatch's
stage set rides in the same tag, so whichever node holds the microbatch routes it within the set
its origin chose.

The live nodes of every stage are read from liveness at each choice: a peer seen dead is never
chosen (blacklisted) and comes back when it rejoins. An online microbatch that may have touched
a dead peer is restarted by its origin (iteration.py: attempt + 1, routed afresh); ca-repair
restarts on the plan's path with the dead hops replaced by a router draw. A ca-repair reroute
around a slow planned hop tells that hop (Reroute) so it stops waiting for the microbatch.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

from ...ops import Op, OpKind
from ...routing import Report, Router, origins_only, path_length
from ...routing_step import Spending, carried, received, restarted, route_forward, spendings
from ...scenario import Scenario
from ...schedule import MicrobatchPath, VariantSchedule
from ..net.wire import Message
from .control import Reroute
from .datamsg import HOP_BITS, TAG_HOP, onward
from .emulation import Emulation
from .membership import Membership
from .messenger import Messenger

SET_BITS, QUEUE_BITS, MICROS_BITS = 16, 8, 31  # report layout above the hop: set, queue, µs


class Routes:
    """A node's routing across iterations; inert for a variant without routing."""

    def __init__(
        self,
        node: int,
        variant: VariantSchedule,
        scenario: Scenario,
        members: Membership,
        messenger: Messenger,
        emulation: Emulation,
    ):
        self.id, self.members, self.m, self.emulation = node, members, messenger, emulation
        self.routing, self.loss_at = variant.routing, variant.loss_at
        self.rule = None if variant.routing is None else variant.routing.rule
        self.queue = 0  # operations waiting here (the iteration keeps it current)
        if self.rule is None:
            return
        k = path_length(self.rule, scenario)
        self.router = Router(node, variant.routing, scenario, k)
        self.own = spendings(variant.paths, len(members.allocation), k).get(node, Spending(Counter(), 0))
        self.spending = Spending(Counter(), 0)  # this iteration's, when this node is an origin

    @property
    def online(self) -> bool:
        """Routed from the origin on (no planned paths or action lists)."""
        return self.routing is not None and self.routing.online

    def begin_iteration(self, variant: VariantSchedule) -> VariantSchedule:
        """The variant as this iteration starts it: online, only the origins are known."""
        if self.rule is None:
            return variant
        self.router.begin_iteration()
        self.spending = Spending(Counter(self.own.budget), self.own.left)
        if not self.online:
            return variant
        return origins_only(variant)

    def live(self) -> list[list[int]]:
        dead = self.m.live.dead
        self.router.blacklist = set(dead)
        return [[n for n in nodes if n not in dead] for nodes in self.members.allocation]

    # -- measurements -------------------------------------------------------------------------
    def report(self, microbatch: int) -> int:
        """The routing bits of an outgoing data message (0 without routing)."""
        if self.rule is None:
            return 0
        report, stages = carried(self.router, microbatch, self.queue)
        mask = sum(1 << s for s in stages) & ((1 << SET_BITS) - 1)
        micros = min(round(report.forward_s * 1e6), (1 << MICROS_BITS) - 1)
        queue = min(report.queue, (1 << QUEUE_BITS) - 1)
        return mask | queue << SET_BITS | micros << (SET_BITS + QUEUE_BITS)

    def observe(self, msg: Message) -> None:
        """A data message arrived: its sender's report, and its microbatch's stage set."""
        bits = msg.tags[TAG_HOP] >> HOP_BITS
        if self.rule is None or not bits:
            return
        mask = bits & ((1 << SET_BITS) - 1)
        stages = frozenset(s for s in range(SET_BITS) if mask >> s & 1)
        queue = bits >> SET_BITS & ((1 << QUEUE_BITS) - 1)
        report = Report((bits >> (SET_BITS + QUEUE_BITS)) / 1e6, queue)
        received(self.router, msg.sender, msg.microbatch, report, stages)

    # -- choices ------------------------------------------------------------------------------
    def onward(self, it: int, path: MicrobatchPath, op: Op, out, attempt: int, wall_s: float):
        """datamsg.onward for `op`'s result (which ran `wall_s`), after routing: a forward's
        next hop is chosen now, and the message carries this node's report."""
        if self.rule is not None and op.kind is OpKind.F:
            path = self.route(it, path, op, self.emulation.scenario_s(wall_s))
        return onward(self.id, it, path, op, out, attempt, self.report(path.microbatch), self.loss_at)

    def route(self, it: int, path: MicrobatchPath, op: Op, forward_s: float) -> MicrobatchPath:
        """The path a forward's result (it ran `forward_s` scenario seconds) travels on, with
        the next hop chosen now (routing_step.py); a planned hop routed around is told so."""
        live = self.live()
        step = route_forward(
            self.router, path.microbatch, op.hop, path.hops, live, forward_s, self.spending, it
        )
        if step.avoided is not None and step.avoided.node in live[step.avoided.stage]:
            self.m.tell(step.avoided.node, Reroute(path.microbatch, it))
        for event in step.events:
            self.m.events.write(event.name, **event.fields())
        return dataclasses.replace(path, hops=step.hops)

    def restart_path(
        self, path: MicrobatchPath, dead: set[int], allocation: tuple[tuple[int, ...], ...]
    ) -> MicrobatchPath | None:
        """A restarted attempt's path (routing_step.restarted)."""
        return restarted(None if self.rule is None else self.router, path, dead, allocation)
