"""Transport over loopback: exchange, rejection of bad input, timeouts, busy ports, discovery
(attacks by peers without the run key: test_attacks.py).

Every test runs its own event loop under a deadline and waits on events, never on sleeps.
Ports are picked by the OS (port 0) or found free (util.ports), so tests do not collide with
other processes.
"""

import asyncio
import logging
import socket
import time

import numpy as np
import pytest

from netutil import framed, node, raw_connect
from skippipe.runtime.net.connection import LENGTH_BYTES
from skippipe.runtime.net.frames import TransportConfig
from skippipe.runtime.net.linkemu import LinkEmulator, LinkModel
from skippipe.runtime.net.transport import SEED, PortInUse, SendTimeout, TransportError, UnknownPeer
from skippipe.runtime.net.wire import Kind, Message, encode
from skippipe.util.ports import free_port

HOST = "127.0.0.1"
TEST_DEADLINE_S = 20.0  # an async test that takes longer than this has hung
WAIT_S = 5.0  # deadline for one expected event
MIB = 1024**2


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, TEST_DEADLINE_S))


async def pair(tmp_path, config=TransportConfig(), **kwargs):
    """Two started transports of one run, nodes 0 and 1, that know each other."""
    a = await node(0, HOST, 0, {}, tmp_path / "n0", config=config, **kwargs).start()
    b = await node(1, HOST, 0, {}, tmp_path / "n1", config=config).start()
    a.add_peer(1, *b.address)
    b.add_peer(0, *a.address)
    return a, b


def heartbeat(sender: int, microbatch: int = 0) -> Message:
    return Message(Kind.HEARTBEAT, sender, microbatch=microbatch)


def test_exchange_both_ways_in_order(tmp_path):
    tensor = np.random.default_rng(0).standard_normal((256, 1024)).astype(np.float32)  # 1 MiB

    async def main():
        a, b = await pair(tmp_path)
        async with a, b:
            # concurrent sends while the connection is still being opened keep their order
            await asyncio.gather(*(a.send(1, heartbeat(0, i)) for i in range(20)))
            assert [(await b.recv(WAIT_S)).microbatch for _ in range(20)] == list(range(20))
            await a.send(
                1, Message.from_tensor(Kind.FORWARD, 0, tensor, iteration=3, microbatch=5, tags=(2, 1))
            )
            got = await b.recv(WAIT_S)
            assert (got.kind, got.sender, got.iteration, got.microbatch) == (Kind.FORWARD, 0, 3, 5)
            np.testing.assert_array_equal(got.to_numpy(), tensor)
            await b.send(0, Message.from_json(Kind.CONTROL, 1, {"ack": 5}))
            assert (await a.recv(WAIT_S)).json() == {"ack": 5}
            await a.send(0, heartbeat(0, 9))  # to itself
            assert (await a.recv(WAIT_S)).microbatch == 9

    run(main())


def test_malformed_frames_are_rejected_and_the_node_keeps_running(tmp_path, caplog):
    async def main():
        a, b = await pair(tmp_path)
        async with a, b:
            reader, writer = await raw_connect(a, as_node=1)
            writer.write(framed(b"garbage"))
            writer.write(framed(b"XX" + encode(heartbeat(1))[2:]))  # bad magic
            writer.write(framed(encode(heartbeat(1))[:-1]))  # truncated inside the frame
            writer.write(framed(encode(heartbeat(2))))  # claims to be node 2 on node 1's line
            writer.write(framed(encode(heartbeat(1, microbatch=7))))
            got = await a.recv(WAIT_S)  # frames of one connection are handled in order
            assert (got.sender, got.microbatch) == (1, 7)
            assert a.rejections["malformed"] == 3 and a.rejections["spoofed_sender"] == 1
            writer.close()
            await b.send(0, heartbeat(1, 8))
            assert (await a.recv(WAIT_S)).microbatch == 8

    with caplog.at_level(logging.WARNING, logger="skippipe.runtime.net.transport"):
        run(main())
    assert any("[node 0] rejected (malformed)" in r.getMessage() for r in caplog.records)


