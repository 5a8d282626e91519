"""Transport benchmark: SkipPipe transport vs a plain Python socket loop (and stock DecCom) on
loopback.

    .venv/bin/python -m bench.transport_bench [--runs 5] [--messages 8] [--round-trips 200]

Measures, side by side and interleaved run by run (so machine noise hits every contender alike):
- throughput: `--messages` messages of 16 MiB from node 0 to node 1, timed until the receiver
  holds the last one (MiB/s);
- round trip: a 64 B payload to node 1 and back, `--round-trips` times (median, ms).
Sender and receiver run in two threads of one process, each SkipPipe node on its own event
loop (as two node processes would, each with its loop). "raw socket" is the floor of what Python
can do: blocking sockets, `sendall` of each message and `recv_into` one preallocated buffer, in
the same two threads. The transport adds authentication, framing, wire decoding, validation and
DecCom's layers. Stock DecCom 0.1.0 (`StreamProtocol.send_stream`) is shown for reference with
fewer messages and round trips, as each round trip takes ~90 ms.
Targets: throughput >= 50% of the raw socket loop (median of the runs' ratios); 64 B round trip
<= 0.2 ms. Prints a table;
exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import deccom.nodes  # noqa: F401  (loaded before the transport quiets DecCom's prints)

from skippipe.runtime.net.auth import RunAuth
from skippipe.runtime.net.deccom_adapter import node_key
from skippipe.runtime.net.transport import Transport
from skippipe.runtime.net.wire import Kind, Message
from skippipe.util.tables import format_table

HOST = "127.0.0.1"
MIB = 1024**2
BIG_BYTES = 16 * MIB  # throughput message size
SMALL_BYTES = 64  # round-trip payload size
STOCK_ROUND_TRIPS = 10  # stock DecCom stalls ~90 ms per round trip: keep its run short
STOCK_MESSAGES = 2  # stock DecCom reads 9 KB at a time: keep its run short
THROUGHPUT_TARGET = 0.50  # transport / raw socket loop
RTT_TARGET_MS = 0.2
TRANSPORT, RAW = "skippipe transport", "raw socket"


class LoopThread:
    """An event loop running in its own thread; `run(coro)` waits for a coroutine on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def submit(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro):
        return self.submit(coro).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


# ---- SkipPipe transport ---------------------------------------------------------------------


class TransportPair:
    """Nodes 0 and 1 of one run, each on its own loop thread."""

    name = TRANSPORT

    def start(self, run_dir: Path) -> None:
        auth = RunAuth.generate()
        self.loops = [LoopThread(), LoopThread()]
        self.t = [
            self.loops[i].run(Transport(i, HOST, 0, {}, run_dir / f"n{i}", auth=auth).start()) for i in (0, 1)
        ]
        for i in (0, 1):
            self.t[i].add_peer(1 - i, *self.t[1 - i].address)
        self.big = Message(Kind.FORWARD, 0, shape=(BIG_BYTES,), payload=bytes(BIG_BYTES))
        self.small = Message(Kind.FORWARD, 0, shape=(SMALL_BYTES,), payload=bytes(SMALL_BYTES))
        self.reply = Message(Kind.BACKWARD, 1, shape=(SMALL_BYTES,), payload=bytes(SMALL_BYTES))
        self.round_trips(1)  # connect both ways

    def throughput(self, count: int) -> float:
        start = time.perf_counter()
        received = self.loops[1].submit(_take(self.t[1].recv, count))
        self.loops[0].run(self._send_big(count))
        received.result()
        return count * BIG_BYTES / MIB / (time.perf_counter() - start)

    async def _send_big(self, count: int) -> None:
        for _ in range(count):
            await self.t[0].send(1, self.big)

    def round_trips(self, count: int) -> list[float]:
        echo = self.loops[1].submit(self._echo(count))
        times = self.loops[0].run(self._ping(count))
        echo.result()
        return times

    async def _ping(self, count: int) -> list[float]:
        times = []
        for _ in range(count):
            start = time.perf_counter()
            await self.t[0].send(1, self.small)
            await self.t[0].recv()
            times.append(time.perf_counter() - start)
        return times

    async def _echo(self, count: int) -> None:
        for _ in range(count):
            await self.t[1].recv()
            await self.t[1].send(0, self.reply)

    def stop(self) -> None:
        for loop, t in zip(self.loops, self.t):
            loop.run(t.stop())
            loop.close()


