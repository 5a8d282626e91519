"""`python -m skippipe measure`: aggregation, pipeline fitting, the TOML writer, the scenario it
writes, the node protocol in one process, and local measurement processes end to end."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import time
import tomllib

import pytest

from conftest import ROOT, SETTINGS
from runtime_util import alive, free_base_port, run_skippipe
from skippipe.cli import main
from skippipe.measure.figures import (
    MIB,
    TRANSFER_FLOOR_FRACTION,
    ComputeTask,
    LinkFigures,
    MeasureError,
    Measurements,
    NodeFigures,
    Settings,
    bandwidth,
    median,
    significant,
)
from skippipe.measure.protocol import MeasureNode
from skippipe.measure.scenario_out import fit_pipeline, proportional, render_scenario, write_scenario
from skippipe.measure.toml_writer import dump_toml
from skippipe.network import GIB
from skippipe.scenario import load_scenario
from skippipe.settings_checks import ScenarioError

FAST = ["--repeat", "2", "--warmup", "1", "--payload-mib", "0.25", "--timeout", "120"]


# -- aggregation ---------------------------------------------------------------------------------


def test_median_and_bandwidth():
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 2.0, 3.0]) == 2.5
    with pytest.raises(MeasureError):
        median([])
    # 1 MiB in 0.011 s with a 0.001 s RTT: 0.01 s on the wire
    assert bandwidth(2**20, [0.011, 0.021, 0.006], 0.001) == pytest.approx(2**20 / 0.01)
    # jitter: elapsed below the RTT still gives a finite, positive rate (floor fraction)
    assert bandwidth(100, [0.001], 0.002) == pytest.approx(100 / (0.001 * TRANSFER_FLOOR_FRACTION))


def test_link_and_node_figures_take_medians():
    link = LinkFigures(0, 1, (0.004, 0.002, 0.100), (0.012, 0.010, 0.5), 1000)
    assert link.rtt_median_s == 0.004 and link.latency_s == 0.002
    assert link.bandwidth_bytes_per_s == pytest.approx(1000 / (0.012 - 0.004))
    node = _node(0, forward=(1.0, 3.0, 2.0), backward=(4.0, 5.0, 6.0))
    assert (node.forward_median_s, node.backward_median_s) == (2.0, 5.0)


def test_significant_keeps_positive_values():
    assert significant(0.000123456789) == 0.000123457
    assert significant(1e-12) > 0


# -- pipeline fitting ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "nodes, sizes, k",
    [(6, [2, 2, 1, 1], 3), (4, [1, 1, 1, 1], 3), (3, [2, 1], 2), (2, [1, 1], 2), (8, [3, 3, 1, 1], 3)],
)
def test_fit_pipeline_to_node_count(nodes, sizes, k):
    tiny = {"stage_sizes": [2, 2, 1, 1], "path_length": 3, "memory_slots": 2}
    out, notes = fit_pipeline(tiny, 4, nodes)
    assert out["stage_sizes"] == sizes and out["path_length"] == k
    assert out["memory_slots"] == 2 and bool(notes) == (sizes != [2, 2, 1, 1])


def test_fit_pipeline_explicit_sizes_and_impossible_counts():
    out, _ = fit_pipeline({"stage_sizes": [2, 2, 1, 1], "path_length": 3}, 4, 5, [2, 1, 1, 1])
    assert out["stage_sizes"] == [2, 1, 1, 1]
    with pytest.raises(MeasureError):
        fit_pipeline({"stage_sizes": [1, 1, 1], "path_length": 3}, 3, 2)  # 3 layers, 2 nodes
    assert proportional([5, 3, 3, 3, 3, 3], 20) == [5, 3, 3, 3, 3, 3]
    assert sum(proportional([5, 1], 3)) == 3 and min(proportional([5, 1], 3)) >= 1


# -- TOML writer ---------------------------------------------------------------------------------


def test_toml_writer_round_trip():
    doc = {
        "name": 'he said "hi" \\ tab\t nl\n bell\x07 ünï',
        "ratio": 1e-05,
        "big": 1.5e16,
        "n": -3,
        "flag": True,
        "empty": [],
        "section": {
            "a": 1,
            "node-0": 0.25,
            "odd key": "x",
            "nested": {"b": [1, 2], "c": {}},
            "rows": [{"a": "x", "v": 1.0}, {"a": "y", "v": 2.5}],
            "mixed": [1.0, 2.0],
        },
        "items": [{"location": "node-0", "slots": 2}, {"location": "node-1", "slots": 3}],
    }
    text = dump_toml(doc, ["a comment", "", "another"])
    assert text.startswith("# a comment\n#\n# another\n")
    assert tomllib.loads(text) == doc
    assert math.isinf(tomllib.loads(dump_toml({"x": float("inf")}))["x"])


def test_toml_writer_rejects_unknown_types():
    with pytest.raises(TypeError):
        dump_toml({"x": object()})


# -- the written scenario ------------------------------------------------------------------------


def _node(i, forward=(0.002, 0.001, 0.003), backward=(0.004, 0.003, 0.005)):
    return NodeFigures(
        i, "host", "cpu", "test cpu", 2, 1, forward, backward, 10 * MIB, "peak RSS growth", MIB, 64 * GIB
    )


def _measurements(n: int) -> Measurements:
    links = tuple(
        LinkFigures(a, b, (0.002 * (a + b),) * 3, (0.002 * (a + b) + 0.004,) * 3, MIB)
        for a in range(n)
        for b in range(a + 1, n)
    )
    return Measurements(tuple(_node(i) for i in range(n)), links, 1.5)


@pytest.mark.parametrize("template, n", [("tiny.toml", 3), ("tiny.toml", 6), ("geo-distributed.toml", 5)])
def test_rendered_scenario_loads(tmp_path, template, n):
    tpl = load_scenario(SETTINGS / template)
    meas = _measurements(n)
    text = render_scenario(tpl, meas, Settings(repeat=3), "measured", "python -m skippipe measure")
    out = tmp_path / "sub" / "measured.toml"
    sc = write_scenario(text, out)
    assert [p.name for p in out.parent.iterdir()] == ["measured.toml"]  # no temporary left
    assert sc.name == "measured" and len(sc.nodes) == n and sum(sc.pipeline.stage_sizes) == n
    assert sc.model == tpl.model and sc.costs == tpl.costs and sc.training == tpl.training
    assert sc.network.locations == tuple(f"node-{i}" for i in range(n))
    for link in meas.links:
        got = sc.link(link.a, link.b)
        assert got.latency_s == pytest.approx(link.rtt_median_s / 2, rel=1e-5)
        assert got.bandwidth_bytes_per_s == pytest.approx(MIB / 0.004, rel=1e-5)
    assert all(node.compute_s_per_sample_per_layer == pytest.approx(0.002) for node in sc.nodes)
    assert all(node.memory_slots == tpl.pipeline.memory_slots for node in sc.nodes)
    assert text.startswith("# Measured by: python -m skippipe measure\n")


def test_write_scenario_keeps_the_old_file_when_invalid(tmp_path):
    out = tmp_path / "measured.toml"
    out.write_text("old")
    with pytest.raises(ScenarioError):
        write_scenario('name = "x"\n', out)
    assert out.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["measured.toml"]


# -- the command's input checks (one line, exit 2) -----------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["measure", "--node-id", "0"], "give --local N"),
        (["measure", "--local", "1"], "at least 2 nodes"),
        (["measure", "--node-id", "5", "--nodes", "0..2"], "not one of the nodes"),
        (["measure", "--node-id", "0", "--nodes", "1..3"], "0..N-1"),
        (["measure", "--node-id", "0", "--nodes", "a..b"], "FIRST..LAST"),
        (["measure", "--local", "2", "--stage-sizes", "1,2"], "holding all 2 nodes"),
    ],
)
def test_bad_input_is_one_line(capsys, args, message):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_peer_table(tmp_path):
    import argparse

    from skippipe.measure.peers import parse_nodes, peer_table

    assert parse_nodes("0..3") == [0, 1, 2, 3] and parse_nodes("0,1") == [0, 1]
    peers = tmp_path / "peers.json"
    peers.write_text(json.dumps({"1": "10.0.0.2:7001", "0": "10.0.0.1:7000"}))
    args = argparse.Namespace(peers=str(peers), nodes=None, host="127.0.0.1", base_port=None)
    assert peer_table(args) == {0: ("10.0.0.1", 7000), 1: ("10.0.0.2", 7001)}
    args = argparse.Namespace(peers=None, nodes="0..2", host="h", base_port=100)
    assert peer_table(args) == {0: ("h", 100), 1: ("h", 101), 2: ("h", 102)}


def test_peer_file(tmp_path, capsys):
    bad = tmp_path / "peers.json"
    bad.write_text(json.dumps({"0": "127.0.0.1"}))
    assert main(["measure", "--node-id", "0", "--peers", str(bad)]) == 2
    assert "not a peer table" in capsys.readouterr().err


# -- the protocol, in one process ----------------------------------------------------------------


def _tiny_task() -> ComputeTask:
    import dataclasses

    tpl = load_scenario(SETTINGS / "tiny.toml")
    return ComputeTask(dataclasses.asdict(tpl.model), 2, 1, 0)


@pytest.fixture
def torch_threads():
    """MeasureNode sets torch's CPU threads (1, as node processes run): restore them after."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


