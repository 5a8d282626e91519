"""Transport: reliable, framed TCP streams between SkipPipe nodes, built on DecCom 0.1.0.

The frame bytes are one `skippipe.runtime.net.wire` message. Layers, bottom up: DecCom's UDP and peer
discovery, adapted in `deccom_adapter` (quiet DecCom, node identity, static table or Kademlia);
DecCom's stream layer with its faults fixed in `streams` (authenticated connections, see `auth`;
frames received straight into reused buffers, see `connection`); and here the `Transport` API:
start/stop, the peer table, `send` with a deadline and link emulation, and the receive queue.
The stream layer reaches the Transport only through `StreamHooks`.

Replaced here: DecCom's `StreamNode` binds its listening socket with SO_REUSEPORT, so a second
node on a busy port binds silently and the kernel splits connections between them. We bind
without it, and a busy port raises `PortInUse` ("port 127.0.0.1:5000 in use").

Semantics: frames from one node to another arrive in the order `send` was called. `send`
returns once the kernel holds the whole frame. Only peers holding the run's key (`RunAuth`)
reach `recv`, and each frame's sender is the authenticated node of its connection (frames of
a connection are its peer's, or rejected). `send` raises `SendTimeout` (naming the peer)
when looking up, connecting or writing does not finish within the deadline, and
`TransportError` when the connection breaks during the write; either closes that connection and
the frame may or may not have arrived. A frame written just as the peer dies, before its end of
stream is seen, can be lost: the runtime's deadlines cover that. The link emulator's waiting is
not part of the deadline.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import logging
import socket
from collections.abc import Callable, Mapping
from pathlib import Path

from deccom.peers.peer import Peer

from ...errors import SkipPipeError
from .auth import RunAuth
from .connection import length_prefix
from .deccom_adapter import discovery_layer, log_to, node_key, quiet_deccom, stop_logging_to
from .frames import TransportConfig
from .linkemu import LinkEmulator
from .rejectlog import RejectionLog
from .streams import StreamHooks, Streams
from .wire import Message, WireError, decode, encode_parts

logger = logging.getLogger("skippipe.runtime.net.transport")

SEED = ("", 0)  # bootstrap=SEED: this node starts a discovery network (others bootstrap to it)
PORT_PICK_ATTEMPTS = 20  # port 0: tries to find a number free for both TCP and UDP


class TransportError(SkipPipeError):
    """A transport failure; the message names the node and the peer."""


class SendTimeout(TransportError):
    """A send did not complete (connect, write, drain) within its deadline."""


class PortInUse(TransportError):
    """The node's address is already bound by another socket."""


class UnknownPeer(TransportError):
    """A destination that is not in the peer table (static mode)."""


class _NodeLog(logging.LoggerAdapter):
    """Prefixes every record with `[node N]`."""

    def process(self, msg, kwargs):
        return f"[node {self.extra['node']}] {msg}", kwargs


