"""Attacks on a node's transport over loopback, by peers without the run key and by broken
peers with it: none may reach `recv`, allocate what it claims, or keep a connection open; the
authenticated peers keep exchanging messages throughout.

Every test runs its own event loop under a deadline and waits on events, never on sleeps.
"""

import asyncio
import json
import logging
import os
import resource
import secrets
import socket
import threading

import pytest

from netutil import AUTH, framed, node, raw_connect
from runtime_util import run_skippipe
from skippipe.runtime.net.auth import CHALLENGE_BYTES, HELLO_BYTES, AuthError, RunAuth
from skippipe.runtime.net.connection import LENGTH_BYTES
from skippipe.runtime.net.deccom_adapter import node_key
from skippipe.runtime.net.frames import TransportConfig
from skippipe.runtime.net.wire import Kind, Message, encode
from test_runtime import RUN_DEADLINE_S, _run, _wait_ready

HOST = "127.0.0.1"
TEST_DEADLINE_S = 30.0
HANDSHAKE_S = 0.5  # the attacked node's handshake deadline
WAIT_S = 5.0  # deadline for one expected event
IDLE_CONNECTIONS = 200
MIB = 1024**2
RSS_SLACK_MIB = 64  # a 2 GB allocation would show; allocator noise would not
LIMITS = TransportConfig(handshake_timeout_s=HANDSHAKE_S, max_frame_bytes=64 * MIB)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, TEST_DEADLINE_S))


def heartbeat(sender: int, microbatch: int = 0) -> Message:
    return Message(Kind.HEARTBEAT, sender, microbatch=microbatch)


async def pair(tmp_path, config: TransportConfig):
    a = await node(0, HOST, 0, {}, tmp_path / "n0", config=config).start()
    b = await node(1, HOST, 0, {}, tmp_path / "n1", config=config).start()
    a.add_peer(1, *b.address)
    b.add_peer(0, *a.address)
    return a, b


async def still_talking(a, b, tag: int = 0) -> None:
    """The authenticated peers exchange a message each way."""
    await b.send(0, heartbeat(1, tag))
    assert (await a.recv(WAIT_S)).microbatch == tag
    await a.send(1, heartbeat(0, tag))
    assert (await b.recv(WAIT_S)).microbatch == tag


def attack(tmp_path, attack_on, config: TransportConfig = LIMITS) -> None:
    """Nodes 0 and 1 of a run; `attack_on(a, b)` attacks node 0 `a`; then both still talk, and
    nothing of the attacker's waits in node 0's inbox."""

    async def main():
        a, b = await pair(tmp_path, config)
        async with a, b:
            await attack_on(a, b)
            await still_talking(a, b)
            assert a.pending() == 0

    run(main())


async def closed_by_peer(reader: asyncio.StreamReader) -> bytes:
    """What the attacked node sent before closing (read until end of stream or reset: closing
    a connection with unread bytes resets it)."""
    try:
        return await asyncio.wait_for(reader.read(), WAIT_S)
    except ConnectionResetError:
        return b""


async def send_and_see_closed(a, data: bytes) -> None:
    """A fresh connection to `a` sends `data` and is closed without getting anything."""
    reader, writer = await asyncio.open_connection(*a.address)
    writer.write(data)
    assert await closed_by_peer(reader) == b""
    writer.close()


