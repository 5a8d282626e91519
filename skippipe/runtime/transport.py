"""Transport: reliable, framed TCP streams between SkipPipe nodes, built on DecCom 0.1.0.

What comes from DecCom: node identity (a `Peer` whose public key is the decimal node id, so the
32-byte node key is SHA256(str(node_id)), as in the SkipPipe reference trainer); peer discovery
(`FixedPeers` over a static table {node_id: (host, port)}, or `KademliaDiscovery` from a
bootstrap address, both over DecCom's UDP `DefaultProtocol`); the `StreamProtocol` layer with its
connection table (`connections`/`DictItem`/`locks`), its stack bindings (`get_peer`,
`find_peer`, peer connected/disconnected callbacks) and its TCP wire format: a connection opens
with the 36-byte introduction b"\\xe4\\xe5\\xf3\\xc6" + node key, and every frame is a 32-byte
big-endian length followed by the bytes. A stock DecCom peer can therefore exchange frames with
us (over one connection: it closes a second one, see deduplication below). The frame bytes are
one `skippipe.runtime.wire` message.

What is replaced, and why (faults of deccom 0.1.0 found by reading its source and measuring):
- Nagle stall: DecCom creates its sockets itself with proto 0, so asyncio's automatic
  TCP_NODELAY (only for proto == IPPROTO_TCP) is skipped, and `send_stream` writes the length and
  the data in two writes with a drain between: a 64 B round trip takes ~88 ms. We set TCP_NODELAY
  on every connection and write each frame (length + header + payload) in one write.
- `open_connection` calls a blocking `socket.connect` on the event loop, binds outgoing sockets
  to the listening port with SO_REUSEPORT, and on refusal leaves a finished future in
  `await_connections` so the node can never connect to that peer again (on timeout it even raises
  TypeError and leaves the future pending forever). We connect with `asyncio.open_connection`
  from an ephemeral port, retry with backoff until the send deadline, and keep no stale state.
- `StreamNode` binds its listening socket with SO_REUSEPORT, so a second node on a busy port
  binds silently and the kernel splits connections between them. We bind without it, and a busy
  port raises `PortInUse` ("port 127.0.0.1:5000 in use").
- `handle_connection` deduplicates connections per peer and closes one side of simultaneous
  opens, discarding frames already written on it. We read every connection until it ends and
  send only on connections we opened, so no frame is dropped by deduplication.
- `listen_for_data` accepts any length (up to 2**256), reads in 9 KB slices, runs the callback
  through `run_coroutine_threadsafe`, and its error handler refers to an undefined `log`. We read
  one frame at a time (large ones in 1 MiB slices into one buffer: `readexactly` of a 16 MiB
  frame halves throughput), reject lengths above `max_frame_bytes` (closing that connection),
  drop frames that do not decode or whose sender differs from the connection's node, and close
  connections introduced by unknown node keys; all rejections are logged and counted.
- Every stream event appends to `log<key>.txt` in the working directory and modules print to
  stdout. We replace `print` and `open` inside DecCom's modules: prints become DEBUG records of
  the `skippipe.deccom` logger; its log files go to `<run_dir>/deccom/` of the node they name
  (or to that logger when the node has no run directory).
- `FixedPeers` calls its connected callback with one argument instead of two (TypeError on the
  first datagram) and introduces itself only after a fixed 2 s; with a static table we need no
  introductions, so they are skipped and the callback arity is fixed.
- `KademliaDiscovery.find_peer` poisons later lookups of a key when a waiting lookup is
  cancelled; lookups here run as shielded tasks and are polled, never cancelled.

Semantics: frames from one node to another arrive in the order `send` was called. `send`
returns once the frame is handed to a live connection (the kernel holds it, except at most
asyncio's 64 KiB write buffer, which `stop()` flushes). It raises `SendTimeout` (naming the peer)
when looking up, connecting or writing does not finish within the deadline, and
`TransportError` when the connection breaks during the write; either closes that connection and
the frame may or may not have arrived. A frame written just as the peer dies, before its end of
stream is seen, can be lost: the runtime's deadlines cover that. The link emulator's waiting is
not part of the deadline.
"""
from __future__ import annotations

