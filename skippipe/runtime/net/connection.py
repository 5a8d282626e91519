"""One TCP connection between nodes as an asyncio BufferedProtocol: the handshake's fixed-size
reads, then length-prefixed frames received straight into their own buffer.

Why not asyncio streams: a StreamReader copies every byte at least twice (into its buffer, out of
it) and reads in 256 KiB pieces; 16 MiB frames moved at ~290 MiB/s. Here the kernel writes a
large frame's bytes into the frame's buffer (`get_buffer` hands out the unfilled part), so the
receiver copies nothing; small frames come through a 64 KiB scratch buffer, the handshake through a 256-byte one.

Memory is bounded by what peers have sent, not by what they claim: a frame's length is checked
against `max_frame_bytes` before anything is allocated, and a frame above MAPPED_FRAME_BYTES is
received into an anonymous memory mapping, whose pages the kernel commits only as the bytes land
(a bytearray would be zero-filled, committing all of it up front; growing one by steps costs a
copy each time, which measured as half the receive time). Fresh pages cost the kernel a fault
and a zeroing each (receiving into new memory ran at 1/3 of the speed of receiving into used
memory), so a node keeps a few frame buffers (`BufferPool`) and reuses one once no message
refers to it any more. Before the connection is
authenticated only the scratch buffer exists; when it is full, reading pauses (a peer cannot
make us buffer more).
"""

from __future__ import annotations

import asyncio
import mmap
import os
import socket
import sys
from collections.abc import Callable

SCRATCH_BYTES = 64 * 1024  # small frames are parsed from here
HANDSHAKE_SCRATCH_BYTES = 256  # the handshake's messages (at most 148 bytes) from here: a flood
# of connections that never authenticate holds a few KiB, not 64 KiB each (heap the allocator
# kept after the flood)
MAPPED_FRAME_BYTES = 1024**2  # larger frames are received into a memory mapping
POOL_BUFFERS = 4  # frame buffers a node keeps for reuse ...
POOL_MAX_BYTES = 256 * 1024**2  # ... of frames up to this size (a rejoin's WEIGHTS may be far
# larger, and rare: its buffer is freed with its message)
DIRECT_SEND_BYTES = 1024**2  # larger payloads go from their own memory to the socket
FREE_REFS = 3  # sys.getrefcount of a pooled buffer nothing else refers to (list, name, argument)
LENGTH_BYTES = 32  # DecCom's frame prefix: big-endian frame length
SMALL_FRAME_BYTES = SCRATCH_BYTES - LENGTH_BYTES  # frames up to this size are read via scratch


def length_prefix(n: int) -> bytes:
    """The frame prefix of an `n`-byte frame."""
    return n.to_bytes(LENGTH_BYTES, "big")


class BufferPool:
    """Memory mappings for large frames, reused once nothing refers to them: a message's
    payload is a view of its frame's buffer, and a view holds a reference to the buffer, so a
    buffer whose only reference is the pool's is free (CPython reference counts)."""

    def __init__(self, keep: int = POOL_BUFFERS) -> None:
        self.keep = keep
        self.buffers: list[mmap.mmap] = []

    def get(self, n: int) -> mmap.mmap:
        """A buffer of at least `n` bytes that nothing else refers to."""
        if n > POOL_MAX_BYTES:
            return mmap.mmap(-1, n)
        free = None
        for i in range(len(self.buffers)):  # (enumerate's reused tuple would hold a reference)
            buf = self.buffers[i]
            if sys.getrefcount(buf) == FREE_REFS:
                if n <= len(buf) <= 2 * n:
                    return buf
                free = i
        buf = mmap.mmap(-1, n)
        if len(self.buffers) < self.keep:
            self.buffers.append(buf)
        elif free is not None:  # a free buffer of another size makes room
            self.buffers[free] = buf
        return buf