def rss_mib() -> float:
    """Peak resident memory of this process so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_a_peer_without_the_key_cannot_pose_as_a_real_node(tmp_path, caplog):
    thief = RunAuth.generate()  # another key: another run id too
    same_run = RunAuth(AUTH.key[:-1] + bytes([AUTH.key[-1] ^ 1]))
    closed = []

    async def attack_on(a, b):
        a._on_disconnect = closed.append
        with pytest.raises(asyncio.IncompleteReadError):  # another run: no challenge at all
            await raw_connect(a, as_node=1, auth=thief)
        # it knows the run id (sent in the clear) and says hello as node 1 ...
        reader, writer = await asyncio.open_connection(*a.address)
        writer.write(AUTH.hello(node_key(1))[0])
        assert len(await reader.readexactly(CHALLENGE_BYTES)) == CHALLENGE_BYTES  # ... gets that
        writer.write(secrets.token_bytes(32))  # and cannot answer it
        writer.write(framed(encode(heartbeat(1, 66))))
        assert await closed_by_peer(reader) == b""
        writer.close()
        assert a.rejections["unauthenticated"] == 2
        with pytest.raises(asyncio.IncompleteReadError):  # a near miss of the key
            await raw_connect(a, as_node=1, auth=same_run)

    with caplog.at_level(logging.WARNING, logger="skippipe.runtime.net.transport"):
        attack(tmp_path, attack_on)
    assert closed == []  # node 1 was never taken for gone
    assert "from another run" in caplog.text and "the run keys differ" in caplog.text  # the first, in full


def test_a_silent_connection_is_closed_at_the_handshake_deadline(tmp_path):
    async def attack_on(a, b):
        loop = asyncio.get_running_loop()
        start = loop.time()
        await send_and_see_closed(a, os.urandom(HELLO_BYTES - 1))  # not quite a hello
        assert HANDSHAKE_S * 0.9 <= loop.time() - start < HANDSHAKE_S + 2.0
        assert a.rejections["bad_handshake"] == 1

    attack(tmp_path, attack_on)


def test_a_spoofed_sender_on_an_authenticated_connection_is_rejected(tmp_path):
    async def attack_on(a, b):
        reader, writer = await raw_connect(a, as_node=1)  # holds the key, claims node 2's frames
        writer.write(framed(encode(heartbeat(2, 5))))
        writer.write(framed(encode(heartbeat(1, 6))))
        got = await a.recv(WAIT_S)
        assert (got.sender, got.microbatch) == (1, 6)
        assert a.rejections["spoofed_sender"] == 1
        writer.close()

    attack(tmp_path, attack_on)


@pytest.mark.parametrize("length", [2**31, 2**40])
def test_a_huge_length_allocates_nothing_and_closes_the_connection(tmp_path, length):
    header = length.to_bytes(LENGTH_BYTES, "big")

    async def attack_on(a, b):
        before = rss_mib()
        reader, writer = await raw_connect(a, as_node=1)
        writer.write(header + os.urandom(1024))
        assert await closed_by_peer(reader) == b""
        writer.close()
        assert a.rejections["bad_length"] == 1
        await send_and_see_closed(a, header * 8)  # unauthenticated: its length is never read
        assert rss_mib() < before + RSS_SLACK_MIB

    attack(tmp_path, attack_on)


def test_a_large_frame_in_the_limit_takes_memory_only_as_it_arrives(tmp_path):
    async def attack_on(a, b):
        before = rss_mib()
        reader, writer = await raw_connect(a, as_node=1)
        writer.write((60 * MIB).to_bytes(LENGTH_BYTES, "big") + os.urandom(MIB))
        await writer.drain()
        await still_talking(a, b, 5)  # the partial frame blocks nothing else
        assert rss_mib() < before + RSS_SLACK_MIB / 2
        writer.close()

    attack(tmp_path, attack_on)


def test_random_bytes_reach_nothing(tmp_path):
    async def attack_on(a, b):
        for size in (1, HELLO_BYTES, 4096, MIB):
            await send_and_see_closed(a, os.urandom(size))

    attack(tmp_path, attack_on)


def test_idle_connections_are_closed_and_do_not_block_peers(tmp_path):
    async def attack_on(a, b):
        conns = [await asyncio.open_connection(*a.address) for _ in range(IDLE_CONNECTIONS)]
        await still_talking(a, b, 8)
        ends = await asyncio.gather(*(closed_by_peer(r) for r, _ in conns))
        assert ends == [b""] * IDLE_CONNECTIONS
        for _, writer in conns:
            writer.close()
        assert a.rejections["bad_handshake"] == IDLE_CONNECTIONS

    attack(tmp_path, attack_on)


def test_connections_beyond_the_unauthenticated_cap_are_closed_at_once(tmp_path):
    async def attack_on(a, b):
        held = [await asyncio.open_connection(*a.address) for _ in range(4)]
        await send_and_see_closed(a, b"")  # long before the handshake deadline
        assert a.rejections["busy"] == 1
        for _, writer in held:
            writer.close()

    attack(tmp_path, attack_on, TransportConfig(handshake_timeout_s=WAIT_S, max_unauthenticated=4))


FLOOD = 300  # refused connections in the flood test


def test_a_flood_of_refused_connections_logs_a_summary_not_a_line_each(tmp_path, caplog):
    async def attack_on(a, b):
        start = asyncio.get_running_loop().time()
        for _ in range(FLOOD // 3):  # wrong magic, another run's hello, random bytes
            await send_and_see_closed(a, b"x" * HELLO_BYTES)
            await send_and_see_closed(a, RunAuth.generate().hello(node_key(1))[0])
            await send_and_see_closed(a, os.urandom(HELLO_BYTES))
        assert a.rejections["unauthenticated"] == FLOOD
        return asyncio.get_running_loop().time() - start

    with caplog.at_level(logging.WARNING, logger="skippipe.runtime.net.transport"):
        attack(tmp_path, attack_on)
    lines = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    # the first in full, then one summary per interval (the flood may outlast one on a busy box)
    assert 2 <= len(lines) <= 4, lines
    assert lines[0].startswith("[node 0] rejected (unauthenticated): connection from")
    summaries = [int(line.split("rejected ")[1].split()[0]) for line in lines[1:]]
    assert sum(summaries) == FLOOD - 1 and "unauthenticated" in lines[-1]
    assert sum(len(line) for line in lines) < 2000


def test_an_unauthenticated_connection_holds_only_a_small_buffer(tmp_path):
    async def attack_on(a, b):
        held = [await asyncio.open_connection(*a.address) for _ in range(20)]
        for _, writer in held:
            writer.write(b"x" * 10)
        await wait_for(lambda: len(a._streams.unauthenticated) == 20)
        assert max(len(c.scratch) for c in a._streams.unauthenticated) <= 256  # not 64 KiB each
        for _, writer in held:
            writer.close()

    attack(tmp_path, attack_on, TransportConfig(handshake_timeout_s=WAIT_S))


def test_a_refused_frame_names_its_authenticated_sender(tmp_path, caplog):
    async def attack_on(a, b):
        reader, writer = await raw_connect(a, as_node=1)
        writer.write((2**40).to_bytes(LENGTH_BYTES, "big"))
        assert await closed_by_peer(reader) == b""
        writer.close()

    with caplog.at_level(logging.WARNING, logger="skippipe.runtime.net.transport"):
        attack(tmp_path, attack_on)
    assert any("from node 1 exceeds" in r.getMessage() for r in caplog.records), caplog.text


async def wait_for(condition, timeout_s: float = WAIT_S) -> None:
    """Poll `condition` on the loop (each poll yields to the node) until it holds."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def test_measurement_runs_on_its_public_key_and_a_training_key_is_refused(tmp_path):
    async def main():
        m0 = await node(0, HOST, 0, {}, tmp_path / "m0", auth=RunAuth.public()).start()
        m1 = await node(1, HOST, 0, {}, tmp_path / "m1", auth=RunAuth.public()).start()
        m0.add_peer(1, *m1.address)
        m1.add_peer(0, *m0.address)
        async with m0, m1:
            await still_talking(m0, m1, 11)
            with pytest.raises(asyncio.IncompleteReadError):
                await raw_connect(m0, as_node=1, auth=AUTH)
            assert m0.rejections["unauthenticated"] == 1

    run(main())


