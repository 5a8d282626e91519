"""The stream layer of the transport: DecCom's `StreamProtocol` with its TCP wire format kept and
its faults fixed. Frames go between nodes here; what they mean is the `Transport`'s business,
reached only through `StreamHooks`.

Wire format (DecCom's, so a stock DecCom peer can exchange frames with us, over one connection:
it closes a second one, see deduplication below): a connection opens with the 36-byte
introduction INTRO_MAGIC + node key, and every frame is a 32-byte big-endian length followed by
the bytes. Kept from DecCom: the connection table (`connections`/`DictItem`/`locks`) and the
stack bindings (`get_peer`, `find_peer`, peer connected/disconnected callbacks).

What is replaced, and why (faults of deccom 0.1.0 found by reading its source and measuring):
- Nagle stall: DecCom creates its sockets itself with proto 0, so asyncio's automatic
  TCP_NODELAY (only for proto == IPPROTO_TCP) is skipped, and `send_stream` writes the length and
  the data in two writes with a drain between: a 64 B round trip takes ~88 ms. We set TCP_NODELAY
  on every connection, and the transport writes each frame (length + header + payload) in one
  write.
- `open_connection` calls a blocking `socket.connect` on the event loop, binds outgoing sockets
  to the listening port with SO_REUSEPORT, and on refusal leaves a finished future in
  `await_connections` so the node can never connect to that peer again (on timeout it even raises
  TypeError and leaves the future pending forever). We connect with `asyncio.open_connection`
  from an ephemeral port, retry with backoff until the send deadline, and keep no stale state.
- `handle_connection` deduplicates connections per peer and closes one side of simultaneous
  opens, discarding frames already written on it. We read every connection until it ends and
  send only on connections we opened, so no frame is dropped by deduplication.
- `listen_for_data` accepts any length (up to 2**256), reads in 9 KB slices, runs the callback
  through `run_coroutine_threadsafe`, and its error handler refers to an undefined `log`. We read
  one frame at a time (large ones in 1 MiB slices into one buffer: `readexactly` of a 16 MiB
  frame halves throughput), reject lengths above `max_frame_bytes` (closing that connection),
  and close connections introduced by unknown node keys; the hooks reject frames that do not
  decode or whose sender differs from the connection's node.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Awaitable, Callable

from deccom.peers.peer import Peer
from deccom.protocols.streamprotocol import DictItem, StreamProtocol
from deccom.protocols.wrappers import bindto

from .deccom_adapter import node_id_of

if TYPE_CHECKING:
    from .transport import TransportConfig

INTRO_MAGIC = b"\xe4\xe5\xf3\xc6"  # DecCom StreamProtocol: first bytes of a connection
NODE_KEY_BYTES = 32  # SHA-256 node key that follows the magic
LENGTH_BYTES = 32  # DecCom frame prefix: big-endian frame length
READ_SLICE_BYTES = 1024**2  # frames above this are read in slices of this size (see read_exactly)
DISCOVERY_POLL_S = 0.2  # how often a pending discovery lookup re-checks the peer table
KEY_HEX_SHOWN = 16  # hex digits of a node key shown in log lines
DICT_ITEM_ID_BYTES = 4  # DecCom DictItem.unique_id size


def length_prefix(n: int) -> bytes:
    """The DecCom frame prefix of an `n`-byte frame."""
    return n.to_bytes(LENGTH_BYTES, "big")


@dataclass(frozen=True)
class StreamHooks:
    """What the stream layer tells its owner (the Transport); its only way to reach it."""

    deliver: Callable[[int, bytes], Awaitable[None]]  # (node, frame) read from node's connection
    reject: Callable[[str, str], None]  # (reason, detail) of a refused connection or frame
    closed: Callable[[int], None]  # a connection of `node` ended
    connect_failed: Callable[[int, str], None]  # (node, why) an attempt to connect failed


class Streams(StreamProtocol):
    """DecCom StreamProtocol with non-blocking connects, one write per frame, bounded framing
    and rejection of unknown senders. Connections we open live in DecCom's `connections` table
    and carry our sends; every connection, either direction, is read until it ends."""

    def __init__(self, node_id: int, static: bool, config: TransportConfig,
                 log: logging.LoggerAdapter, hooks: StreamHooks) -> None:
        super().__init__(False, callback=_ignore, disconnected_callback=_ignore,
                         connected_callback=_ignore, stream_callback=_ignore,
                         stream_close_callback=_ignore)
        self.node_id, self.config, self.log, self.hooks = node_id, config, log, hooks
        self.static = static  # a fixed peer table: unknown node keys are not looked up
        self.tasks: set[asyncio.Task] = set()
        self.writers: set[asyncio.StreamWriter] = set()
        self.lookups: dict[bytes, asyncio.Task] = {}

    @bindto("find_peer")
    async def _lower_find_peer(self, id_node: bytes) -> Peer | None:
        return None

    def spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    # -- inbound ------------------------------------------------------------------------------
    async def handle_connection(self, reader, writer, node_id=None, addr=None):
        """Accept one inbound connection: read the introduction, check the node, read frames."""
        _set_nodelay(writer)
        self.writers.add(writer)
        task = asyncio.current_task()
        self.tasks.add(task)
        try:
            await self.accept(reader, writer)
        except asyncio.CancelledError:
            pass  # stop(): end quietly (asyncio 3.11 logs a server callback task as an error
            # when it ends cancelled)
        finally:
            self.tasks.discard(task)

    async def accept(self, reader, writer) -> None:
        addr = writer.get_extra_info("peername")
        try:
            intro = await asyncio.wait_for(reader.readexactly(len(INTRO_MAGIC) + NODE_KEY_BYTES),
                                           self.config.handshake_timeout_s)
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            self.hooks.reject("bad_handshake", f"connection from {addr} sent no introduction")
            return self.forget(writer)
        if intro[:len(INTRO_MAGIC)] != INTRO_MAGIC:
            self.hooks.reject("bad_handshake", f"connection from {addr}: wrong introduction")
            return self.forget(writer)
        key = intro[len(INTRO_MAGIC):]
        node = node_id_of(await self.resolve(key))
        if node is None or node == self.node_id:
            self.hooks.reject("unknown_sender", f"connection from {addr} with unknown node "
                              f"key {key.hex()[:KEY_HEX_SHOWN]}...: closed")
            return self.forget(writer)
        self.log.debug("connection from node %d at %s", node, addr)
        await self.read_frames(reader, writer, node, None)

    async def resolve(self, key: bytes) -> Peer | None:
        """The peer of a node key: from the table, or (discovery) looked up within the
        handshake deadline."""
        peer = self.get_peer(key)
        if peer is not None or self.static:
            return peer
        try:
            return await asyncio.wait_for(self.discover(key), self.config.handshake_timeout_s)
        except asyncio.TimeoutError:
            return None

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

    async def read_frames(self, reader, writer, node: int, item: DictItem | None) -> None:
        """Read length-prefixed frames until the connection ends; hand each to hooks.deliver."""
        limit = self.config.max_frame_bytes
        try:
            while True:
                length = int.from_bytes(await reader.readexactly(LENGTH_BYTES), "big")
                if length > limit:
                    self.hooks.reject("bad_length", f"frame of {length} bytes from node "
                                      f"{node} exceeds {limit}: connection closed")
                    return
                await self.hooks.deliver(node, await read_exactly(reader, length))
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass  # the peer closed or reset the connection
        finally:
            self.forget(writer, item)
            self.hooks.closed(node)

    def forget(self, writer: asyncio.StreamWriter, item: DictItem | None = None) -> None:
        """Close a connection and drop it from the tables."""
        writer.close()
        self.writers.discard(writer)
        for key, value in list(self.connections.items()):
            if value is item:
                del self.connections[key]

    # -- outbound -----------------------------------------------------------------------------
    async def writer_for(self, key: bytes, node: int) -> asyncio.StreamWriter | None:
        """A live connection we opened to `node`, connecting (with retries) if needed; None
        when `node` is not in the static peer table. No timeout here: the caller's deadline
        bounds it. Callers write right after this returns, with no await in between, so frames
        leave in the order `send` was called."""
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

    async def connect_with_retry(self, key: bytes, node: int, peer: Peer) -> asyncio.StreamWriter:
        cfg = self.config
        pause = cfg.connect_backoff_s
        while True:
            try:
                return await self.connect(key, node, peer)
            except OSError as e:  # refused / unreachable: the peer may not be up yet
                self.hooks.connect_failed(node, os.strerror(e.errno) if e.errno else str(e))
                await asyncio.sleep(pause)
                pause = min(2 * pause, cfg.connect_backoff_max_s)

    async def connect(self, key: bytes, node: int, peer: Peer) -> asyncio.StreamWriter:
        """One non-blocking connection attempt; introduces us in one write."""
        reader, writer = await asyncio.open_connection(
            peer.addr[0], peer.tcp, limit=self.config.stream_limit_bytes)
        _set_nodelay(writer)
        writer.write(INTRO_MAGIC + self.peer.id_node)
        item = DictItem(reader, writer, None, 1)
        item.unique_id = os.urandom(DICT_ITEM_ID_BYTES)
        self.connections[key] = item
        self.writers.add(writer)
        item.fut = self.spawn(self.read_frames(reader, writer, node, item))
        self.log.debug("connected to node %d at %s:%d", node, peer.addr[0], peer.tcp)
        return writer

    def drop(self, key: bytes) -> None:
        """Abort our connection to a peer (after a failed or timed-out send)."""
        item = self.connections.pop(key, None)
        if item is not None:
            item.writer.transport.abort()

    # -- DecCom entry points, kept working for other DecCom layers ----------------------------
    async def open_connection(self, remote_ip, remote_port, node_id: bytes, port_listen=None):
        peer = self.get_peer(node_id)
        node = node_id_of(peer)
        if node is None or remote_port is None:
            return False
        try:
            await self.connect(node_id, node, Peer((remote_ip, remote_port), pub_key=str(node),
                                                   tcp=remote_port))
        except OSError:
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
        stop_timeout_s), then end the reading tasks."""
        timeout = self.config.stop_timeout_s
        writers = list(self.writers)
        for writer in writers:
            writer.close()
        if writers:
            await asyncio.wait([asyncio.ensure_future(_closed(w)) for w in writers],
                               timeout=timeout)
        for writer in writers:
            writer.transport.abort()  # no-op for those already closed
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=timeout)
        self.connections.clear()
        self.writers.clear()
        return await super().stop()


async def _closed(writer: asyncio.StreamWriter) -> None:
    try:
        await writer.wait_closed()
    except (ConnectionError, OSError):
        pass  # closed with an error is closed


async def read_exactly(reader: asyncio.StreamReader, n: int) -> bytes | bytearray:
    """`n` bytes from `reader`. Large frames are gathered in slices into one preallocated
    buffer: `readexactly` would grow the stream buffer to the whole frame and copy it again,
    which halves loopback throughput for 16 MiB frames."""
    if n <= READ_SLICE_BYTES:
        return await reader.readexactly(n)
    buf = bytearray(n)
    view, pos = memoryview(buf), 0
    while pos < n:
        piece = await reader.read(min(n - pos, READ_SLICE_BYTES))
        if not piece:
            raise asyncio.IncompleteReadError(b"", n)
        view[pos:pos + len(piece)] = piece
        pos += len(piece)
    return buf


def _ignore(*args, **kwargs) -> None:
    return None


def _set_nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