import asyncio
import builtins
import collections
import errno
import logging
import os
import re
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from deccom.cryptofuncs.hash import SHA256
from deccom.peers.peer import Peer
from deccom.protocols.defaultprotocol import DefaultProtocol
from deccom.protocols.peerdiscovery.abstractpeerdiscovery import AbstractPeerDiscovery
from deccom.protocols.peerdiscovery.fixedpeers import FixedPeers
from deccom.protocols.peerdiscovery.kademliadiscovery import KademliaDiscovery
from deccom.protocols.streamprotocol import DictItem, StreamProtocol
from deccom.protocols.wrappers import bindto

from ..errors import SkipPipeError
from .linkemu import LinkEmulator
from .wire import Message, WireError, decode, encode_parts

logger = logging.getLogger("skippipe.runtime.transport")
deccom_logger = logging.getLogger("skippipe.deccom")

INTRO_MAGIC = b"\xe4\xe5\xf3\xc6"  # DecCom StreamProtocol: first bytes of a connection
NODE_KEY_BYTES = 32  # SHA-256 node key that follows the magic
LENGTH_BYTES = 32  # DecCom frame prefix: big-endian frame length
MIB = 1024**2
READ_SLICE_BYTES = MIB  # frames above this are read in slices of this size (see _read_exactly)
DISCOVERY_POLL_S = 0.2  # how often a pending discovery lookup re-checks the peer table
KADEMLIA_REFRESH_S = 5  # seconds between DecCom Kademlia table refreshes (its default is 60)
SEED = ("", 0)  # bootstrap=SEED: this node starts a discovery network (others bootstrap to it)
KEY_HEX_SHOWN = 16  # hex digits of a node key shown in log lines
DICT_ITEM_ID_BYTES = 4  # DecCom DictItem.unique_id size
PORT_PICK_ATTEMPTS = 20  # port 0: tries to find a number free for both TCP and UDP


class TransportError(SkipPipeError):
    """A transport failure; the message names the node and the peer."""


class SendTimeout(TransportError):
    """A send did not complete (connect, write, drain) within its deadline."""


class PortInUse(TransportError):
    """The node's address is already bound by another socket."""


class UnknownPeer(TransportError):
    """A destination that is not in the peer table (static mode)."""


@dataclass(frozen=True)
class TransportConfig:
    """Limits and timeouts of one transport (seconds, bytes)."""

    send_timeout_s: float = 10.0  # default deadline of one send: lookup + connect + write + drain
    handshake_timeout_s: float = 5.0  # an inbound connection must introduce itself within this
    connect_backoff_s: float = 0.02  # first pause between connection attempts; doubles
    connect_backoff_max_s: float = 0.5  # longest pause between connection attempts
    max_frame_bytes: int = 2**31  # larger length prefixes are rejected (connection closed)
    stream_limit_bytes: int = 4 * MIB  # asyncio StreamReader buffer limit per connection
    inbox_max: int = 0  # received messages held before reading pauses; 0 = unbounded
    stop_timeout_s: float = 2.0  # stop() waits this long for connection tasks to end


class _NodeLog(logging.LoggerAdapter):
    """Prefixes every record with `[node N]`."""

    def process(self, msg, kwargs):
        return f"[node {self.extra['node']}] {msg}", kwargs


# ---------------------------------------------------------------------------------------------
# Keeping DecCom quiet: its modules get their own `print` and `open`.

_RUN_DIRS: dict[str, Path] = {}  # DecCom public key (str node id) -> run directory
_LOG_NAME = re.compile(r"^log(?P<key>.+)\.txt$")


class _LogSink:
    """File-like object turning DecCom's log-file writes into logging records."""

    def __init__(self, name: str) -> None:
        self.name = name

    def write(self, text: str) -> int:
        for line in str(text).splitlines():
            if line.strip():
                deccom_logger.debug("%s: %s", self.name, line)
        return len(text)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _LogSink:
        return self

    def __exit__(self, *exc) -> None:
        pass