def test_a_reflected_challenge_is_no_proof_and_nonces_are_fresh():
    a_key, c_key = node_key(0), node_key(1)
    hello, nonce = AUTH.hello(c_key)
    challenge, transcript = AUTH.challenge(a_key, *AUTH.parse_hello(hello))
    with pytest.raises(AuthError):  # the acceptor's own MAC sent back
        AUTH.check_proof(challenge[-32:], transcript)
    AUTH.check_proof(AUTH.answer(challenge, c_key, a_key, nonce), transcript)
    with pytest.raises(AuthError, match="another node"):  # not the node we meant to reach
        AUTH.answer(challenge, c_key, node_key(2), nonce)
    assert AUTH.hello(c_key)[1] != nonce and AUTH.challenge(a_key, c_key, nonce)[1] != transcript


# ---- a training swarm under attack ------------------------------------------------------------


def _attack(tmp_path, base: int, nodes: int, done: threading.Event) -> None:
    """Without the key: hold 200 idle connections, pose as every real node (run id sniffed off
    the wire: here derived from the config), send huge length headers with and without a
    handshake, and random bytes."""
    if not _wait_ready(tmp_path, 0):
        return
    cfg = json.loads(next((tmp_path / "runs").glob("*/config.json")).read_text())
    run_id = RunAuth.from_hex(cfg["run_key"], "config").run_id
    idle = [
        socket.create_connection((HOST, base + i % nodes), timeout=WAIT_S) for i in range(IDLE_CONNECTIONS)
    ]
    try:
        _pose_and_flood(base, nodes, run_id)
    finally:
        for s in idle:
            s.close()
    done.set()


def _pose_and_flood(base: int, nodes: int, run_id: bytes) -> None:
    for port in range(base, base + nodes):
        for claimed in range(nodes):
            with socket.create_connection((HOST, port), timeout=WAIT_S) as s:
                s.sendall(b"SPa1" + run_id + node_key(claimed) + secrets.token_bytes(32))
                s.recv(CHALLENGE_BYTES)
                s.sendall(secrets.token_bytes(32) + (2**31).to_bytes(LENGTH_BYTES, "big"))
        for junk in ((2**40).to_bytes(LENGTH_BYTES, "big"), os.urandom(4096)):
            with socket.create_connection((HOST, port), timeout=WAIT_S) as s:
                s.sendall(junk)


def _losses(tmp_path) -> list[float]:
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1
    return [r["loss"] for r in json.loads((runs[0] / "iterations.json").read_text())]


@pytest.mark.swarm
def test_an_attacked_swarm_trains_exactly_like_an_unattacked_one(tmp_path, tiny_schedule):
    losses = {}
    for name in ("quiet", "attacked"):
        where = tmp_path / name
        base, args = _run(where, tiny_schedule, "ca-partial", "--iterations", "2")
        done = threading.Event()
        attacker = threading.Thread(target=_attack, args=(where, base, 6, done), daemon=True)
        if name == "attacked":
            attacker.start()
        r = run_skippipe(args, cwd=tmp_path, timeout_s=RUN_DEADLINE_S)
        assert r.returncode == 0, r.stdout
        if name == "attacked":
            attacker.join(timeout=WAIT_S)
            assert done.is_set()
        losses[name] = _losses(where)
    assert len(losses["quiet"]) == 2
    assert losses["attacked"] == pytest.approx(losses["quiet"], rel=1e-6)