async def _cluster(devices: list[str]):
    """Node 0 (CPU) and one MeasureNode per entry of `devices`, all in this event loop."""
    n = len(devices) + 1
    base = free_base_port(n, 11)
    peers = {i: ("127.0.0.1", base + i) for i in range(n)}
    settings = Settings(repeat=2, warmup=1, payload_bytes=4096, timeout_s=60)
    coord = MeasureNode(0, peers, settings, device="cpu", threads=1)
    own = Settings(repeat=7, warmup=0, payload_bytes=1, timeout_s=60)  # node 0's settings win
    workers = [
        asyncio.create_task(MeasureNode(i + 1, peers, own, device=d, threads=1).run())
        for i, d in enumerate(devices)
    ]
    try:
        return await coord.run(_tiny_task())
    finally:
        await asyncio.wait_for(asyncio.gather(*workers), 30)


def test_protocol_in_one_process(torch_threads):
    meas = asyncio.run(_cluster(["cpu", "cpu"]))
    assert [f.node for f in meas.nodes] == [0, 1, 2]
    assert [(ln.a, ln.b) for ln in meas.links] == [(0, 1), (0, 2), (1, 2)]  # 1-2: between workers
    assert all(
        len(ln.rtt_s) == 2 and ln.payload_bytes == 4096 and ln.bandwidth_bytes_per_s > 0 for ln in meas.links
    )
    assert all(len(f.forward_s) == 2 for f in meas.nodes)
    assert all(f.forward_median_s > 0 and f.backward_median_s > 0 and f.layers == 2 for f in meas.nodes)
    assert all(f.activation_bytes > 0 for f in meas.nodes)