def _deccom_open(file, mode="r", *args, **kwargs):
    """DecCom only appends to `log<key>.txt`; send that to the node's run dir or to logging."""
    if not isinstance(file, (str, os.PathLike)) or not any(c in mode for c in "wax+"):
        return builtins.open(file, mode, *args, **kwargs)
    name = os.path.basename(os.fspath(file))
    match = _LOG_NAME.match(name)
    run_dir = _RUN_DIRS.get(match.group("key")) if match else None
    if run_dir is None:
        return _LogSink(name)
    target = run_dir / "deccom"
    target.mkdir(parents=True, exist_ok=True)
    return builtins.open(target / name, mode, *args, **kwargs)


def _deccom_print(*args, sep=" ", end="\n", file=None, flush=False) -> None:
    deccom_logger.debug("%s", sep.join(str(a) for a in args))


def _quiet_deccom() -> None:
    """Replace `print` and `open` in every loaded DecCom module (idempotent)."""
    for name, module in list(sys.modules.items()):
        if module is not None and (name == "deccom" or name.startswith("deccom.")):
            module.print = _deccom_print
            module.open = _deccom_open


_quiet_deccom()


# ---------------------------------------------------------------------------------------------
# DecCom layers with the faults above fixed.

def node_key(node_id: int) -> bytes:
    """DecCom node key of a SkipPipe node: SHA256 of its decimal id."""
    return SHA256(str(node_id))


def _node_id_of(peer: Peer | None) -> int | None:
    """The SkipPipe node id a DecCom peer stands for, if its key matches its public key."""
    if peer is None or not isinstance(peer.pub_key, str) or not peer.pub_key.isdecimal():
        return None
    node = int(peer.pub_key)
    return node if node_key(node) == peer.id_node else None


class _QuietUdp(DefaultProtocol):
    """DecCom's UDP layer without the log file per unmatched datagram."""

    async def call_callback(self, addr, data):
        try:
            self.callback(addr, data)
        except Exception:  # a bad datagram must not stop the node
            deccom_logger.debug("datagram from %s failed", addr, exc_info=True)


class _StaticPeers(FixedPeers):
    """FixedPeers without the delayed introductions, with the callback arity fixed."""

    async def start(self, p: Peer):
        await AbstractPeerDiscovery.start(self, p)

    def set_static(self, peer: Peer) -> None:
        old = self.peers.get(peer.id_node)
        if old is not None:
            self.a_to_p.pop(old.addr, None)
        self.p_to_a[peer.id_node] = peer.addr
        self.a_to_p[peer.addr] = peer
        self.peers[peer.id_node] = peer

    def process_datagram(self, addr, data):
        peer = self.a_to_p.get(addr)
        if peer is None or not data:
            return
        if addr not in self.introduced:
            self.introduced.append(addr)
            self.connected_callback(addr, peer)
        if data[0] == FixedPeers.EXIT:
            self.remove_peer(addr, peer.id_node)


