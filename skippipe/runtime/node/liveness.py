"""Which peers are alive: heartbeats, silence deadlines, closed connections and gossip.

Membership needs evidence. Every node sends a HEARTBEAT to each live peer every `interval_s`;
any message from a peer counts as a sign of life. A peer is declared dead only when

- it is silent for `timeout_s` (a hang, a crash, a partition), or
- its connection closed and its port then refuses connections: its process is gone (a live
  node's listening socket never refuses, however loaded the node is, so this is evidence from
  the node itself; on loopback a crash is seen in well under a second). A closed connection
  alone is no evidence: a network blip, or someone who introduced himself as the peer and
  hung up, closes one too, and then the port answers and nothing happens. Where the port
  neither answers nor refuses (a host gone from the network), reconnecting must fail for
  `probe_s`; or
- a peer of the run reports it dead (gossip) and it then stays silent here for `confirm_s`:
  a heartbeat from the accused clears the accusation, so a false report evicts nobody.

Each death this node declares itself is gossiped to every live peer, so that all nodes
converge on the same set quickly.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping

from ..net.transport import Transport, TransportError
from ..net.wire import Kind, Message
from .control import Dead, encode

log = logging.getLogger(__name__)

HEARTBEATS_PER_TIMEOUT = 4  # heartbeats sent within one silence deadline
CONFIRM_HEARTBEATS = 2  # an accused peer silent for this many heartbeat intervals is dead
CLOSE_GRACE_S = 0.2  # a peer's last messages ("finished") may still sit in the inbox at a close
REFUSALS = 3  # a closed peer whose port refuses this many connections in a row is gone
REFUSAL_PAUSE_S = 0.1  # between those connection attempts


class Liveness:
    def __init__(
        self,
        node_id: int,
        peers: Iterable[int] | Mapping[int, tuple[str, int]],
        transport: Transport,
        timeout_s: float,
        on_dead: Callable[[set[int], str], None],
    ):
        """`peers`: the run's nodes, or its peer table (node -> (host, port)): with addresses, a
        closed peer's port is asked whether it still listens."""
        self.id, self.peers, self.transport = node_id, [p for p in peers if p != node_id], transport
        self.addresses = dict(peers) if isinstance(peers, Mapping) else {}
        self.timeout_s = timeout_s
        self.interval_s = timeout_s / HEARTBEATS_PER_TIMEOUT
        self.confirm_s = CONFIRM_HEARTBEATS * self.interval_s  # how long an accused peer may be silent
        self.probe_s = self.interval_s  # how long reconnecting to a closed peer may take
        self.on_dead = on_dead
        self.dead: set[int] = set()
        self.finished: set[int] = set()  # peers that said they are done: silence is fine then
        self.accused: dict[int, tuple[float, int]] = {}  # peer -> (when, by whom) a death was reported
        now = time.monotonic()
        self.last_seen = {p: now for p in self.peers}
        self._task: asyncio.Task | None = None
        self._probing: set[int] = set()
        self._stopped = False

    def live_peers(self) -> list[int]:
        return [p for p in self.peers if p not in self.dead]

    def is_peer(self, node: int) -> bool:
        return node in self.last_seen

    def seen(self, peer: int) -> None:
        if self.is_peer(peer):
            self.last_seen[peer] = time.monotonic()

    def start(self) -> None:
        now = time.monotonic()
        self.last_seen = {p: now for p in self.peers}
        self._task = asyncio.create_task(self._beat())

    def stop(self) -> None:
        """No more heartbeats or verdicts (the run is over here, or a planned hang began)."""
        self._stopped = True
        if self._task is not None:
            self._task.cancel()

    async def _beat(self) -> None:
        while True:
            for p in self.live_peers():
                if p not in self.finished:
                    asyncio.create_task(self._send_quietly(p, Message(Kind.HEARTBEAT, self.id)))
            self.check()
            await asyncio.sleep(self.interval_s)

    async def _send_quietly(self, peer: int, msg: Message) -> bool:
        try:
            await self.transport.send(peer, msg, timeout_s=self.interval_s)
            return True
        except TransportError:
            return False  # silence is judged by what we receive, not by what we could send

    def check(self) -> None:
        """Declare dead every peer silent for longer than the deadline, and every accused peer
        silent since it was accused for `confirm_s`."""
        now = time.monotonic()
        silent = {
            p
            for p in self.live_peers()
            if p not in self.finished and now - self.last_seen[p] > self.timeout_s
        }
        if silent:
            self.declare(silent, f"silent for more than {self.timeout_s:g} s")
        for p, (when, by) in list(self.accused.items()):
            if self.last_seen[p] > when or p in self.dead or p in self.finished:
                del self.accused[p]  # it spoke since (or is settled otherwise): the report was wrong
            elif now - when > self.confirm_s:
                del self.accused[p]
                self.declare({p}, f"reported dead by node {by}, silent here since")

    def accuse(self, peers: set[int], by: int) -> None:
        """Gossip from peer `by`: `peers` are dead. Believed once they stay silent here."""
        if not self.is_peer(by):
            return
        now = time.monotonic()
        for p in set(peers) - self.dead - {self.id, by}:
            if self.is_peer(p) and p not in self.accused:
                self.accused[p] = (now, by)

    def revive(self, peer: int) -> None:
        """A restarted peer is planned in again."""
        self.dead.discard(peer)
        self.finished.discard(peer)
        self.accused.pop(peer, None)
        self.last_seen[peer] = time.monotonic()

    def closed(self, peer: int) -> None:
        """A connection to or from `peer` closed: find out by reconnecting whether it lives."""
        if self.is_peer(peer) and peer not in self._probing and not self._stopped:
            self._probing.add(peer)
            asyncio.get_running_loop().call_later(CLOSE_GRACE_S, self._start_probe, peer)

    def _start_probe(self, peer: int) -> None:
        task = asyncio.create_task(self._probe(peer))
        task.add_done_callback(lambda _: self._probing.discard(peer))

    async def _probe(self, peer: int) -> None:
        if peer in self.finished or peer in self.dead:
            return
        if await self._refused(peer):
            if peer not in self.finished and not self._stopped:
                self.declare({peer}, "connection closed and its port refuses connections")
            return
        try:  # the transport reconnects with backoff within the deadline
            await self.transport.send(peer, Message(Kind.HEARTBEAT, self.id), timeout_s=self.probe_s)
        except TransportError as e:
            if peer not in self.finished and not self._stopped:
                self.declare({peer}, f"connection closed and no reconnect within {self.probe_s:g} s ({e})")

    async def _refused(self, peer: int) -> bool:
        """Whether the peer's port refuses REFUSALS connections in a row (no listener: the
        process is gone). A port that answers, or neither answers nor refuses, is no evidence."""
        if peer not in self.addresses:
            return False
        host, port = self.addresses[peer]
        for attempt in range(REFUSALS):
            if attempt:
                await asyncio.sleep(REFUSAL_PAUSE_S)
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), self.interval_s)
            except ConnectionRefusedError:
                continue
            except (OSError, TimeoutError):
                return False
            writer.close()  # it listens: this connection was only a question
            return False
        return True

    def declare(self, peers: set[int], why: str) -> None:
        new = {p for p in peers if p != self.id} - self.dead
        if not new:
            return
        self.dead |= new
        log.warning("peer(s) %s declared dead: %s", sorted(new), why)
        for p in self.live_peers():
            asyncio.create_task(self._send_quietly(p, encode(Dead(tuple(sorted(self.dead))), self.id)))
        self.on_dead(new, why)
