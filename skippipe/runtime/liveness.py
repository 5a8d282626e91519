"""Which peers are alive: heartbeats, silence deadlines, closed connections and gossip.

Every node sends a HEARTBEAT to each live peer every `interval_s`; any message from a peer
counts as a sign of life. A peer silent for `timeout_s` (a hang), or whose connection closes
before it said it finished (a crash), is declared dead, and the news is gossiped to every live
peer so all nodes converge on the same set quickly.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from .control import Dead, encode
from .transport import Transport, TransportError
from .wire import Kind, Message

log = logging.getLogger(__name__)

HEARTBEATS_PER_TIMEOUT = 4  # heartbeats sent within one silence deadline


class Liveness:
    def __init__(self, node_id: int, peers: list[int], transport: Transport, timeout_s: float,
                 on_dead: Callable[[set[int], str], None]):
        self.id, self.peers, self.transport = node_id, [p for p in peers if p != node_id], transport
        self.timeout_s = timeout_s
        self.interval_s = timeout_s / HEARTBEATS_PER_TIMEOUT
        self.on_dead = on_dead
        self.dead: set[int] = set()
        self.finished: set[int] = set()  # peers that said they are done: silence is fine then
        now = time.monotonic()
        self.last_seen = {p: now for p in self.peers}
        self._task: asyncio.Task | None = None

    def live_peers(self) -> list[int]:
        return [p for p in self.peers if p not in self.dead]

    def seen(self, peer: int) -> None:
        self.last_seen[peer] = time.monotonic()

    def start(self) -> None:
        now = time.monotonic()
        self.last_seen = {p: now for p in self.peers}
        self._task = asyncio.create_task(self._beat())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _beat(self) -> None:
        while True:
            for p in self.live_peers():
                if p not in self.finished:
                    asyncio.create_task(self._send_quietly(p, Message(Kind.HEARTBEAT, self.id)))
            self.check()
            await asyncio.sleep(self.interval_s)

    async def _send_quietly(self, peer: int, msg: Message) -> None:
        try:
            await self.transport.send(peer, msg, timeout_s=self.interval_s)
        except TransportError:
            pass  # silence is judged by what we receive, not by what we could send

    def check(self) -> None:
        """Declare dead every peer silent for longer than the deadline."""
        now = time.monotonic()
        silent = {p for p in self.live_peers()
                  if p not in self.finished and now - self.last_seen[p] > self.timeout_s}
        if silent:
            self.declare(silent, f"silent for more than {self.timeout_s:g} s")

    def revive(self, peer: int) -> None:
        """A restarted peer is planned in again."""
        self.dead.discard(peer)
        self.finished.discard(peer)
        self.last_seen[peer] = time.monotonic()

    def closed(self, peer: int) -> None:
        if peer not in self.finished and peer not in self.dead:
            self.declare({peer}, "connection closed")

    def declare(self, peers: set[int], why: str) -> None:
        new = {p for p in peers if p != self.id} - self.dead
        if not new:
            return
        self.dead |= new
        log.warning("peer(s) %s declared dead: %s", sorted(new), why)
        for p in self.live_peers():
            asyncio.create_task(self._send_quietly(p, encode(Dead(tuple(sorted(self.dead))), self.id)))
        self.on_dead(new, why)