def test_a_failing_node_fails_the_measurement(torch_threads):
    # a device this process cannot use: node 1's compute fails and node 0 reports it
    with pytest.raises(MeasureError, match="node 1"):
        asyncio.run(_cluster(["cuda:99"]))


# -- local processes end to end ------------------------------------------------------------------


def _pids(tmp_path) -> list[int]:
    files = list((tmp_path / "runs").glob("*-measure-*/processes.json"))
    assert len(files) == 1
    return list(json.loads(files[0].read_text()).values())


@pytest.mark.swarm
def test_local_measurement_writes_a_loadable_scenario(tmp_path):
    out = tmp_path / "measured.toml"
    res = run_skippipe(
        ["measure", "--local", "2", "--template", str(SETTINGS / "tiny.toml"), "--out", str(out), *FAST],
        tmp_path,
        timeout_s=240,
    )
    assert res.returncode == 0, res.stdout
    assert f"wrote {out}" in res.stdout
    sc = load_scenario(out)
    assert len(sc.nodes) == 2 and sc.network.locations == ("node-0", "node-1")
    assert list(sc.pipeline.stage_sizes) == [1, 1] and sc.model == load_scenario(SETTINGS / "tiny.toml").model
    assert all(n.compute_s_per_sample_per_layer > 0 for n in sc.nodes)
    assert sc.link(0, 1).latency_s > 0 and sc.link(0, 1).bandwidth_bytes_per_s > 0
    assert out.read_text().startswith("# Measured by: python -m skippipe measure --local 2")
    pids = _pids(tmp_path)
    assert len(pids) == 2 and not any(alive(p) for p in pids)


@pytest.mark.swarm
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_stops_every_local_process(tmp_path, sig, code):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "skippipe",
            "measure",
            "--local",
            "2",
            "--template",
            str(SETTINGS / "tiny.toml"),
            "--out",
            "m.toml",
            *FAST,
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not list((tmp_path / "runs").glob("*-measure-*/processes.json")):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
            time.sleep(0.05)
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == code, out
    pids = _pids(tmp_path)
    assert len(pids) == 2 and not any(alive(p) for p in pids)
    assert not (tmp_path / "m.toml").exists()


@pytest.mark.slow
def test_a_node_that_goes_away_fails_fast(torch_threads):
    from skippipe.runtime.net.auth import RunAuth
    from skippipe.runtime.net.transport import Transport
    from skippipe.runtime.net.wire import Kind, Message

    async def scenario():
        base = free_base_port(2, 12)
        peers = {0: ("127.0.0.1", base), 1: ("127.0.0.1", base + 1)}
        coord = MeasureNode(0, peers, Settings(repeat=2, timeout_s=60), device="cpu", threads=1)

        async def crashing_worker():  # answers hello, then its process "dies"
            async with Transport(1, *peers[1], peers, auth=RunAuth.public()) as t:
                msg = await t.recv(30)
                assert msg.json()["op"] == "hello"
                await t.send(0, Message.from_json(Kind.CONTROL, 1, {"op": "ready"}))

        worker = asyncio.create_task(crashing_worker())
        start = time.monotonic()
        with pytest.raises(MeasureError, match="node 1 went away"):
            await coord.run(_tiny_task())
        await worker
        return time.monotonic() - start

    assert asyncio.run(scenario()) < 30  # not the 60 s deadline