async def _take(get, count: int) -> None:
    for _ in range(count):
        await get()


# ---- raw sockets ----------------------------------------------------------------------------


class RawPair:
    """Blocking sockets: `sendall` on one thread, `recv_into` a preallocated buffer on another."""

    name = RAW

    def start(self, run_dir: Path) -> None:
        with socket.create_server((HOST, 0)) as server:
            self.tx = socket.create_connection(server.getsockname())
            self.rx, _ = server.accept()
        for sock in (self.tx, self.rx):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.big, self.small = bytes(BIG_BYTES), bytes(SMALL_BYTES)
        self.buffer = bytearray(BIG_BYTES)

    def _receive(self, sock: socket.socket, n: int, count: int) -> None:
        view = memoryview(self.buffer)[:n]
        for _ in range(count):
            got = 0
            while got < n:
                got += sock.recv_into(view[got:])

    def throughput(self, count: int) -> float:
        start = time.perf_counter()
        receiver = threading.Thread(target=self._receive, args=(self.rx, BIG_BYTES, count))
        receiver.start()
        for _ in range(count):
            self.tx.sendall(self.big)
        receiver.join()
        return count * BIG_BYTES / MIB / (time.perf_counter() - start)

    def _echo(self, count: int) -> None:
        for _ in range(count):
            self._receive(self.rx, SMALL_BYTES, 1)
            self.rx.sendall(self.small)

    def round_trips(self, count: int) -> list[float]:
        echo = threading.Thread(target=self._echo, args=(count,))
        echo.start()
        times = []
        for _ in range(count):
            start = time.perf_counter()
            self.tx.sendall(self.small)
            self._receive(self.tx, SMALL_BYTES, 1)
            times.append(time.perf_counter() - start)
        echo.join()
        return times

    def stop(self) -> None:
        self.tx.close()
        self.rx.close()


# ---- stock DecCom 0.1.0 (reference) ---------------------------------------------------------


class StockDecComPair:
    """Stock DecCom on one loop thread (its coroutines wrapped by `run`)."""

    name = "stock deccom 0.1.0"

    def start(self, run_dir: Path) -> None:
        self.loop = LoopThread()
        self.loop.run(self._start())

    def throughput(self, count: int) -> float:
        return self.loop.run(self._throughput(count))

    def round_trips(self, count: int) -> list[float]:
        return self.loop.run(self._round_trips(count))

    def stop(self) -> None:
        self.loop.run(self._stop())
        self.loop.close()

    async def _start(self) -> None:
        from deccom.nodes import StreamNode
        from deccom.peers import Peer
        from deccom.protocols.defaultprotocol import DefaultProtocol
        from deccom.protocols.peerdiscovery import FixedPeers
        from deccom.protocols.streamprotocol import StreamProtocol

        self.inbox = {0: asyncio.Queue(), 1: asyncio.Queue()}
        self.nodes, self.streams = [], []
        for i in (0, 1):
            udp, streams = DefaultProtocol(), None
            discovery = FixedPeers([])
            discovery.set_lower(udp)
            streams = StreamProtocol(False, stream_callback=lambda d, n, a, i=i: self.inbox[i].put_nowait(d))
            streams.set_lower(discovery)
            node = StreamNode(Peer(None, pub_key=str(i)), streams, ip_addr=HOST)
            await node.listen()
            self.nodes.append(node)
            self.streams.append(streams)
        for i in (0, 1):  # each learns the other from a static table
            other = self.nodes[1 - i]
            peer = Peer((HOST, other.port), pub_key=str(1 - i), tcp=other.tcp_port)
            self.streams[i].submodule.peers[peer.id_node] = peer
        await self.streams[0].open_connection(HOST, self.nodes[1].tcp_port, node_key(1), port_listen=0)
        self.big, self.small = bytes(BIG_BYTES), bytes(SMALL_BYTES)
        await self._round_trips(1)

    async def _throughput(self, count: int) -> float:
        start = time.perf_counter()
        receiver = asyncio.create_task(_take(self.inbox[1].get, count))
        for _ in range(count):
            await self.streams[0].send_stream(node_key(1), self.big)
        await receiver
        return count * BIG_BYTES / MIB / (time.perf_counter() - start)

    async def _round_trips(self, count: int) -> list[float]:
        times = []
        for _ in range(count):
            start = time.perf_counter()
            await self.streams[0].send_stream(node_key(1), self.small)
            data = await self.inbox[1].get()
            await self.streams[1].send_stream(node_key(0), bytes(data))
            await self.inbox[0].get()
            times.append(time.perf_counter() - start)
        return times

    async def _stop(self) -> None:
        for streams, node in zip(self.streams, self.nodes):
            await streams.stop()
            node.transport.close()
            node.server.close()


