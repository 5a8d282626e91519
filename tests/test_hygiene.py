"""Process hygiene and membership: stopping the launcher (SIGTERM, SIGKILL) leaves no node
process; runs back to back on the same ports both succeed; a concurrent run on held ports gets
one clear error; a dropped connection between live nodes evicts nobody; a false death report is
cleared by the accused's heartbeat."""

import asyncio
import json
import os
import signal
import time

import pytest

from conftest import SETTINGS
from runtime_util import alive, finish, free_base_port, run_skippipe, start_skippipe
from schedules import make_paths, make_schedule, tiny
from skippipe.runtime.net.auth import RunAuth
from skippipe.runtime.net.transport import Transport
from skippipe.runtime.node.liveness import Liveness
from skippipe.schedule_file import save_schedule
from skippipe.util.procs import signal_session, wait_until

TINY = SETTINGS / "tiny.toml"
READY_DEADLINE_S = 120  # 2 shared cores, 6 processes each importing torch
GONE_DEADLINE_S = 15  # after the launcher is stopped or killed, every node is gone by then
RUN_DEADLINE_S = 240
LONG_RUN = "1000"  # iterations: a run that is still going when the test stops it
PEER_TIMEOUT_S = 1.0  # in-process membership tests


@pytest.fixture(scope="module")
def schedule_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("hygiene") / "tiny.json"
    save_schedule(make_schedule(tiny(), make_paths()), path)
    return path


def _args(tmp_path, schedule, base: int, iterations: str, runs: str = "runs") -> list[str]:
    return [
        "run",
        "0",
        "6",
        "random",
        "0",
        "--scenario",
        str(TINY),
        "--schedule",
        str(schedule),
        "--base-port",
        str(base),
        "--runs",
        str(tmp_path / runs),
        "--iterations",
        iterations,
        "--peer-timeout",
        "30",
    ]


def _node_pids(tmp_path, runs: str = "runs") -> dict[int, int]:
    pids = {}
    for f in (tmp_path / runs).glob("*/events/node-*.jsonl"):
        for line in f.read_text().splitlines():
            e = json.loads(line)
            if e.get("event") == "ready":
                pids[e["node"]] = e["pid"]
    return pids


def _wait_for_nodes(tmp_path, launcher) -> dict[int, int]:
    ok = wait_until(
        lambda: len(_node_pids(tmp_path)) == 6 or launcher.poll() is not None, READY_DEADLINE_S, poll_s=0.1
    )
    assert ok and launcher.poll() is None, "the nodes did not come up"
    return _node_pids(tmp_path)


def _none_left(pids: dict[int, int]) -> bool:
    return wait_until(lambda: not any(alive(p) for p in pids.values()), GONE_DEADLINE_S, poll_s=0.1)


def _kill_leftovers(pids: dict[int, int]) -> None:
    for pid in pids.values():  # only the pids this test's run reported
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.swarm
def test_sigterm_stops_every_node_and_a_concurrent_run_is_refused(tmp_path, schedule_file):
    base = free_base_port(6, seed=13)
    launcher = start_skippipe(_args(tmp_path, schedule_file, base, LONG_RUN), cwd=tmp_path)
    pids = {}
    try:
        pids = _wait_for_nodes(tmp_path, launcher)
        second = run_skippipe(
            _args(tmp_path, schedule_file, base, "1", runs="runs2"), cwd=tmp_path, timeout_s=RUN_DEADLINE_S
        )
        assert second.returncode == 2, second.stdout
        assert second.stdout.strip().count("\n") == 0 and "held by another run" in second.stdout
        assert not (tmp_path / "runs2").exists()
        launcher.send_signal(signal.SIGTERM)
        r = finish(launcher, RUN_DEADLINE_S)
        assert r.returncode == 128 + signal.SIGTERM, r.stdout
        assert _none_left(pids)
    finally:
        signal_session(launcher, signal.SIGKILL)
        launcher.communicate()
        _kill_leftovers(pids)