def test_unknown_node_key_is_refused(tmp_path):
    async def main():
        a, b = await pair(tmp_path)
        async with a, b:
            with pytest.raises(asyncio.IncompleteReadError):  # closed: no challenge for node 99
                await raw_connect(a, as_node=99)
            assert a.rejections["unknown_sender"] == 1
            await b.send(0, heartbeat(1, 3))
            assert (await a.recv(WAIT_S)).microbatch == 3
            assert a.pending() == 0

    run(main())


def test_oversized_length_closes_only_that_connection(tmp_path):
    config = TransportConfig(max_frame_bytes=MIB)

    async def main():
        a, b = await pair(tmp_path, config)
        async with a, b:
            reader, writer = await raw_connect(a, as_node=1)
            writer.write((MIB + 1).to_bytes(LENGTH_BYTES, "big"))
            assert await asyncio.wait_for(reader.read(), WAIT_S) == b""
            assert a.rejections["bad_length"] == 1
            writer.close()
            await b.send(0, heartbeat(1, 4))
            assert (await a.recv(WAIT_S)).microbatch == 4

    run(main())


def test_send_to_a_dead_peer_times_out_within_the_deadline(tmp_path):
    timeout_s = 0.3
    dead = free_port(HOST)

    async def main():
        a = await node(0, HOST, 0, {5: (HOST, dead)}, tmp_path).start()
        async with a:
            start = time.monotonic()
            expected = rf"node 5 \({HOST}:{dead}\).*0.3 s.*Connection refused"
            with pytest.raises(SendTimeout, match=expected):
                await a.send(5, heartbeat(0), timeout_s=timeout_s)
            return time.monotonic() - start

    elapsed = run(main())
    assert timeout_s <= elapsed < timeout_s + 1.0


def test_send_to_a_peer_that_stops_reading_times_out(tmp_path):
    big = Message(Kind.WEIGHTS, 0, shape=(32 * MIB,), payload=bytes(32 * MIB))  # > socket buffers

    async def main():
        accepted, release = asyncio.Event(), asyncio.Event()

        async def never_read(reader, writer):
            accepted.set()
            await release.wait()
            writer.close()

        server = await asyncio.start_server(never_read, HOST, 0)
        port = server.sockets[0].getsockname()[1]
        a = await node(0, HOST, 0, {3: (HOST, port)}, tmp_path).start()
        async with a, server:
            with pytest.raises(SendTimeout, match="node 3"):
                await a.send(3, big, timeout_s=0.5)
            assert accepted.is_set()
            release.set()

    run(main())


def test_unknown_destination_and_stopped_transport(tmp_path):
    async def main():
        a = await node(0, HOST, 0, {}, tmp_path).start()
        async with a:
            with pytest.raises(UnknownPeer, match="node 8 is not in the peer table"):
                await a.send(8, heartbeat(0))
            with pytest.raises(ValueError, match="sender"):
                await a.send(8, heartbeat(1))
        with pytest.raises(TransportError, match="not running"):
            await a.send(8, heartbeat(0))

    run(main())


def test_port_in_use_is_one_clear_error(tmp_path):
    async def main():
        a = await node(0, HOST, 0, {}, tmp_path).start()
        async with a:
            port = a.address[1]
            with pytest.raises(PortInUse, match=rf"^\[node 1\] port {HOST}:{port} in use$"):
                await node(1, HOST, port, {}, tmp_path).start()
        with socket.socket() as listener:  # a plain TCP listener holds the port
            listener.bind((HOST, 0))
            listener.listen()
            port = listener.getsockname()[1]
            with pytest.raises(PortInUse, match=f"port {HOST}:{port} in use"):
                await node(2, HOST, port, {}, tmp_path).start()

    run(main())