# ---- driver ---------------------------------------------------------------------------------


def measure(args) -> dict[str, dict[str, list[float]]]:
    contenders = [TransportPair(), RawPair()] + ([] if args.no_stock else [StockDecComPair()])
    results = {c.name: {"throughput": [], "rtt": []} for c in contenders}
    with tempfile.TemporaryDirectory(prefix="transport-bench-") as tmp:
        started = []
        try:
            for c in contenders:
                c.start(Path(tmp))
                started.append(c)
            for _ in range(args.runs):
                for c in contenders:
                    stock = isinstance(c, StockDecComPair)
                    count = STOCK_MESSAGES if stock else args.messages
                    trips = STOCK_ROUND_TRIPS if stock else args.round_trips
                    results[c.name]["throughput"].append(c.throughput(count))
                    results[c.name]["rtt"].append(statistics.median(c.round_trips(trips)) * 1e3)
        finally:
            for c in started:
                c.stop()
    return results


def report(results: dict, args) -> int:
    names = list(results)
    print(
        f"loopback {HOST}, sender and receiver in two threads, {args.runs} interleaved runs; "
        f"median over runs (each run: {args.messages} x 16 MiB, "
        f"median of {args.round_trips} round trips)"
    )
    tput = {n: statistics.median(r["throughput"]) for n, r in results.items()}
    rtt = {n: statistics.median(r["rtt"]) for n, r in results.items()}
    # one column per contender; each row has its own unit, so its cells come formatted
    print(
        format_table(
            ["", *names],
            [
                ["throughput 16 MiB (MiB/s)", *(f"{tput[n]:.0f}" for n in names)],
                ["round trip 64 B (ms)", *(f"{rtt[n]:.3f}" for n in names)],
            ],
        )
    )
    # each run's transport / raw socket, then the median: load that comes and goes between
    # runs cancels out (both columns of a run see the same load)
    ratio = statistics.median(
        t / r for t, r in zip(results[TRANSPORT]["throughput"], results[RAW]["throughput"])
    )
    ok_tput, ok_rtt = ratio >= THROUGHPUT_TARGET, rtt[TRANSPORT] <= RTT_TARGET_MS
    print(
        f"throughput ratio transport / raw socket (median of the runs' ratios): {ratio:.0%} (target >= "
        f"{THROUGHPUT_TARGET:.0%}) {'PASS' if ok_tput else 'FAIL'}"
    )
    print(
        f"transport 64 B round trip: {rtt[TRANSPORT]:.3f} ms "
        f"(target <= {RTT_TARGET_MS} ms) {'PASS' if ok_rtt else 'FAIL'}"
    )
    return 0 if ok_tput and ok_rtt else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="interleaved runs per contender")
    parser.add_argument("--messages", type=int, default=8, help="16 MiB messages per run")
    parser.add_argument("--round-trips", type=int, default=200, help="64 B round trips per run")
    parser.add_argument("--no-stock", action="store_true", help="skip stock DecCom")
    args = parser.parse_args()
    return report(measure(args), args)


if __name__ == "__main__":
    sys.exit(main())
