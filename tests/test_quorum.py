"""The quorum rule (runtime/node/quorum.py): a side of a run that lost a stage or the majority stops
with one line and a non-zero exit, and never trains an iteration without every stage; a
Welcome nobody asked for evicts no one; a crash is seen within 2 s at the default peer timeout.
The partition case runs in tests/test_netns.py."""

import asyncio
import json
import re
import signal
import time

import pytest

from conftest import SETTINGS
from runtime_util import alive, finish, free_base_port, run_skippipe, start_skippipe
from skippipe.recovery import quorum_verdict as verdict
from skippipe.runtime.node.control import Welcome
from skippipe.runtime.node.quorum import QUORUM_EXIT, Quorum, QuorumLost
from skippipe.timeline import read_jsonl
from skippipe.util.procs import signal_session
from test_faults import schedule_file  # noqa: F401 (the hand-built tiny schedule, a fixture)

TINY_ALLOCATION = ((0, 1), (2, 3), (4,), (5,))  # tests/schedules.py: stages 2 and 3 have one node
RUN_DEADLINE_S = 240
PEER_TIMEOUT_S = 5.0
DETECT_S = 2.0  # a crash on loopback is seen within this at the default peer timeout


# -- the rule ------------------------------------------------------------------------------------


def test_a_side_needs_every_stage_and_a_majority_of_all_nodes():
    assert verdict(6, set(), TINY_ALLOCATION) is None
    assert verdict(6, {3}, TINY_ALLOCATION) is None  # stage 1 keeps node 2; 5 of 6 nodes
    assert verdict(6, {0, 2}, TINY_ALLOCATION) is None  # 4 of 6
    assert verdict(6, {4}, TINY_ALLOCATION) == "stage 2 has no live node"
    assert verdict(6, {0, 2, 3}, TINY_ALLOCATION) == (
        "stage 1 has no live node; this side holds 3 of 6 nodes, not a majority"
    )
    assert verdict(6, {3, 4, 5}, TINY_ALLOCATION) == (
        "stages 2, 3 have no live node; this side holds 3 of 6 nodes, not a majority"
    )
    assert verdict(4, {1, 3}, ((0, 1), (2, 3))) == "this side holds 2 of 4 nodes, not a majority"


class _Live:
    def __init__(self):
        self.dead, self.stopped = set(), False

    def stop(self):
        self.stopped = True


class _Events:
    def __init__(self):
        self.written = []

    def write(self, event, **fields):
        self.written.append((event, fields))


def test_a_lost_quorum_cancels_the_run_and_ends_it_in_one_error():
    async def main():
        live, events = _Live(), _Events()
        messenger = type("M", (), {"live": live, "events": events})()
        quorum = Quorum(6, messenger, lambda it: TINY_ALLOCATION)
        started = asyncio.Event()

        async def training():
            started.set()
            await asyncio.Event().wait()  # an iteration waiting for a peer that will never answer

        run = asyncio.create_task(quorum.guarded(training()))
        await asyncio.wait_for(started.wait(), 5)
        live.dead |= {3}
        quorum.check(1)  # stage 1 keeps node 2: nothing happens
        assert not run.done() and quorum.lost is None
        live.dead |= {5}
        quorum.check(1)
        with pytest.raises(QuorumLost, match="stage 3 has no live node"):
            await asyncio.wait_for(run, 5)
        assert live.stopped and events.written == [
            ("quorum_lost", {"why": "stage 3 has no live node", "iteration": 1, "dead": [3, 5]})
        ]
        with pytest.raises(QuorumLost):
            messenger.stopping()  # every later wait of the node ends in the error too
        quorum.over = True  # after the last iteration nothing is checked
        quorum.lost = None
        live.dead |= {0, 1}
        quorum.check(2)
        assert quorum.lost is None

    asyncio.run(main())


# -- a welcome nobody asked for --------------------------------------------------------------------


class _Messenger:
    def __init__(self):
        self.id, self.handlers, self.events, self.iteration_now = 0, {}, _Events(), 0
        self.live = _Liveness()


class _Liveness:
    def __init__(self):
        self.dead = set()

    def declare(self, peers, why):
        self.dead |= set(peers)


def test_an_unsolicited_welcome_evicts_no_one():
    from skippipe.runtime.node.membership import Membership
    from skippipe.runtime.node.rejoin import Rejoin

    m = _Messenger()
    stages_of = {n: (s,) for s, nodes in enumerate(TINY_ALLOCATION) for n in nodes}
    rejoin = Rejoin(None, m, lambda: None, Membership(0, TINY_ALLOCATION, stages_of, 0.0))
    rejoin.on_control(Welcome(50, (4,), ()), sender=3)  # a key holder's well-formed message
    assert m.live.dead == set() and rejoin.welcome is None
    assert m.events.written == [("welcome_rejected", {"sender": 3, "dead": [4]})]
    rejoin.coming_back = True  # this node restarted and asked everyone: its sponsor's view is its own
    rejoin.on_control(Welcome(5, (4,), ()), sender=1)
    assert m.live.dead == {4} and rejoin.sponsor == 1