class FrameConnection(asyncio.BufferedProtocol):
    """A connection: `read_fixed(n)` during the handshake, then `start_frames(on_frame)` hands
    every complete frame to `on_frame`; `write` + `drain` send. `lost` resolves (to the error or
    None) when the connection ends; `on_lost` is called then."""

    def __init__(
        self, max_frame_bytes: int, on_too_large: Callable[[int], None], pool: BufferPool | None = None
    ) -> None:
        self.max_frame_bytes, self.on_too_large = max_frame_bytes, on_too_large
        self.pool = pool if pool is not None else BufferPool()
        self.on_made: Callable[[FrameConnection], None] | None = None  # inbound: start the handshake
        self.on_lost: Callable[[], None] | None = None
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future = asyncio.get_running_loop().create_future()
        self.scratch = bytearray(HANDSHAKE_SCRATCH_BYTES)  # SCRATCH_BYTES once authenticated
        self.start = self.end = 0  # unread bytes are scratch[start:end]
        self.want: tuple[int, asyncio.Future] | None = None  # a pending read_fixed
        self.on_frame: Callable[[bytes | memoryview], None] | None = None  # set: frames mode
        self.body: bytearray | mmap.mmap | None = None  # the large frame being received
        self.body_len = self.have = 0
        self.write_paused = False
        self.drained: asyncio.Future | None = None
        self.send_lock = asyncio.Lock()  # one frame at a time (a large one takes several awaits)
        self.raw: socket.socket | None = None  # a duplicate of the socket, for direct sends
        self.peer_node: int | None = None  # the node at the other end, once known (for messages)

    # -- asyncio callbacks --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=0)  # drain() waits until the kernel has it all
        sock = transport.get_extra_info("socket")
        if sock is not None:  # small frames leave at once (no Nagle delay)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.on_made is not None:
            self.on_made(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)
        if self.want is not None and not self.want[1].done():
            self.want[1].set_exception(ConnectionResetError("connection closed"))
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)  # drain() sees `lost` and raises
        self.want = self.drained = None
        self.body = None
        if self.raw is not None:  # wakes a direct send in progress (it closes the duplicate)
            try:
                self.raw.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already gone
        if self.on_lost is not None:
            self.on_lost()

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.body is not None:  # straight into the frame's own buffer
            return memoryview(self.body)[self.have : self.body_len]
        if self.start == self.end:
            self.start = self.end = 0
        elif self.end == len(self.scratch):  # move the unread tail to the front
            tail = self.end - self.start
            self.scratch[:tail] = self.scratch[self.start : self.end]
            self.start, self.end = 0, tail
        return memoryview(self.scratch)[self.end :]

    def buffer_updated(self, nbytes: int) -> None:
        if self.body is not None:
            self.have += nbytes
            if self.have == self.body_len:
                body, self.body = self.body, None
                self.on_frame(memoryview(body)[: self.body_len])
            return
        self.end += nbytes
        self._consume()

    def eof_received(self) -> bool:
        return False  # close our side too

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)
        self.drained = None

    # -- handshake ----------------------------------------------------------------------------
    async def read_fixed(self, n: int) -> bytes:
        """The next `n` (<= HANDSHAKE_SCRATCH_BYTES) bytes; ConnectionError when the connection ends."""
        if self.end - self.start >= n:
            return self._take(n)
        if self.lost.done():
            raise ConnectionResetError("connection closed")
        self.want = (n, asyncio.get_running_loop().create_future())
        return await self.want[1]

    def start_frames(self, on_frame: Callable[[bytes | memoryview], None]) -> None:
        """From now on the connection carries frames (bytes already received included)."""
        self.on_frame = on_frame
        unread = self.scratch[self.start : self.end]
        self.scratch = bytearray(SCRATCH_BYTES)
        self.scratch[: len(unread)] = unread
        self.start, self.end = 0, len(unread)
        self.transport.resume_reading()
        self._consume()

    # -- sending ------------------------------------------------------------------------------
    async def send_frame(self, head: bytes, payload: memoryview) -> None:
        """Send one frame (`head` holds its length prefix) and wait until the kernel holds all of
        it. A large payload is not copied: asyncio's write would copy what the kernel does not
        take at once into its own buffer, i.e. nearly all of it, into fresh memory."""
        async with self.send_lock:  # taken at once when free: callers keep their order
            if payload.nbytes < DIRECT_SEND_BYTES:
                self.write(head + payload)
                return await self.drain()
            self.write(head)
            await self.drain()
            await self._send_direct(payload)

    async def _send_direct(self, payload: memoryview) -> None:
        if self.lost.done():
            raise ConnectionResetError("connection closed")
        sock = self.transport.get_extra_info("socket")
        self.raw = socket.socket(fileno=os.dup(sock.fileno()))
        self.raw.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_sendall(self.raw, payload)
        finally:
            self.raw.close()
            self.raw = None

    def write(self, data) -> None:
        self.transport.write(data)  # sends at once what the kernel takes, copies the rest

    async def drain(self) -> None:
        if self.lost.done() or self.transport.is_closing():
            raise ConnectionResetError("connection closed")
        if self.write_paused:
            if self.drained is None:
                self.drained = asyncio.get_running_loop().create_future()
            await asyncio.shield(self.drained)
            if self.lost.done():
                raise ConnectionResetError("connection closed")

    def is_closing(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # -- parsing ------------------------------------------------------------------------------
    def _take(self, n: int) -> bytes:
        out = bytes(self.scratch[self.start : self.start + n])
        self.start += n
        return out

    def _consume(self) -> None:
        if self.on_frame is None:
            self._feed_handshake()
            return
        while self.body is None and self.end - self.start >= LENGTH_BYTES and not self.is_closing():
            n = int.from_bytes(self.scratch[self.start : self.start + LENGTH_BYTES], "big")
            if n > self.max_frame_bytes:
                self.on_too_large(n)
                self.abort()
                return
            if n > SMALL_FRAME_BYTES:
                self._begin_body(n)
            elif self.end - self.start - LENGTH_BYTES >= n:
                self.start += LENGTH_BYTES
                self.on_frame(self._take(n))
            else:
                return  # a small frame not complete yet: wait for more in scratch

    def _begin_body(self, n: int) -> None:
        self.start += LENGTH_BYTES
        got = min(self.end - self.start, n)
        self.body = self.pool.get(n) if n > MAPPED_FRAME_BYTES else bytearray(n)
        self.body[:got] = self.scratch[self.start : self.start + got]
        self.start += got
        self.body_len, self.have = n, got  # got < n: the frame does not fit in scratch

    def _feed_handshake(self) -> None:
        if self.want is not None and self.end - self.start >= self.want[0]:
            n, fut = self.want
            self.want = None
            if not fut.done():
                fut.set_result(self._take(n))
        if self.end == len(self.scratch) and self.start == 0:
            self.transport.pause_reading()  # unauthenticated: never more than the scratch buffer
