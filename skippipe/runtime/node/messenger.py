"""A node's messaging seam, shared by its iteration loop, its averager and its rejoin logic.

Receiving: one task reads the transport, counts every message as a sign of life, decodes
CONTROL messages (control.py; a malformed one, or one from a node outside the run, is logged
and dropped) and routes each message:
to a handler registered for its kind, to `late` (data of an iteration this node already
finished), or to the inbox of its iteration. Sending: data and control messages leave through
the emulated links (emulation.py) as background tasks; a send whose connection breaks is
retried (the transport reconnects) until the peer timeout, and only then declares its peer dead.
`wait` sleeps until something arrives or the deadline passes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from ..net.transport import Transport, TransportError
from ..net.wire import Kind, Message
from . import control
from .emulation import Emulation
from .liveness import Liveness
from .runconfig import EventWriter

log = logging.getLogger(__name__)

DATA_KINDS = (Kind.FORWARD, Kind.BACKWARD)
HELLO_RETRY_S = 0.1  # pause between start-up greetings while peers come up
STALL_FACTOR = 3  # no progress for this many peer timeouts: give up (a bug, not a failure)


class NodeFailure(Exception):
    """This node cannot go on."""


class Messenger:
    def __init__(
        self,
        node_id: int,
        transport: Transport,
        live: Liveness,
        events: EventWriter,
        emulation: Emulation,
        peer_timeout_s: float,
    ):
        self.id, self.transport, self.live, self.events = node_id, transport, live, events
        self.emulation, self.peer_timeout_s = emulation, peer_timeout_s
        self.links = emulation.link_emulator()
        self.n_nodes = len(live.peers) + 1  # node ids are 0..n_nodes-1
        self.inbox: dict[int, list[Message]] = {}  # iteration -> messages not yet used
        self.late: list[Message] = []  # data of iterations this node already finished
        self.iteration_now = 0  # data of earlier iterations goes to `late`
        self.handlers: dict[Kind, Callable[[Message], None]] = {}
        self.on_control: Callable[[control.Control, int], None] = lambda ctrl, sender: None
        self.stopping: Callable[[], None] = lambda: None  # raises once this node must stop (quorum.py)
        self._wake = asyncio.Event()
        self._sends: set[asyncio.Task] = set()

    # -- receiving --------------------------------------------------------------------------
    async def receive_forever(self) -> None:
        while True:
            msg = await self.transport.recv()
            if not self.live.is_peer(msg.sender) and msg.sender != self.id:
                log.warning("rejected: message from node %d, not a node of this run", msg.sender)
                continue
            self.live.seen(msg.sender)
            self.route(msg)
            self._wake.set()

    def route(self, msg: Message) -> None:
        if msg.kind == Kind.CONTROL:
            try:
                ctrl = control.decode(msg, self.n_nodes)
            except control.ControlError as e:
                log.warning("rejected: %s", e)  # one bad peer message must not stop this node
                return
            self.on_control(ctrl, msg.sender)
        elif msg.kind in self.handlers:
            self.handlers[msg.kind](msg)
        elif msg.kind in DATA_KINDS and msg.iteration < self.iteration_now:
            self.late.append(msg)
        elif msg.kind != Kind.HEARTBEAT:
            self.inbox.setdefault(msg.iteration, []).append(msg)

    def take(self, it: int, want: Callable[[Message], bool]) -> list[Message]:
        """Remove and return iteration `it`'s messages that `want` accepts, in arrival order."""
        got, rest = [], []
        for msg in self.inbox.pop(it, []):
            (got if want(msg) else rest).append(msg)
        if rest:
            self.inbox[it] = rest + self.inbox.get(it, [])
        return got

    def close_iteration(self, it: int) -> None:
        """Iteration `it` is over here: its data still to come, or unused, is late from now."""
        self.iteration_now = it + 1
        self.late += [m for m in self.inbox.pop(it, []) if m.kind in DATA_KINDS]

    def put_back(self, it: int, msgs: list[Message]) -> None:
        if msgs:
            self.inbox[it] = msgs + self.inbox.get(it, [])

    def wake(self) -> None:
        self._wake.set()

    async def wait(self, timeout_s: float) -> None:
        """Until a message arrives, `wake` is called, or `timeout_s` passes; then raises if this
        node must stop (every wait of a node goes through here: wait_for may swallow the
        cancellation that stops it when a message arrives in the same instant)."""
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), max(0.0, timeout_s))
        except TimeoutError:
            pass
        self.stopping()

    # -- sending ----------------------------------------------------------------------------
    def send(self, dst: int, msg: Message, nominal_bytes: int | None = None) -> None:
        """Send in the background to a live peer; `nominal_bytes` (the scenario's message size)
        makes it a data message that waits on the emulated link and is logged. A message to
        this node itself (the next hop of a V path on the same node) is handed over at once, as
        in the simulator: no wire, no link."""
        if dst == self.id:
            self.route(msg)
            self._wake.set()
            return
        task = asyncio.create_task(self._send(dst, msg, nominal_bytes))
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    def tell(self, dst: int, ctrl: control.Control) -> None:
        self.send(dst, control.encode(ctrl, self.id))

    def tell_live(self, ctrl: control.Control, *, skip: frozenset[int] = frozenset()) -> None:
        for n in self.live.live_peers():
            if n not in skip:
                self.tell(n, ctrl)

    async def tell_direct(self, dst: int, ctrl: control.Control) -> None:
        """A control message that ignores the dead set (to or about a rejoining node)."""
        await self.send_direct(dst, control.encode(ctrl, self.id))

    async def greet_all(self, peers, greeted: set[int], timeout_s: float) -> int:
        """Start-up barrier: greet every peer until it answers (its Hello lands in `greeted`),
        within `timeout_s`. Returns the first iteration to run (0)."""
        deadline = time.monotonic() + timeout_s
        others = set(peers) - {self.id}
        unsent = set(others)
        while unsent or others - greeted:
            for n in sorted(unsent):
                try:
                    await self.transport.send(
                        n,
                        control.encode(control.Hello(), self.id),
                        timeout_s=max(0.1, deadline - time.monotonic()),
                    )
                    unsent.discard(n)
                except TransportError:
                    pass
            if time.monotonic() > deadline:
                raise NodeFailure(
                    f"peers {sorted(unsent | (others - greeted))} did not come up within {timeout_s:g} s"
                )
            await self.wait(HELLO_RETRY_S)
        return 0

    async def send_direct(self, dst: int, msg: Message) -> None:
        try:
            await self.transport.send(dst, msg, timeout_s=self.peer_timeout_s)
        except TransportError as e:
            log.warning("message to node %d failed: %s", dst, e)

    async def _send(self, dst: int, msg: Message, nominal_bytes: int | None) -> None:
        if dst in self.live.dead:
            return
        t = self.events.now()
        if self.links is not None and nominal_bytes is not None:
            async with self.links.transmit(dst, self.emulation.link_bytes(nominal_bytes)):
                sent = await self._send_retrying(dst, msg)
        else:
            sent = await self._send_retrying(dst, msg)
        if sent and nominal_bytes is not None:
            self.events.write(
                "send",
                t=t,
                dst=dst,
                microbatch=msg.microbatch,
                bytes=nominal_bytes,
                arrive=self.events.now(),
                iteration=msg.iteration,
            )

    async def _send_retrying(self, dst: int, msg: Message) -> bool:
        """Send, reconnecting after a broken connection, until the peer timeout: a peer we
        cannot reach for that long is dead. Returns whether the message left."""
        deadline = time.monotonic() + self.peer_timeout_s
        while True:
            try:
                await self.transport.send(dst, msg, timeout_s=max(0.0, deadline - time.monotonic()))
                return True
            except TransportError as e:
                if time.monotonic() >= deadline or dst in self.live.dead:
                    self.live.declare({dst}, f"unreachable for {self.peer_timeout_s:g} s: {e}")
                    return False
                log.info("message to node %d: %s; reconnecting", dst, e)
                await asyncio.sleep(min(self.live.interval_s, max(0.0, deadline - time.monotonic())))

    async def drain(self) -> None:
        """Wait for every background send to end."""
        if self._sends:
            await asyncio.gather(*self._sends, return_exceptions=True)