@pytest.mark.swarm
def test_a_keyed_insiders_welcome_leaves_the_run_whole(tmp_path, schedule_file):  # noqa: F811
    """During a run, a process holding the run key connects to node 0 as node 3 and sends
    `{"welcome": 50, "dead": [4], "steps": []}`: node 0 rejects it, nobody is declared dead,
    every node ends with the same view and the run exits 0."""
    from skippipe.runtime.net.auth import RunAuth
    from skippipe.runtime.net.transport import Transport
    from skippipe.runtime.node.control import encode

    base = free_base_port(6, seed=2025)
    proc = start_skippipe(
        _args(tmp_path, schedule_file, base, "--iterations", "4", "--time-scale", "4"), cwd=tmp_path
    )
    try:
        run_dir = _wait_for(tmp_path / "runs", lambda e: e["event"] == "iteration_end", RUN_DEADLINE_S)
        cfg = json.loads((run_dir / "config.json").read_text())

        async def insider():
            t = Transport(
                3,
                "127.0.0.1",
                0,
                {0: ("127.0.0.1", base)},
                tmp_path / "insider",
                auth=RunAuth.from_hex(cfg["run_key"], "config"),
            )
            async with t:
                await t.send(0, encode(Welcome(50, (4,), ()), 3), timeout_s=10)

        asyncio.run(insider())
        _wait_for(tmp_path / "runs", lambda e: e["event"] == "welcome_rejected", 30)
    finally:
        r = finish(proc, RUN_DEADLINE_S)
    assert r.returncode == 0, r.stdout
    events = read_jsonl(run_dir / "events")
    assert [e["sender"] for e in events if e["event"] == "welcome_rejected"] == [3]
    assert not [e for e in events if e["event"] in ("peer_dead", "quorum_lost")]
    views = {e["node"]: e["dead"] for e in events if e["event"] == "finished"}
    assert views == {n: [] for n in range(6)}


# -- stages lost on one host, and a host lost -------------------------------------------------------


def _args(tmp_path, schedule, base: int, *extra: str, first: int = 0, last: int = 6) -> list[str]:
    return [
        "run",
        str(first),
        str(last),
        "random",
        "0",
        "--scenario",
        str(SETTINGS / "tiny.toml"),
        "--schedule",
        str(schedule),
        "--base-port",
        str(base),
        "--runs",
        str(tmp_path / "runs"),
        *extra,
    ]


