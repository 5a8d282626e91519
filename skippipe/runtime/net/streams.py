"""The stream layer of the transport: DecCom's `StreamProtocol` with its TCP wire format kept and
its faults fixed. Frames go between nodes here; what they mean is the `Transport`'s business,
reached only through `StreamHooks`.

Wire format: a connection opens with the authenticated handshake of `auth` (run id, node keys,
HMAC challenge–response both ways), then every frame is DecCom's 32-byte big-endian length
followed by the bytes. Kept from DecCom: the connection table (`connections`/`DictItem`/`locks`)
and the stack bindings (`get_peer`, `find_peer`, peer connected/disconnected callbacks). A stock
DecCom peer cannot talk to us any more: it holds no run key.

What is replaced, and why (faults of deccom 0.1.0 found by reading its source and measuring):
- Identity: DecCom's introduction is a constant plus SHA-256 of the node id, so anyone who can
  reach a port can pose as any node. We authenticate (auth.py), refuse other runs, and close a
  connection that has not authenticated within `handshake_timeout_s`; before that it gets only
  the challenge and at most 64 KiB of its bytes are held (`max_unauthenticated` such
  connections at a time). A frame's sender must be the authenticated node of its connection.
- Nagle stall: DecCom creates its sockets itself with proto 0, so asyncio's automatic
  TCP_NODELAY is skipped, and `send_stream` writes the length and the data in two writes with a
  drain between: a 64 B round trip took ~88 ms. We set TCP_NODELAY on every connection.
- `open_connection` calls a blocking `socket.connect` on the event loop, binds outgoing sockets
  to the listening port with SO_REUSEPORT, and on refusal leaves a finished future in
  `await_connections` so the node can never connect to that peer again. We connect without
  blocking from an ephemeral port, retry with backoff until the send deadline, and keep no
  stale state.
- `handle_connection` deduplicates connections per peer and closes one side of simultaneous
  opens, discarding frames already written on it. We read every connection until it ends and
  send only on connections we opened, so no frame is dropped by deduplication.
- `listen_for_data` accepts any length (up to 2**256), reads in 9 KB slices and runs the callback
  through `run_coroutine_threadsafe`. We receive frames with `connection.FrameConnection`
  (lengths above `max_frame_bytes` close the connection before any allocation; large frames go
  straight from the kernel into their own buffer).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

from deccom.peers.peer import Peer
from deccom.protocols.streamprotocol import DictItem, StreamProtocol
from deccom.protocols.wrappers import bindto

from .auth import CHALLENGE_BYTES, HELLO_BYTES, PROOF_BYTES, AuthError, RunAuth
from .connection import BufferPool, FrameConnection, length_prefix
from .deccom_adapter import node_id_of
from .frames import TransportConfig

DISCOVERY_POLL_S = 0.2  # how often a pending discovery lookup re-checks the peer table
KEY_HEX_SHOWN = 16  # hex digits of a node key shown in log lines
DICT_ITEM_ID_BYTES = 4  # DecCom DictItem.unique_id size


class UnknownNode(AuthError):
    """A handshake naming a node key that is not a peer of this run."""


@dataclass(frozen=True)
class StreamHooks:
    """What the stream layer tells its owner (the Transport); its only way to reach it."""

    deliver: Callable[[int, bytes | bytearray], None]  # (node, frame) read from node's connection
    reject: Callable[[str, str], None]  # (reason, detail) of a refused connection or frame
    closed: Callable[[int], None]  # an authenticated connection of `node` ended
    connect_failed: Callable[[int, str], None]  # (node, why) an attempt to connect failed


class Streams(StreamProtocol):
    """DecCom StreamProtocol with authenticated, non-blocking connections, bounded framing and
    rejection of unknown senders. Connections we open live in DecCom's `connections` table
    and carry our sends; every authenticated connection, either direction, is read until it
    ends."""

    def __init__(
        self,
        node_id: int,
        static: bool,
        config: TransportConfig,
        auth: RunAuth,
        log: logging.LoggerAdapter,
        hooks: StreamHooks,
    ) -> None:
        super().__init__(
            False,
            callback=_ignore,
            disconnected_callback=_ignore,
            connected_callback=_ignore,
            stream_callback=_ignore,
            stream_close_callback=_ignore,
        )
        self.node_id, self.config, self.auth, self.log, self.hooks = node_id, config, auth, log, hooks
        self.static = static  # a fixed peer table: unknown node keys are not looked up
        self.tasks: set[asyncio.Task] = set()
        self.conns: set[FrameConnection] = set()
        self.unauthenticated: set[FrameConnection] = set()
        self.lookups: dict[bytes, asyncio.Task] = {}
        self.pool = BufferPool()  # large frames' buffers, shared by this node's connections

    @bindto("find_peer")
    async def _lower_find_peer(self, id_node: bytes) -> Peer | None:
        return None

    def spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def new_connection(self, node: int | None = None) -> FrameConnection:
        """A connection object (protocol); node None: an inbound one, still anonymous (its
        node is known, and named in errors, once it authenticates)."""

        def too_large(n: int) -> None:
            self.hooks.reject(
                "bad_length",
                f"frame of {n} bytes from node {conn.peer_node} "
                f"exceeds {self.config.max_frame_bytes}: connection closed",
            )

        conn = FrameConnection(self.config.max_frame_bytes, too_large, self.pool)
        conn.peer_node = node
        self.conns.add(conn)
        return conn

    # -- inbound ------------------------------------------------------------------------------
    def inbound(self) -> FrameConnection:
        """Protocol factory of the listening socket."""
        conn = self.new_connection()
        conn.on_made = lambda c: self.spawn(self.accept(c))
        conn.on_lost = lambda: self.conns.discard(conn)
        return conn

    async def accept(self, conn: FrameConnection) -> None:
        """Authenticate one inbound connection within the deadline, then read its frames."""
        addr = conn.transport.get_extra_info("peername")
        if len(self.unauthenticated) >= self.config.max_unauthenticated:
            self.hooks.reject(
                "busy",
                f"connection from {addr}: {len(self.unauthenticated)} others still authenticating: closed",
            )
            return conn.abort()
        self.unauthenticated.add(conn)
        try:
            async with asyncio.timeout(self.config.handshake_timeout_s):
                node = await self.authenticate(conn)
        except TimeoutError:
            return self.refuse(
                conn,
                "bad_handshake",
                f"connection from {addr} did not authenticate within {self.config.handshake_timeout_s:g} s",
            )
        except UnknownNode as e:
            return self.refuse(conn, "unknown_sender", f"connection from {addr}: {e}")
        except AuthError as e:
            return self.refuse(conn, "unauthenticated", f"connection from {addr}: {e}")
        except ConnectionError:
            return self.refuse(conn, "bad_handshake", f"connection from {addr} ended during the handshake")
        finally:
            self.unauthenticated.discard(conn)
        self.log.debug("authenticated connection from node %d at %s", node, addr)
        self.start_frames(conn, node, None)

    async def authenticate(self, conn: FrameConnection) -> int:
        """The node an inbound connection proves to be (acceptor side of auth.py)."""
        key, nonce = self.auth.parse_hello(await conn.read_fixed(HELLO_BYTES))
        node = node_id_of(await self.resolve(key))
        if node is None or node == self.node_id:
            raise UnknownNode(f"unknown node key {key.hex()[:KEY_HEX_SHOWN]}...")
        challenge, transcript = self.auth.challenge(self.peer.id_node, key, nonce)
        conn.write(challenge)
        self.auth.check_proof(await conn.read_fixed(PROOF_BYTES), transcript)
        return node

    def refuse(self, conn: FrameConnection, reason: str, detail: str) -> None:
        self.hooks.reject(reason, f"{detail}: closed")
        conn.abort()

    def start_frames(self, conn: FrameConnection, node: int, item: DictItem | None) -> None:
        """An authenticated connection of `node`: its frames go to hooks.deliver."""

        def lost() -> None:
            self.conns.discard(conn)
            self.forget(item)
            self.hooks.closed(node)

        conn.on_lost = lost
        conn.peer_node = node
        if conn.lost.done():  # ended during the handshake's last step
            return lost()
        conn.start_frames(lambda frame: self.hooks.deliver(node, frame))

    async def resolve(self, key: bytes) -> Peer | None:
        """The peer of a node key: from the table, or (discovery) looked up within the
        handshake deadline (the caller's)."""
        peer = self.get_peer(key)
        if peer is not None or self.static:
            return peer
        return await self.discover(key)

    def discovery_met_anyone(self) -> bool:
        """Whether discovery (the layer below) has met at least one other node."""
        return bool(self.submodule is not None and self.submodule.peers)

    async def discover(self, key: bytes) -> Peer:
        """Wait until discovery knows `key`; DecCom lookups run shielded and are never
        cancelled (a cancelled Kademlia lookup breaks later ones)."""
        while (peer := self.get_peer(key)) is None:
            task = self.lookups.get(key)
            if not self.discovery_met_anyone():
                await asyncio.sleep(DISCOVERY_POLL_S)  # a lookup started now would find no one
                continue
            if task is None or task.done():
                task = self.lookups[key] = self.spawn(self._lower_find_peer(key))
            await asyncio.wait({task}, timeout=DISCOVERY_POLL_S)
        return peer

    def forget(self, item: DictItem | None) -> None:
        """Drop a connection we opened from the table (it ended)."""
        for key, value in list(self.connections.items()):
            if value is item:
                del self.connections[key]

    # -- outbound -----------------------------------------------------------------------------
    async def writer_for(self, key: bytes, node: int) -> FrameConnection | None:
        """A live, authenticated connection we opened to `node`, connecting (with retries) if
        needed; None when `node` is not in the static peer table. No timeout here: the
        caller's deadline bounds it. Callers write right after this returns, with no await in
        between, so frames leave in the order `send` was called."""
        async with self.locks.setdefault(key, asyncio.Lock()):  # FIFO: keeps sends in order
            item = self.connections.get(key)
            if item is not None and not item.writer.is_closing():
                return item.writer
            peer = self.get_peer(key)
            if peer is None and self.static:
                return None
            if peer is None:
                peer = await self.discover(key)
            return await self.connect_with_retry(key, node, peer)

    async def connect_with_retry(self, key: bytes, node: int, peer: Peer) -> FrameConnection:
        cfg = self.config
        pause = cfg.connect_backoff_s
        while True:
            try:
                return await self.connect(key, node, peer)
            except (OSError, AuthError) as e:  # refused / unreachable: the peer may not be up yet
                why = os.strerror(e.errno) if isinstance(e, OSError) and e.errno else str(e)
                self.hooks.connect_failed(node, why or type(e).__name__)
                await asyncio.sleep(pause)
                pause = min(2 * pause, cfg.connect_backoff_max_s)

    async def connect(self, key: bytes, node: int, peer: Peer) -> FrameConnection:
        """One non-blocking connection attempt and the connector's side of the handshake."""
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: self.new_connection(node), peer.addr[0], peer.tcp)
        try:
            async with asyncio.timeout(self.config.handshake_timeout_s):
                hello, nonce = self.auth.hello(self.peer.id_node)
                conn.write(hello)
                challenge = await conn.read_fixed(CHALLENGE_BYTES)
                conn.write(self.auth.answer(challenge, self.peer.id_node, key, nonce))
        except BaseException:
            conn.abort()
            self.conns.discard(conn)
            raise
        item = DictItem(None, conn, None, 1)
        item.unique_id = os.urandom(DICT_ITEM_ID_BYTES)
        self.connections[key] = item
        self.start_frames(conn, node, item)
        self.log.debug("connected to node %d at %s:%d", node, peer.addr[0], peer.tcp)
        return conn

    def drop(self, key: bytes) -> None:
        """Abort our connection to a peer (after a failed or timed-out send)."""
        item = self.connections.pop(key, None)
        if item is not None:
            item.writer.abort()

    # -- DecCom entry points, kept working for other DecCom layers ----------------------------
    async def open_connection(self, remote_ip, remote_port, node_id: bytes, port_listen=None):
        peer = self.get_peer(node_id)
        node = node_id_of(peer)
        if node is None or remote_port is None:
            return False
        try:
            await self.connect(
                node_id, node, Peer((remote_ip, remote_port), pub_key=str(node), tcp=remote_port)
            )
        except (OSError, AuthError):
            return False
        return True

    async def send_stream(self, node_id: bytes, data, lvl=0):
        item = self.connections.get(node_id)
        if item is None or item.writer.is_closing():
            return False
        item.writer.write(length_prefix(len(data)) + bytes(data))
        await item.writer.drain()
        return True

    async def stop(self):
        """Flush and close every connection (aborting those that do not finish within
        stop_timeout_s), then end the handshake and lookup tasks."""
        timeout = self.config.stop_timeout_s
        conns = list(self.conns)
        for conn in conns:
            conn.close()
        pending = [c.lost for c in conns if not c.lost.done()]
        if pending:
            await asyncio.wait(pending, timeout=timeout)
        for conn in conns:
            conn.abort()  # no-op for those already closed
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=timeout)
        self.connections.clear()
        self.conns.clear()
        return await super().stop()


def _ignore(*args, **kwargs) -> None:
    return None