class _Streams(StreamProtocol):
    """DecCom StreamProtocol with non-blocking connects, one write per frame, bounded framing
    and rejection of unknown senders. Connections we open live in DecCom's `connections` table
    and carry our sends; every connection, either direction, is read until it ends."""

    def __init__(self, transport: Transport) -> None:
        super().__init__(False, callback=_ignore, disconnected_callback=_ignore,
                         connected_callback=_ignore, stream_callback=_ignore,
                         stream_close_callback=_ignore)
        self.owner = transport
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
                                           self.owner.config.handshake_timeout_s)
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            self.owner._reject("bad_handshake", f"connection from {addr} sent no introduction")
            return self.forget(writer)
        if intro[:len(INTRO_MAGIC)] != INTRO_MAGIC:
            self.owner._reject("bad_handshake", f"connection from {addr}: wrong introduction")
            return self.forget(writer)
        key = intro[len(INTRO_MAGIC):]
        node = _node_id_of(await self.resolve(key))
        if node is None or node == self.owner.node_id:
            self.owner._reject("unknown_sender", f"connection from {addr} with unknown node "
                               f"key {key.hex()[:KEY_HEX_SHOWN]}...: closed")
            return self.forget(writer)
        self.owner.log.debug("connection from node %d at %s", node, addr)
        await self.read_frames(reader, writer, node, None)

    async def resolve(self, key: bytes) -> Peer | None:
        """The peer of a node key: from the table, or (discovery) looked up within the
        handshake deadline."""
        peer = self.get_peer(key)
        if peer is not None or self.owner.static:
            return peer
        try:
            return await asyncio.wait_for(self.discover(key), self.owner.config.handshake_timeout_s)
        except asyncio.TimeoutError:
            return None

    async def discover(self, key: bytes) -> Peer:
        """Wait until discovery knows `key`; DecCom lookups run shielded and are never
        cancelled (a cancelled Kademlia lookup breaks later ones)."""
        while (peer := self.get_peer(key)) is None:
            task = self.lookups.get(key)
            if not self.owner._knows_any_peer():
                await asyncio.sleep(DISCOVERY_POLL_S)  # a lookup started now would find no one
                continue
            if task is None or task.done():
                task = self.lookups[key] = self.spawn(self._lower_find_peer(key))
            await asyncio.wait({task}, timeout=DISCOVERY_POLL_S)
        return peer

    async def read_frames(self, reader, writer, node: int, item: DictItem | None) -> None:
        """Read length-prefixed frames until the connection ends; hand each to the owner."""
        limit = self.owner.config.max_frame_bytes
        try:
            while True:
                length = int.from_bytes(await reader.readexactly(LENGTH_BYTES), "big")
                if length > limit:
                    self.owner._reject("bad_length", f"frame of {length} bytes from node "
                                       f"{node} exceeds {limit}: connection closed")
                    return
                await self.owner._deliver(node, await _read_exactly(reader, length))
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass  # the peer closed or reset the connection
        finally:
            self.forget(writer, item)
            self.owner._peer_closed(node)

    def forget(self, writer: asyncio.StreamWriter, item: DictItem | None = None) -> None:
        """Close a connection and drop it from the tables."""
        writer.close()
        self.writers.discard(writer)
        for key, value in list(self.connections.items()):
            if value is item:
                del self.connections[key]

    # -- outbound -----------------------------------------------------------------------------
    async def writer_for(self, key: bytes, node: int) -> asyncio.StreamWriter:
        """A live connection we opened to `node`, connecting (with retries) if needed. No
        timeout here: the caller's deadline bounds it. Callers write right after this returns,
        with no await in between, so frames leave in the order `send` was called."""
        async with self.locks.setdefault(key, asyncio.Lock()):  # FIFO: keeps sends in order
            item = self.connections.get(key)
            if item is not None and not item.writer.is_closing():
                return item.writer
            peer = await self.lookup(key, node)
            return await self.connect_with_retry(key, node, peer)

    async def lookup(self, key: bytes, node: int) -> Peer:
        peer = self.get_peer(key)
        if peer is None and self.owner.static:
            raise UnknownPeer(f"[node {self.owner.node_id}] node {node} is not in the peer table")
        return peer if peer is not None else await self.discover(key)

    async def connect_with_retry(self, key: bytes, node: int, peer: Peer) -> asyncio.StreamWriter:
        cfg = self.owner.config
        pause = cfg.connect_backoff_s
        while True:
            try:
                return await self.connect(key, node, peer)
            except OSError as e:  # refused / unreachable: the peer may not be up yet
                self.owner._last_error[node] = os.strerror(e.errno) if e.errno else str(e)
                await asyncio.sleep(pause)
                pause = min(2 * pause, cfg.connect_backoff_max_s)

    async def connect(self, key: bytes, node: int, peer: Peer) -> asyncio.StreamWriter:
        """One non-blocking connection attempt; introduces us in one write."""
        reader, writer = await asyncio.open_connection(
            peer.addr[0], peer.tcp, limit=self.owner.config.stream_limit_bytes)
        _set_nodelay(writer)
        writer.write(INTRO_MAGIC + self.peer.id_node)
        item = DictItem(reader, writer, None, 1)
        item.unique_id = os.urandom(DICT_ITEM_ID_BYTES)
        self.connections[key] = item
        self.writers.add(writer)
        item.fut = self.spawn(self.read_frames(reader, writer, node, item))
        self.owner.log.debug("connected to node %d at %s:%d", node, peer.addr[0], peer.tcp)
        return writer

    def drop(self, key: bytes) -> None:
        """Abort our connection to a peer (after a failed or timed-out send)."""
        item = self.connections.pop(key, None)
        if item is not None:
            item.writer.transport.abort()

    # -- DecCom entry points, kept working for other DecCom layers ----------------------------
    async def open_connection(self, remote_ip, remote_port, node_id: bytes, port_listen=None):
        peer = self.get_peer(node_id)
        node = _node_id_of(peer)
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
        item.writer.write(len(data).to_bytes(LENGTH_BYTES, "big") + bytes(data))
        await item.writer.drain()
        return True

    async def stop(self):
        """Flush and close every connection (aborting those that do not finish within
        stop_timeout_s), then end the reading tasks."""
        timeout = self.owner.config.stop_timeout_s
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