@pytest.mark.swarm
def test_sigkill_of_the_launcher_leaves_no_node(tmp_path, schedule_file):
    launcher = start_skippipe(
        _args(tmp_path, schedule_file, free_base_port(6, seed=14), LONG_RUN), cwd=tmp_path
    )
    pids = {}
    try:
        pids = _wait_for_nodes(tmp_path, launcher)
        launcher.kill()  # the launcher only: its nodes are on their own now
        launcher.communicate()
        assert _none_left(pids), "nodes outlived their launcher"
    finally:
        signal_session(launcher, signal.SIGKILL)
        _kill_leftovers(pids)


@pytest.mark.swarm
def test_two_runs_back_to_back_on_the_same_ports_both_succeed(tmp_path, schedule_file):
    base = free_base_port(6, seed=15)
    for runs in ("runs", "runs2"):
        r = run_skippipe(
            _args(tmp_path, schedule_file, base, "1", runs=runs), cwd=tmp_path, timeout_s=RUN_DEADLINE_S
        )
        assert r.returncode == 0, r.stdout
        assert "summary: 1 iterations" in r.stdout


# -- membership: in-process nodes on loopback --------------------------------------------------


async def _pair(tmp_path):
    """Two transports with heartbeating Liveness; returns them and a list of deaths declared."""
    base = free_base_port(2, seed=16)
    peers = {0: ("127.0.0.1", base), 1: ("127.0.0.1", base + 1)}
    deaths, closes, nodes = [], [], []
    auth = RunAuth.generate()  # both nodes of one run
    for n in (0, 1):

        def closed(peer, n=n):
            closes.append((n, peer))
            nodes[n][1].closed(peer)

        t = Transport(n, *peers[n], peers, tmp_path / f"t{n}", on_disconnect=closed, auth=auth)
        live = Liveness(n, peers, t, PEER_TIMEOUT_S, lambda dead, why, n=n: deaths.append((n, dead, why)))
        nodes.append((t, live))
    for t, _ in nodes:
        await t.start()
    return nodes, peers, deaths, closes


async def _listen(t: Transport, live: Liveness, got: list) -> None:
    while True:
        msg = await t.recv()
        live.seen(msg.sender)
        got.append(msg)


def _membership(tmp_path, scenario) -> tuple[list, list]:
    async def main():
        nodes, peers, deaths, closes = await _pair(tmp_path)
        tasks = [asyncio.create_task(_listen(t, live, [])) for t, live in nodes]
        try:
            for _, live in nodes:
                live.start()
            await scenario(nodes, peers)
            await asyncio.sleep(4 * PEER_TIMEOUT_S)  # several deadlines: long enough to evict
        finally:
            for task in tasks:
                task.cancel()
            for t, live in nodes:
                live.stop()
                await t.stop()
        return deaths, closes

    return asyncio.run(main())


@pytest.mark.slow
def test_a_dropped_connection_between_live_nodes_evicts_neither(tmp_path):
    async def drop(nodes, peers):
        await asyncio.sleep(PEER_TIMEOUT_S / 2)  # connected and beating by then
        nodes[0][0].add_peer(1, *peers[1])  # same address: drops node 0's connection to node 1

    deaths, closes = _membership(tmp_path, drop)
    assert closes, "the test did not drop a connection"
    assert deaths == []


@pytest.mark.slow
def test_a_false_death_report_is_cleared_by_the_accused_heartbeat(tmp_path):
    async def accuse(nodes, peers):
        await asyncio.sleep(PEER_TIMEOUT_S / 2)
        nodes[0][1].accuse({1}, by=1)  # only a peer's report counts: node 1 accusing itself is ignored
        nodes[0][1].accuse({1}, by=7)  # not a node of this run
        assert not nodes[0][1].accused
        nodes[0][1].last_seen[2] = time.monotonic()  # a third peer of the run (plain bookkeeping)
        nodes[0][1].accuse({1}, by=2)
        assert 1 in nodes[0][1].accused

    deaths, _ = _membership(tmp_path, accuse)
    assert deaths == []


class QuietTransport:
    """Takes every message and delivers none."""

    async def send(self, dst, msg, timeout_s=None):
        pass


