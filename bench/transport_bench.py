"""Transport benchmark: SkipPipe transport vs plain asyncio TCP (and stock DecCom) on loopback.

    .venv/bin/python bench/transport_bench.py [--runs 5] [--messages 8] [--round-trips 200]

Measures, side by side and interleaved run by run (so machine noise hits every contender alike):
- throughput: `--messages` messages of 16 MiB from node 0 to node 1, timed until the receiver
  holds the last one (MiB/s);
- round trip: a 64 B payload to node 1 and back, `--round-trips` times (median, ms).
Sender and receiver share one process and one event loop. Plain asyncio uses the same framing
(8-byte length prefix, one write per frame) and the same StreamReader limit, in two variants:
`readexactly(n)` (the obvious code) and "sliced" (large frames read in 1 MiB slices into one
preallocated buffer, as the transport does); the throughput target is checked against the
faster of the two, so the difference is the transport's own work (wire encode/decode,
validation, DecCom layers, queues). Stock DecCom 0.1.0 (`StreamProtocol.send_stream`) is shown
for reference with fewer messages and round trips, as each round trip takes ~90 ms.
Targets: throughput >= 60% of plain asyncio; 64 B round trip <= 2 ms. Prints a table; exits 1
when a target is missed.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import deccom.nodes  # noqa: E402,F401  (loaded before the transport quiets DecCom's prints)
from skippipe.runtime.deccom_adapter import node_key  # noqa: E402
from skippipe.runtime.streams import read_exactly  # noqa: E402
from skippipe.runtime.transport import Transport, TransportConfig  # noqa: E402
from skippipe.runtime.wire import Kind, Message  # noqa: E402
from skippipe.util.tables import format_table  # noqa: E402

HOST = "127.0.0.1"
MIB = 1024**2
BIG_BYTES = 16 * MIB  # throughput message size
SMALL_BYTES = 64  # round-trip payload size
PLAIN_PREFIX_BYTES = 8  # plain asyncio frame length prefix
STOCK_ROUND_TRIPS = 10  # stock DecCom stalls ~90 ms per round trip: keep its run short
STOCK_MESSAGES = 2  # stock DecCom reads 9 KB at a time: keep its run short
THROUGHPUT_TARGET = 0.60  # transport / plain asyncio
RTT_TARGET_MS = 2.0
LIMIT = TransportConfig().stream_limit_bytes  # StreamReader limit used by every contender


# ---- SkipPipe transport ---------------------------------------------------------------------

class TransportPair:
    name = "skippipe transport"

    async def start(self, run_dir: Path) -> None:
        self.a = await Transport(0, HOST, 0, {}, run_dir / "n0").start()
        self.b = await Transport(1, HOST, 0, {}, run_dir / "n1").start()
        self.a.add_peer(1, *self.b.address)
        self.b.add_peer(0, *self.a.address)
        self.big = Message(Kind.FORWARD, 0, shape=(BIG_BYTES,), payload=bytes(BIG_BYTES))
        self.small = Message(Kind.FORWARD, 0, shape=(SMALL_BYTES,), payload=bytes(SMALL_BYTES))
        await self.round_trips(1)  # connect both ways

    async def throughput(self, count: int) -> float:
        start = time.perf_counter()
        receiver = asyncio.create_task(_take(self.b.recv, count))
        for _ in range(count):
            await self.a.send(1, self.big)
        await receiver
        return count * BIG_BYTES / MIB / (time.perf_counter() - start)

    async def round_trips(self, count: int) -> list[float]:
        reply = Message(Kind.BACKWARD, 1, shape=(SMALL_BYTES,), payload=bytes(SMALL_BYTES))
        times = []
        for _ in range(count):
            start = time.perf_counter()
            await self.a.send(1, self.small)
            await self.b.recv()
            await self.b.send(0, reply)
            await self.a.recv()
            times.append(time.perf_counter() - start)
        return times

    async def stop(self) -> None:
        await self.a.stop()
        await self.b.stop()


async def _take(get, count: int) -> None:
    for _ in range(count):
        await get()


# ---- plain asyncio --------------------------------------------------------------------------

class PlainPair:
    """Plain asyncio streams. `sliced=True` reads frames with the transport's own reader (big
    ones in 1 MiB slices into one buffer); otherwise the obvious `readexactly(n)`."""

    def __init__(self, sliced: bool = False) -> None:
        self.sliced = sliced
        self.name = "plain asyncio, sliced" if sliced else "plain asyncio"

    async def start(self, run_dir: Path) -> None:
        self.inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self.peer_writer: asyncio.StreamWriter | None = None  # set by _serve
        self.server = await asyncio.start_server(self._serve, HOST, 0, limit=LIMIT)
        port = self.server.sockets[0].getsockname()[1]
        self.reader, self.writer = await asyncio.open_connection(HOST, port, limit=LIMIT)
        self.big, self.small = bytes(BIG_BYTES), bytes(SMALL_BYTES)
        await self.round_trips(1)

    async def _serve(self, reader, writer) -> None:
        self.peer_writer, self.serve_task = writer, asyncio.current_task()
        try:
            while True:
                n = int.from_bytes(await reader.readexactly(PLAIN_PREFIX_BYTES), "big")
                read = read_exactly if self.sliced else _read_whole
                await self.inbox.put(await read(reader, n))
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    @staticmethod
    def _send(writer: asyncio.StreamWriter, data: bytes):
        writer.write(b"".join((len(data).to_bytes(PLAIN_PREFIX_BYTES, "big"), data)))
        return writer.drain()

    async def throughput(self, count: int) -> float:
        start = time.perf_counter()
        receiver = asyncio.create_task(_take(self.inbox.get, count))
        for _ in range(count):
            await self._send(self.writer, self.big)
        await receiver
        return count * BIG_BYTES / MIB / (time.perf_counter() - start)

    async def round_trips(self, count: int) -> list[float]:
        times = []
        for _ in range(count):
            start = time.perf_counter()
            await self._send(self.writer, self.small)
            data = await self.inbox.get()
            await self._send(self.peer_writer, data)
            n = int.from_bytes(await self.reader.readexactly(PLAIN_PREFIX_BYTES), "big")
            await self.reader.readexactly(n)
            times.append(time.perf_counter() - start)
        return times

    async def stop(self) -> None:
        self.writer.close()
        self.peer_writer.close()
        await asyncio.wait([self.serve_task])  # ends on end of stream
        self.server.close()
        await self.server.wait_closed()


async def _read_whole(reader: asyncio.StreamReader, n: int) -> bytes:
    return await reader.readexactly(n)


# ---- stock DecCom 0.1.0 (reference) ---------------------------------------------------------

class StockDecComPair:
    name = "stock deccom 0.1.0"

    async def start(self, run_dir: Path) -> None:
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
            streams = StreamProtocol(False, stream_callback=lambda d, n, a, i=i:
                                     self.inbox[i].put_nowait(d))
            streams.set_lower(discovery)
            node = StreamNode(Peer(None, pub_key=str(i)), streams, ip_addr=HOST)
            await node.listen()
            self.nodes.append(node)
            self.streams.append(streams)
        for i in (0, 1):  # each learns the other from a static table
            other = self.nodes[1 - i]
            peer = Peer((HOST, other.port), pub_key=str(1 - i), tcp=other.tcp_port)
            self.streams[i].submodule.peers[peer.id_node] = peer
        await self.streams[0].open_connection(HOST, self.nodes[1].tcp_port, node_key(1),
                                              port_listen=0)
        self.big, self.small = bytes(BIG_BYTES), bytes(SMALL_BYTES)
        await self.round_trips(1)

    async def throughput(self, count: int) -> float:
        start = time.perf_counter()
        receiver = asyncio.create_task(_take(self.inbox[1].get, count))
        for _ in range(count):
            await self.streams[0].send_stream(node_key(1), self.big)
        await receiver
        return count * BIG_BYTES / MIB / (time.perf_counter() - start)

    async def round_trips(self, count: int) -> list[float]:
        times = []
        for _ in range(count):
            start = time.perf_counter()
            await self.streams[0].send_stream(node_key(1), self.small)
            data = await self.inbox[1].get()
            await self.streams[1].send_stream(node_key(0), bytes(data))
            await self.inbox[0].get()
            times.append(time.perf_counter() - start)
        return times

    async def stop(self) -> None:
        for streams, node in zip(self.streams, self.nodes):
            await streams.stop()
            node.transport.close()
            node.server.close()


# ---- driver ---------------------------------------------------------------------------------

async def measure(args) -> dict[str, dict[str, list[float]]]:
    contenders = [TransportPair(), PlainPair(), PlainPair(sliced=True)]
    contenders += [] if args.no_stock else [StockDecComPair()]
    results = {c.name: {"throughput": [], "rtt": []} for c in contenders}
    with tempfile.TemporaryDirectory(prefix="transport-bench-") as tmp:
        for c in contenders:
            await c.start(Path(tmp))
        try:
            for _ in range(args.runs):
                for c in contenders:
                    stock = isinstance(c, StockDecComPair)
                    count = STOCK_MESSAGES if stock else args.messages
                    trips = STOCK_ROUND_TRIPS if stock else args.round_trips
                    results[c.name]["throughput"].append(await c.throughput(count))
                    rtts = await c.round_trips(trips)
                    results[c.name]["rtt"].append(statistics.median(rtts) * 1e3)
        finally:
            for c in contenders:
                await c.stop()
    return results


def report(results: dict, args) -> int:
    names = list(results)
    print(f"loopback {HOST}, one process and event loop, {args.runs} interleaved runs; "
          f"median over runs (each run: {args.messages} x 16 MiB, "
          f"median of {args.round_trips} round trips)")
    tput = {n: statistics.median(r["throughput"]) for n, r in results.items()}
    rtt = {n: statistics.median(r["rtt"]) for n, r in results.items()}
    # one column per contender; each row has its own unit, so its cells come formatted
    print(format_table(["", *names], [["throughput 16 MiB (MiB/s)", *(f"{tput[n]:.0f}" for n in names)],
                                      ["round trip 64 B (ms)", *(f"{rtt[n]:.3f}" for n in names)]]))
    plain = max(tput["plain asyncio"], tput["plain asyncio, sliced"])  # the stronger baseline
    ratio = tput["skippipe transport"] / plain
    ok_tput = ratio >= THROUGHPUT_TARGET
    ok_rtt = rtt["skippipe transport"] <= RTT_TARGET_MS
    print(f"throughput ratio transport / best plain asyncio: {ratio:.0%} "
          f"(target >= {THROUGHPUT_TARGET:.0%}) "
          f"{'PASS' if ok_tput else 'FAIL'}")
    print(f"transport 64 B round trip: {rtt['skippipe transport']:.3f} ms "
          f"(target <= {RTT_TARGET_MS} ms) {'PASS' if ok_rtt else 'FAIL'}")
    return 0 if ok_tput and ok_rtt else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="interleaved runs per contender")
    parser.add_argument("--messages", type=int, default=8, help="16 MiB messages per run")
    parser.add_argument("--round-trips", type=int, default=200, help="64 B round trips per run")
    parser.add_argument("--no-stock", action="store_true", help="skip stock DecCom")
    args = parser.parse_args()
    return report(asyncio.run(measure(args)), args)


if __name__ == "__main__":
    sys.exit(main())