async def _read_exactly(reader: asyncio.StreamReader, n: int) -> bytes | bytearray:
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


# ---------------------------------------------------------------------------------------------
# The public transport.

class Transport:
    """Framed message transport of one node.

    `peers` is a static table {node_id: (host, port)} (the node's own entry is ignored); or
    give `bootstrap=(host, port)` of any running node to use DecCom's Kademlia discovery
    (`bootstrap=SEED`, or the node's own address, for the first node).
    Each node listens on TCP `port` (frames) and UDP `port` (DecCom discovery); `port=0` picks
    a free port (see `address`). `run_dir` receives DecCom's own log files. An optional
    `emulator` delays sends as the scenario's links would. Use as
    `async with Transport(...) as t: await t.send(dst, msg); msg = await t.recv()`.
    """

    def __init__(self, node_id: int, host: str, port: int,
                 peers: Mapping[int, tuple[str, int]] | None = None,
                 run_dir: str | Path | None = None, *, bootstrap: tuple[str, int] | None = None,
                 emulator: LinkEmulator | None = None, config: TransportConfig = TransportConfig(),
                 on_disconnect: Callable[[int], None] | None = None) -> None:
        if (peers is None) == (bootstrap is None):
            raise TransportError(f"[node {node_id}] give exactly one of peers or bootstrap")
        self.node_id = node_id
        self.host, self.port = host, port
        self.static = peers is not None
        self.config = config
        self.log = _NodeLog(logger, {"node": node_id})
        self._last_error: dict[int, str] = {}
        self.rejections: collections.Counter[str] = collections.Counter()
        self._initial_peers = dict(peers or {})
        self._bootstrap = bootstrap
        self._run_dir = Path(run_dir) if run_dir is not None else None
        self._emulator = emulator
        self._on_disconnect = on_disconnect
        self._inbox: asyncio.Queue[Message] | None = None
        self._streams: _Streams | None = None
        self._discovery = None
        self._server: asyncio.AbstractServer | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._running = False

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> Transport:
        """Bind TCP and UDP on (host, port) and start DecCom. Raises PortInUse."""
        if self._running:
            return self
        _quiet_deccom()  # DecCom modules imported since this module was
        if self._run_dir is not None:
            self._run_dir.mkdir(parents=True, exist_ok=True)
            _RUN_DIRS[str(self.node_id)] = self._run_dir
        self._inbox = asyncio.Queue(self.config.inbox_max)
        self._streams = _Streams(self)
        self._discovery = self._make_discovery()
        self._discovery.set_lower(_QuietUdp())
        self._streams.set_lower(self._discovery)
        try:
            await self._listen()
        except BaseException:
            await self._close_sockets()
            _RUN_DIRS.pop(str(self.node_id), None)
            raise
        self._running = True
        self.log.info("listening on %s:%d (%s)", self.host, self.port,
                      "static peers" if self.static else f"bootstrap {self._bootstrap}")
        return self

    def _make_discovery(self):
        if self.static:
            table = [Peer((h, p), pub_key=str(n), tcp=p)
                     for n, (h, p) in self._initial_peers.items() if n != self.node_id]
            return _StaticPeers(table)
        host, port = self._bootstrap
        seeds = [] if self._bootstrap in (SEED, (self.host, self.port)) else \
            [Peer((host, port), pub_key="bootstrap", tcp=port)]
        return KademliaDiscovery(seeds, interval=KADEMLIA_REFRESH_S)

    async def _bind(self) -> socket.socket:
        """Listening TCP socket and UDP endpoint on the same port number."""
        attempts = PORT_PICK_ATTEMPTS if self.port == 0 else 1
        for attempt in range(attempts):
            tcp = _bind_tcp(self.host, self.port, self.node_id)
            port = tcp.getsockname()[1]
            try:
                self._udp, _ = await asyncio.get_running_loop().create_datagram_endpoint(
                    self._streams.get_lowest, local_addr=(self.host, port))
            except OSError as e:
                tcp.close()
                if e.errno != errno.EADDRINUSE or attempt == attempts - 1:
                    raise _bind_error(self.host, port, self.node_id, e) from None
                continue
            self.port = port
            return tcp
        raise AssertionError("unreachable")

    async def _listen(self) -> None:
        tcp = await self._bind()
        try:
            self._server = await asyncio.start_server(
                self._streams.handle_connection, sock=tcp, limit=self.config.stream_limit_bytes)
        except BaseException:
            tcp.close()
            raise
        me = Peer((self.host, self.port), pub_key=str(self.node_id), tcp=self.port)
        await self._streams.start(me)

    async def _close_sockets(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._streams is not None:
            await self._streams.stop()
        if self._udp is not None:
            self._udp.close()
        if self._server is not None:
            await self._server.wait_closed()
        self._server = self._udp = None

    async def stop(self) -> None:
        """Flush and close every connection and socket; pending `recv` calls are not woken."""
        if not self._running:
            return
        self._running = False
        await self._close_sockets()
        _RUN_DIRS.pop(str(self.node_id), None)
        self.log.info("stopped")

    async def __aenter__(self) -> Transport:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    # -- peers --------------------------------------------------------------------------------
    @property
    def address(self) -> tuple[str, int]:
        """(host, port) this node listens on (the real port once started with port 0)."""
        return self.host, self.port

    def add_peer(self, node_id: int, host: str, port: int) -> None:
        """Add or move a peer in the static table; an open connection to it is dropped."""
        if not self.static:
            raise TransportError(f"[node {self.node_id}] add_peer needs a static peer table")
        self._initial_peers[node_id] = (host, port)
        if self._discovery is not None:
            self._discovery.set_static(Peer((host, port), pub_key=str(node_id), tcp=port))
            self._streams.drop(node_key(node_id))

    # -- sending ------------------------------------------------------------------------------
    async def send(self, dst: int, msg: Message, timeout_s: float | None = None) -> None:
        """Send `msg` to node `dst`. The bytes are copied before the first await, so the
        caller may reuse its buffers. With an emulator the frame leaves at the emulated
        delivery time, in FIFO order per destination. Raises SendTimeout (no connection or
        write within `timeout_s`, default config.send_timeout_s), UnknownPeer, TransportError
        (connection lost during the write)."""
        self._check_running()
        if msg.sender != self.node_id:
            raise ValueError(f"[node {self.node_id}] message sender {msg.sender} is not this node")
        if dst == self.node_id:  # to itself: an owned copy, as a peer would receive it
            return await self._inbox.put(decode(b"".join(encode_parts(msg))))
        header, payload = encode_parts(msg)
        size = len(header) + payload.nbytes
        frame = b"".join((size.to_bytes(LENGTH_BYTES, "big"), header, payload))
        deadline = self.config.send_timeout_s if timeout_s is None else timeout_s
        if self._emulator is None:
            return await self._send_frame(dst, frame, msg, deadline)
        try:
            self._emulator.model(dst)
        except KeyError as e:
            raise UnknownPeer(f"[node {self.node_id}] {e.args[0]}") from None
        async with self._emulator.transmit(dst, size):
            await self._send_frame(dst, frame, msg, deadline)

    async def _send_frame(self, dst: int, frame: bytes, msg: Message, deadline: float) -> None:
        key = node_key(dst)
        what = f"{msg.kind.name} (iteration {msg.iteration}, microbatch {msg.microbatch})"
        try:
            async with asyncio.timeout(deadline):
                writer = await self._streams.writer_for(key, dst)
                writer.write(frame)  # one write per frame
                await writer.drain()
        except TimeoutError:
            self._streams.drop(key)
            why = self._last_error.get(dst, "no progress")
            raise SendTimeout(f"[node {self.node_id}] send {what} to node {dst} "
                              f"({self._peer_address(dst)}) timed out after {deadline:g} s "
                              f"({why})") from None
        except (ConnectionError, OSError) as e:
            self._streams.drop(key)
            raise TransportError(f"[node {self.node_id}] send {what} to node {dst} "
                                 f"({self._peer_address(dst)}) failed: {e}") from None

    def _peer_address(self, node: int) -> str:
        peer = self._streams.get_peer(node_key(node)) if self._streams else None
        return f"{peer.addr[0]}:{peer.tcp}" if peer is not None else "address unknown"

    # -- receiving ----------------------------------------------------------------------------
    async def recv(self, timeout_s: float | None = None) -> Message:
        """The next message from any peer, in arrival order (FIFO per sender). Raises
        asyncio.TimeoutError after `timeout_s` (None waits for ever)."""
        self._check_running()
        if timeout_s is None:
            return await self._inbox.get()
        return await asyncio.wait_for(self._inbox.get(), timeout_s)

    def pending(self) -> int:
        """Messages received and not yet taken by `recv`."""
        return self._inbox.qsize() if self._inbox is not None else 0

    async def _deliver(self, node: int, frame: bytes) -> None:
        """Decode one frame from `node`'s connection and queue it, or reject it."""
        try:
            msg = decode(frame)
        except WireError as e:
            return self._reject("malformed", f"malformed frame from node {node}: {e}")
        if msg.sender != node:
            return self._reject("spoofed_sender", f"frame claiming sender {msg.sender} "
                                f"arrived on the connection of node {node}")
        await self._inbox.put(msg)

    def _reject(self, reason: str, detail: str) -> None:
        """Count and log one rejected connection or frame; the node keeps running."""
        self.rejections[reason] += 1
        self.log.warning("rejected (%s): %s", reason, detail)

    def _peer_closed(self, node: int) -> None:
        if self._running and self._on_disconnect is not None:
            self._on_disconnect(node)

    def _knows_any_peer(self) -> bool:
        """Whether discovery has met at least one other node."""
        return bool(self._discovery is not None and self._discovery.peers)

    def _check_running(self) -> None:
        if not self._running:
            raise TransportError(f"[node {self.node_id}] transport is not running")


def _bind_tcp(host: str, port: int, node: int) -> socket.socket:
    """A listening-ready TCP socket without SO_REUSEPORT, so a busy port is detected."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # allows TIME_WAIT, not a listener
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise _bind_error(host, port, node, e) from None
    return sock


def _bind_error(host: str, port: int, node: int, e: OSError) -> TransportError:
    if e.errno == errno.EADDRINUSE:
        return PortInUse(f"[node {node}] port {host}:{port} in use")
    return TransportError(f"[node {node}] cannot bind {host}:{port}: {e.strerror}")