def test_an_accused_peer_that_stays_silent_is_dead():
    async def main():
        deaths = []
        live = Liveness(0, [0, 1, 2], QuietTransport(), PEER_TIMEOUT_S, lambda dead, why: deaths.append(dead))
        live.accuse({1}, by=2)
        live.seen(2)
        await asyncio.sleep(live.confirm_s * 1.5)
        live.seen(2)
        live.check()
        return deaths, live.dead

    deaths, dead = asyncio.run(main())
    assert deaths == [{1}] and dead == {1}


# -- the launcher's verdict ----------------------------------------------------------------------


def _progress_with(tmp_path, events: list[dict]):
    from skippipe.runtime.launch.supervisor import Progress
    from skippipe.runtime.node.runconfig import RunConfig

    cfg = RunConfig(
        run_dir=str(tmp_path),
        scenario_path="",
        scenario_overrides={},
        schedule_path="",
        variant="random",
        iterations=1,
        time_scale=1.0,
        emulate_compute=True,
        emulate_links=True,
        peers={n: ("127.0.0.1", 1 + n) for n in range(4)},
        local_nodes=(0, 1, 2, 3),
        data_nodes=(0, 1),
        epoch=0.0,
        seed=0,
        peer_timeout_s=1.0,
        connect_timeout_s=1.0,
    )
    (tmp_path / "events").mkdir(parents=True)
    for n in range(4):
        lines = [json.dumps({"t": 1.0, "node": n, **e}) for e in events if e.get("node", n) == n]
        (tmp_path / "events" / f"node-{n}.jsonl").write_text("".join(line + "\n" for line in lines))
    progress = Progress(cfg, predicted_s=1.0)
    progress.update(final=True)
    return progress


def _end(loss_count=1):
    return {"event": "iteration_end", "iteration": 0, "loss_sum": 1.0, "loss_count": loss_count}


def test_a_split_run_exits_non_zero_with_one_line(tmp_path):
    from skippipe.runtime.launch.supervisor import verdict

    events = [
        {"event": "ready"},
        _end(),
        {"event": "finished", "dead": [], "node": 0},
        {"event": "finished", "dead": [3], "node": 1},
        {"event": "peer_dead", "peers": [3], "why": "silent", "iteration": 0, "node": 1},
    ]
    progress = _progress_with(tmp_path, events)
    said = []
    assert verdict(0, progress, said.append) == 1
    assert len(said) == 1 and "disagree" in said[0] and "node 1: [3]" in said[0]
    assert progress.news() == ["node 3 declared dead by node 1 in iteration 0: silent"]


def test_console_news_tells_each_death_rejoin_and_move_once(tmp_path):
    events = [
        {"event": "ready"},
        _end(),
        {"event": "peer_dead", "peers": [3], "why": "silent", "iteration": 0, "node": 1, "t": 1.0},
        {"event": "rejoined", "iteration": 2, "node": 3, "t": 2.0},
        {
            "event": "rebalance",
            "iteration": 1,
            "moved": 2,
            "source": 1,
            "target": 2,
            "at": 3,
            "throughputs": {"1": 200, "2": 40},
            "node": 0,
            "t": 3.0,
        },
    ]
    progress = _progress_with(tmp_path, events)
    assert progress.news() == [
        "node 3 declared dead by node 1 in iteration 0: silent",
        "node 3 rejoined at iteration 2",
        "rebalancing: node 2 moves from stage 1 to stage 2 at iteration 3 "
        "(stage throughputs, forwards/s: 1: 200, 2: 40)",
    ]
    progress.update()
    assert progress.news() == []  # read again, the same events are not news


def test_a_run_without_iterations_exits_non_zero_and_agreement_exits_zero(tmp_path):
    from skippipe.runtime.launch.supervisor import verdict

    said = []
    assert verdict(0, _progress_with(tmp_path / "a", [{"event": "ready"}]), said.append) == 1
    assert said == ["error: no iteration finished"]
    agreed = [{"event": "ready"}, _end(), {"event": "finished", "dead": [3]}]
    assert verdict(0, _progress_with(tmp_path / "b", agreed), said.append) == 0