class Transport:
    """Framed message transport of one node.

    `peers` is a static table {node_id: (host, port)} (the node's own entry is ignored); or
    give `bootstrap=(host, port)` of any running node to use DecCom's Kademlia discovery
    (`bootstrap=SEED`, or the node's own address, for the first node).
    Each node listens on TCP `port` (frames) and UDP `port` (DecCom discovery); `port=0` picks
    a free port (see `address`). `auth` holds the run's key (every node of a run the same).
    `run_dir` receives DecCom's own log files. An optional `emulator` delays sends as the
    scenario's links would. Use as
    `async with Transport(...) as t: await t.send(dst, msg); msg = await t.recv()`.
    """

    def __init__(
        self,
        node_id: int,
        host: str,
        port: int,
        peers: Mapping[int, tuple[str, int]] | None = None,
        run_dir: str | Path | None = None,
        *,
        auth: RunAuth,
        bootstrap: tuple[str, int] | None = None,
        emulator: LinkEmulator | None = None,
        config: TransportConfig = TransportConfig(),
        on_disconnect: Callable[[int], None] | None = None,
    ) -> None:
        if (peers is None) == (bootstrap is None):
            raise TransportError(f"[node {node_id}] give exactly one of peers or bootstrap")
        self.node_id = node_id
        self.host, self.port = host, port
        self.static = peers is not None
        self.config, self.auth = config, auth
        self.log = _NodeLog(logger, {"node": node_id})
        self._last_error: dict[int, str] = {}
        self._refusals = RejectionLog(self.log)
        self.rejections: collections.Counter[str] = self._refusals.counts  # by reason, ever
        self._initial_peers = dict(peers or {})
        self._bootstrap = bootstrap
        self._run_dir = Path(run_dir) if run_dir is not None else None
        self._emulator = emulator
        self._on_disconnect = on_disconnect
        self._inbox: asyncio.Queue[Message] | None = None
        self._streams: Streams | None = None
        self._discovery = None
        self._server: asyncio.AbstractServer | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._running = False

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> Transport:
        """Bind TCP and UDP on (host, port) and start DecCom. Raises PortInUse."""
        if self._running:
            return self
        quiet_deccom()  # DecCom modules imported since deccom_adapter was
        if self._run_dir is not None:
            self._run_dir.mkdir(parents=True, exist_ok=True)
            log_to(self.node_id, self._run_dir)
        self._inbox = asyncio.Queue()
        hooks = StreamHooks(
            deliver=self._deliver,
            reject=self._reject,
            closed=self._peer_closed,
            connect_failed=self._last_error.__setitem__,
        )  # why, for SendTimeout
        self._streams = Streams(self.node_id, self.static, self.config, self.auth, self.log, hooks)
        seed = None if self._bootstrap in (SEED, (self.host, self.port)) else self._bootstrap
        self._discovery = discovery_layer(self.node_id, self._initial_peers if self.static else None, seed)
        self._streams.set_lower(self._discovery)
        try:
            await self._listen()
        except BaseException:
            await self._close_sockets()
            stop_logging_to(self.node_id)
            raise
        self._running = True
        self.log.info(
            "listening on %s:%d (%s)",
            self.host,
            self.port,
            "static peers" if self.static else f"bootstrap {self._bootstrap}",
        )
        return self

    async def _bind(self) -> socket.socket:
        """Listening TCP socket and UDP endpoint on the same port number."""
        attempts = PORT_PICK_ATTEMPTS if self.port == 0 else 1
        for attempt in range(attempts):
            tcp = _bind_tcp(self.host, self.port, self.node_id)
            port = tcp.getsockname()[1]
            try:
                self._udp, _ = await asyncio.get_running_loop().create_datagram_endpoint(
                    self._streams.get_lowest, local_addr=(self.host, port)
                )
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
            self._server = await asyncio.get_running_loop().create_server(self._streams.inbound, sock=tcp)
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
        self._refusals.flush()
        stop_logging_to(self.node_id)
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
        """Send `msg` to node `dst`. The payload is not copied up front (a 16 MiB copy costs
        as much as a third of its transfer): keep it unchanged until `send` returns (messages
        made with `from_tensor`'s default copy own their bytes). With an emulator the frame leaves at the emulated
        delivery time, in FIFO order per destination. Raises SendTimeout (no connection or
        write within `timeout_s`, default config.send_timeout_s), UnknownPeer, TransportError
        (connection lost during the write)."""
        self._check_running()
        if msg.sender != self.node_id:
            raise ValueError(f"[node {self.node_id}] message sender {msg.sender} is not this node")
        if dst == self.node_id:  # to itself: an owned copy, as a peer would receive it
            return self._inbox.put_nowait(decode(b"".join(encode_parts(msg))))
        header, payload = encode_parts(msg)
        size = len(header) + payload.nbytes
        frame = (length_prefix(size) + header, payload)  # the payload is not copied
        deadline = self.config.send_timeout_s if timeout_s is None else timeout_s
        if self._emulator is None:
            return await self._send_frame(dst, frame, msg, deadline)
        try:
            self._emulator.model(dst)
        except KeyError as e:
            raise UnknownPeer(f"[node {self.node_id}] {e.args[0]}") from None
        async with self._emulator.transmit(dst, size):
            await self._send_frame(dst, frame, msg, deadline)

    async def _send_frame(
        self, dst: int, frame: tuple[bytes, memoryview], msg: Message, deadline: float
    ) -> None:
        key = node_key(dst)
        what = f"{msg.kind.name} (iteration {msg.iteration}, microbatch {msg.microbatch})"
        try:
            async with asyncio.timeout(deadline):
                writer = await self._streams.writer_for(key, dst)
                if writer is None:
                    raise UnknownPeer(f"[node {self.node_id}] node {dst} is not in the peer table")
                await writer.send_frame(*frame)
        except TimeoutError:
            self._streams.drop(key)
            why = self._last_error.get(dst, "no progress")
            raise SendTimeout(
                f"[node {self.node_id}] send {what} to node {dst} "
                f"({self._peer_address(dst)}) timed out after {deadline:g} s "
                f"({why})"
            ) from None
        except (ConnectionError, OSError) as e:
            self._streams.drop(key)
            raise TransportError(
                f"[node {self.node_id}] send {what} to node {dst} ({self._peer_address(dst)}) failed: {e}"
            ) from None

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

    def _deliver(self, node: int, frame: bytes | bytearray) -> None:
        """Decode one frame from `node`'s (authenticated) connection and queue it, or reject it."""
        try:
            msg = decode(frame)
        except WireError as e:
            return self._reject("malformed", f"malformed frame from node {node}: {e}")
        if msg.sender != node:
            return self._reject(
                "spoofed_sender",
                f"frame claiming sender {msg.sender} arrived on the connection of node {node}",
            )
        self._inbox.put_nowait(msg)

    def _reject(self, reason: str, detail: str) -> None:
        """Count and log (rate-limited) one rejected connection or frame; the node keeps running."""
        self._refusals.refused(reason, detail)

    def _peer_closed(self, node: int) -> None:
        if self._running and self._on_disconnect is not None:
            self._on_disconnect(node)

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