def _wait_for(runs, match, deadline_s: float):
    """The run directory (under `runs`) whose events first hold an event `match` accepts."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        for d in runs.glob("*/events"):
            if any(match(e) for e in read_jsonl(d)):
                return d.parent
        time.sleep(0.1)  # polling files other processes write, until the deadline
    raise AssertionError(f"no matching event under {runs} within {deadline_s} s")


def _trained_without_a_stage(events: list[dict], stage_nodes) -> list[dict]:
    """iteration_end events of iterations a sole stage node did not finish."""
    done = {e["iteration"] for e in events if e["event"] == "iteration_end" and e["node"] in stage_nodes}
    return [e for e in events if e["event"] == "iteration_end" and e["iteration"] not in done]


@pytest.mark.swarm
def test_losing_a_stages_only_node_stops_the_run_with_one_line(tmp_path, schedule_file):  # noqa: F811
    """Node 4, stage 2's only node, is killed in iteration 1: the others stop within one peer
    timeout of seeing it (exit 3, one line naming stage 2), train no iteration without it, and
    save their stages."""
    base = free_base_port(6, seed=2026)
    r = run_skippipe(
        _args(
            tmp_path,
            schedule_file,
            base,
            "--iterations",
            "4",
            "--checkpoint",
            "--peer-timeout",
            str(PEER_TIMEOUT_S),
            "--fail",
            "node=4,iteration=1,how=crash",
        ),
        cwd=tmp_path,
        timeout_s=RUN_DEADLINE_S,
    )
    assert r.returncode == QUORUM_EXIT, r.stdout
    errors = [line for line in r.stdout.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: the run lost its quorum and node(s) 0, 1, 2, 3, 5 stopped: stage 2 has no live node"
    ], r.stdout
    [run_dir] = (tmp_path / "runs").iterdir()
    events = read_jsonl(run_dir / "events")
    assert not _trained_without_a_stage(events, {4})
    seen = {e["node"]: e["t"] for e in events if e["event"] == "peer_dead" and 4 in e["peers"]}
    lost = {e["node"]: e["t"] for e in events if e["event"] == "quorum_lost"}
    assert lost.keys() == seen.keys() == {0, 1, 2, 3, 5}
    assert all(lost[n] - seen[n] < PEER_TIMEOUT_S for n in lost)
    assert sorted(p.name for p in (run_dir / "checkpoint" / "nodes").iterdir()) == [
        f"node-{n}" for n in (0, 1, 2, 3, 5)
    ]
    pids = {e["node"]: e["pid"] for e in events if e["event"] == "ready"}
    assert not any(alive(p) for p in pids.values())


@pytest.mark.swarm
def test_a_lost_host_stops_the_survivor_with_one_line(tmp_path, schedule_file):  # noqa: F811
    """Two launchers on loopback share one peer table; the second (nodes 3..5: stages 2 and 3
    whole, half of the run) is killed in iteration 1. The survivor stops with one line and a
    non-zero exit within one peer timeout."""
    base = free_base_port(6, seed=2027)
    (tmp_path / "peers.json").write_text(json.dumps({n: f"127.0.0.1:{base + n}" for n in range(6)}))
    env = {"SKIPPIPE_RUN_KEY": "5a" * 32}
    common = (
        "--iterations",
        "30",
        "--time-scale",
        "4",
        "--peers",
        "peers.json",
        "--peer-timeout",
        str(PEER_TIMEOUT_S),
    )
    first, second = (
        start_skippipe(_args(tmp_path, schedule_file, base, *common, first=a, last=b), tmp_path, env)
        for a, b in ((0, 3), (3, 6))
    )
    try:
        _wait_for(
            tmp_path / "runs", lambda e: e["event"] == "iteration_end" and e["iteration"] == 1, RUN_DEADLINE_S
        )
        killed_at = time.time()
        signal_session(second, signal.SIGKILL)
        second.communicate()
        r = finish(first, RUN_DEADLINE_S)
    finally:
        for p in (first, second):
            if p.poll() is None:
                signal_session(p, signal.SIGKILL)
                p.communicate()
    assert r.returncode == QUORUM_EXIT, r.stdout
    errors = [line for line in r.stdout.splitlines() if line.startswith("error:")]
    # each node stops at the first death that breaks the rule: node 4's or node 5's
    assert len(errors) == 1 and re.fullmatch(
        r"error: the run lost its quorum and node\(s\) 0, 1, 2 stopped: (stage [23] has|stages 2, 3 have) "
        r"no live node.*",
        errors[0],
    ), r.stdout
    run_dir = next(d for d in (tmp_path / "runs").iterdir() if (d / "events" / "node-0.jsonl").exists())
    epoch = json.loads((run_dir / "config.json").read_text())["epoch"]
    events = read_jsonl(run_dir / "events")
    lost = [epoch + e["t"] - killed_at for e in events if e["event"] == "quorum_lost"]
    assert len(lost) == 3 and max(lost) < PEER_TIMEOUT_S, lost
    last = max(e["iteration"] for e in events if e["event"] == "iteration_end")
    assert last < 29  # stopped, not finished


@pytest.mark.swarm
def test_a_crash_is_seen_within_2_s_at_the_default_peer_timeout(tmp_path, schedule_file):  # noqa: F811
    """Node 3 (stage 1 keeps node 2) is killed; every other node declares it dead within 2 s on
    loopback at the default peer timeout, nobody else is declared dead, and the run finishes."""
    base = free_base_port(6, seed=2028)
    r = run_skippipe(
        _args(
            tmp_path,
            schedule_file,
            base,
            "--iterations",
            "3",
            "--fail",
            "node=3,iteration=1,phase=forward,how=crash",
        ),
        cwd=tmp_path,
        timeout_s=RUN_DEADLINE_S,
    )
    assert r.returncode == 0, r.stdout
    [run_dir] = (tmp_path / "runs").iterdir()
    events = read_jsonl(run_dir / "events")
    crashed = next(e["t"] for e in events if e["event"] == "fault" and e["node"] == 3)
    seen = {e["node"]: e["t"] - crashed for e in events if e["event"] == "peer_dead" and e["peers"] == [3]}
    assert seen.keys() == {0, 1, 2, 4, 5} and max(seen.values()) < DETECT_S, seen
    assert {p for e in events if e["event"] == "peer_dead" for p in e["peers"]} == {3}


# -- crash evidence: a closed connection and a refusing port ------------------------------------


class _QuietTransport:
    """Takes every message (a reconnect that succeeds) and delivers none."""

    async def send(self, dst, msg, timeout_s=None):
        pass


def test_a_closed_peer_whose_port_refuses_is_dead_at_once_and_a_listening_one_is_not():
    from skippipe.runtime.node.liveness import Liveness
    from skippipe.util.ports import free_port

    async def main():
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        listening = server.sockets[0].getsockname()[1]
        peers = {0: ("127.0.0.1", 1), 1: ("127.0.0.1", free_port()), 2: ("127.0.0.1", listening)}
        deaths = []
        live = Liveness(0, peers, _QuietTransport(), 30.0, lambda dead, why: deaths.append((dead, why)))
        async with server:
            start = time.monotonic()
            await asyncio.wait_for(live._probe(1), DETECT_S)  # nothing listens on node 1's port
            took = time.monotonic() - start
            await asyncio.wait_for(live._probe(2), DETECT_S)  # node 2's port answers: alive
        return deaths, took

    deaths, took = asyncio.run(main())
    assert deaths == [({1}, "connection closed and its port refuses connections")] and took < 1.0