def test_peer_restart_is_noticed_and_reconnected(tmp_path):
    async def main():
        lost = asyncio.Event()
        a, b = await pair(tmp_path, on_disconnect=lambda node: node == 1 and lost.set())
        async with a:
            await a.send(1, heartbeat(0, 1))
            assert (await b.recv(WAIT_S)).microbatch == 1
            port = b.address[1]
            await b.stop()
            await asyncio.wait_for(lost.wait(), WAIT_S)
            async with node(1, HOST, port, {0: a.address}, tmp_path / "n1b") as b2:
                await a.send(1, heartbeat(0, 2))
                assert (await b2.recv(WAIT_S)).microbatch == 2

    run(main())


def test_link_emulation_delays_and_queues_sends(tmp_path):
    # 40 ms latency, 1 MB/s: a 10 kB frame is serialized in ~10 ms
    model = LinkModel(latency_s=0.04, bandwidth_bytes_per_s=1e6, per_hop_overhead_s=0.0, time_scale=1.0)

    async def main():
        a, b = await pair(tmp_path, emulator=LinkEmulator(0, {1: model}))
        async with a, b:
            msg = Message(Kind.FORWARD, 0, shape=(10_000,), payload=bytes(10_000))
            start = time.monotonic()
            await asyncio.gather(a.send(1, msg), a.send(1, msg))
            arrivals = []
            for _ in range(2):
                await b.recv(WAIT_S)
                arrivals.append(time.monotonic() - start)
            return arrivals

    first, second = run(main())
    ser = model.serialization_s(Message(Kind.FORWARD, 0, shape=(10_000,), payload=bytes(10_000)).nbytes)
    assert first >= 0.04 + ser
    assert second >= 0.04 + 2 * ser


def test_bootstrap_discovery_finds_peers(tmp_path):
    async def main():
        seed = await node(0, HOST, 0, run_dir=tmp_path / "s", bootstrap=SEED).start()
        a = await node(1, HOST, 0, run_dir=tmp_path / "a", bootstrap=seed.address).start()
        b = await node(2, HOST, 0, run_dir=tmp_path / "b", bootstrap=seed.address).start()
        async with seed, a, b:
            await a.send(2, heartbeat(1, 6), timeout_s=WAIT_S)
            assert (await b.recv(WAIT_S)).microbatch == 6
            await b.send(1, heartbeat(2, 7), timeout_s=WAIT_S)
            assert (await a.recv(WAIT_S)).sender == 2

    run(main())


def test_deccom_writes_no_files_and_prints_nothing(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)

    async def main():
        a, b = await pair(tmp_path)
        async with a, b:
            await a.send(1, heartbeat(0))
            await b.recv(WAIT_S)

    run(main())
    assert not list(tmp_path.glob("log*.txt"))
    assert capfd.readouterr().out == ""


def test_stop_flushes_what_was_sent(tmp_path):
    big = Message(Kind.WEIGHTS, 0, shape=(8 * MIB,), payload=bytes(8 * MIB))

    async def main():
        a, b = await pair(tmp_path)
        async with b:
            await a.send(1, big)
            await a.stop()
            assert (await b.recv(WAIT_S)).nbytes == big.nbytes

    run(main())


def test_frame_buffers_are_reused_only_once_no_message_refers_to_them():
    from skippipe.runtime.net.connection import POOL_MAX_BYTES, BufferPool

    pool = BufferPool(keep=2)
    first = pool.get(2 * MIB)
    view = memoryview(first)[:10]  # a message's payload still refers to it
    del first
    second = pool.get(2 * MIB)
    assert second is pool.buffers[1]
    del view, second
    assert pool.get(2 * MIB) is pool.buffers[0]  # free again
    assert pool.get(POOL_MAX_BYTES + 1) not in pool.buffers  # huge frames are not kept
