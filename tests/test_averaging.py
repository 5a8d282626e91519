"""The averaging model (Costs.averaging_s) by hand, against a ring over the emulated links, and
against what a run measures (runtime/launch/report.py's per-stage averaging windows)."""

import json
import random
import re

import pytest

from conftest import SETTINGS
from runtime_util import free_base_port, run_skippipe
from skippipe.costs import Costs
from skippipe.network import GIB
from skippipe.runtime.launch.report import averaging_by_stage, averaging_windows
from skippipe.runtime.net.linkemu import LinkModel, LinkTimeline
from skippipe.runtime.node.runconfig import RunConfig, events_dir, load_config
from skippipe.scenario import load_scenario

# tiny.toml: nodes go round-robin over east, west, north; d_model 64, SwiGLU hidden 176, fp32
EAST, WEST, EAST_TOO = 0, 1, 3
LAYER_BYTES = 4 * (4 * 64 * 64 + 3 * 64 * 176 + 2 * 64)  # attention, SwiGLU, two norms
EXCHANGE_WALL_S = 1.0  # the real gradient exchange on loopback, 6 processes on 2 loaded cores


def test_modelled_averaging_by_hand(tiny_scenario):
    costs = Costs(tiny_scenario)
    assert costs.stage_param_bytes(1) == LAYER_BYTES
    # two nodes: 2 steps of half the bytes over east-west (0.01 GiB/s, 20 ms) + 2 ms overhead
    assert costs.averaging_s(1, [EAST, WEST]) == pytest.approx(
        2 * (LAYER_BYTES / 2 / (0.01 * GIB) + 0.020 + 0.002)
    )
    # both in east (1 GiB/s, 0.5 ms): the per-hop overhead weighs most
    assert costs.averaging_s(1, [EAST_TOO, EAST]) == pytest.approx(
        2 * (LAYER_BYTES / 2 / GIB + 0.0005 + 0.002)
    )
    # east, west, north: the ring goes by location name (east, north, west); latency-bound, so
    # the longest chain of 4 consecutive ring hops decides: west->east, east->north,
    # north->west, west->east (each hop: a third of the bytes; links are symmetric)
    hop = {
        (a, b): LAYER_BYTES / 3 / (bw * GIB) + lat + 0.002
        for a, b, bw, lat in ((0, 1, 0.01, 0.020), (1, 2, 0.02, 0.012), (2, 0, 0.05, 0.008))
    }
    assert costs.averaging_s(1, [2, 0, 1]) == pytest.approx(2 * hop[0, 1] + hop[1, 2] + hop[2, 0])
    assert costs.averaging_s(1, [WEST]) == 0.0


def ring_on_links_s(costs: Costs, stage: int, ring: list[int]) -> float:
    """The yardstick: a ring all-reduce whose every step is a message through the runtime's own
    link emulation (linkemu.LinkTimeline), each node forwarding once its predecessor's last
    step arrived."""
    sc, n = costs.scenario, len(ring)
    links = [
        LinkTimeline(
            LinkModel(
                sc.link(a, b).latency_s, sc.link(a, b).bandwidth_bytes_per_s, sc.costs.per_hop_overhead_s, 1.0
            )
        )
        for a, b in zip(ring, ring[1:] + ring[:1])
    ]
    arrived = [0.0] * n
    for _ in range(2 * (n - 1)):
        arrived = [
            links[i].reserve(costs.stage_param_bytes(stage) // n, arrived[i - 1]).deliver_s for i in range(n)
        ]
    return max(arrived)


@pytest.mark.parametrize("scenario", ["tiny", "geo-distributed"])
def test_model_is_a_ring_over_the_emulated_links(scenario):
    """What the runtime pads averaging to is what a ring over its emulated links takes (nodes
    by location, then id), for groups of 2, 3 and 5 nodes drawn from the scenario."""
    sc = load_scenario(SETTINGS / f"{scenario}.toml")
    costs, rng = Costs(sc), random.Random(0)
    for size in (2, 3, 5):
        for _ in range(10):
            group = sorted(
                rng.sample([n.id for n in sc.nodes], size), key=lambda n: (sc.nodes[n].location, n)
            )
            # rel: the emulated links carry whole bytes
            assert costs.averaging_s(0, group) == pytest.approx(ring_on_links_s(costs, 0, group), rel=1e-4)


def _config(tmp_path, time_scale: float) -> RunConfig:
    return RunConfig(
        run_dir=str(tmp_path),
        scenario_path="",
        scenario_overrides={},
        schedule_path="",
        variant="ca-partial",
        iterations=2,
        time_scale=time_scale,
        emulate_compute=True,
        emulate_links=True,
        peers={},
        local_nodes=(),
        data_nodes=(),
        epoch=0.0,
        seed=0,
        peer_timeout_s=1.0,
        connect_timeout_s=1.0,
    )


def test_stage_window_runs_from_the_last_start_to_the_last_end(tmp_path, tiny_scenario):
    cfg = _config(tmp_path, 2.0)
    avg = [
        (it, node, stage, t, dur)
        for it, base in ((0, 0.0), (1, 10.0))
        for node, stage, t, dur in (
            (EAST, 1, base + 1.0, 0.5),
            (WEST, 1, base + 1.2, 0.2),
            (2, 0, base + 2.0, 0.0),
        )
    ]  # node 2 alone in its stage
    events_dir(tmp_path).mkdir()
    (events_dir(tmp_path) / "node-0.jsonl").write_text(
        "".join(
            json.dumps(
                {
                    "t": t,
                    "node": node,
                    "event": "op",
                    "kind": "AVG",
                    "stage": stage,
                    "dur": dur,
                    "iteration": it,
                }
            )
            + "\n"
            for it, node, stage, t, dur in avg
        )
    )
    windows = averaging_windows(cfg, tiny_scenario)
    assert [(w["iteration"], w["stage"], w["nodes"]) for w in windows] == [
        (0, 1, [EAST, WEST]),
        (1, 1, [EAST, WEST]),
    ]
    assert windows[0]["measured_s"] == pytest.approx((1.5 - 1.2) / 2.0)  # scenario seconds
    assert windows[0]["earliest_s"] == pytest.approx((1.4 - 1.2) / 2.0)
    [row] = averaging_by_stage(windows)  # iteration 0 left out: it opens the connections
    modelled = Costs(tiny_scenario).averaging_s(1, [EAST, WEST])
    assert row["iterations"] == 1 and row["ratio"] == pytest.approx(0.15 / modelled)


@pytest.mark.swarm
def test_run_reports_averaging_close_to_the_model(tmp_path, tiny_schedule, tiny_scenario):
    """The summary reports every averaging stage; no node of a stage leaves averaging before
    the modelled time (the pad counts from the stage's last start), and what the run adds to
    the model (its real exchange on loopback, not time-scaled) stays within a wide band of
    wall time for a loaded machine."""
    scale = 10.0
    args = [
        "run",
        "0",
        "6",
        "ca-partial",
        "0",
        "--scenario",
        str(SETTINGS / "tiny.toml"),
        "--schedule",
        str(tiny_schedule),
        "--iterations",
        "3",
        "--time-scale",
        str(scale),
        "--base-port",
        str(free_base_port(6, seed=11)),
        "--runs",
        str(tmp_path / "runs"),
        "--peer-timeout",
        "30",
    ]
    r = run_skippipe(args, cwd=tmp_path, timeout_s=240)
    assert r.returncode == 0, r.stdout
    [run_dir] = (tmp_path / "runs").iterdir()
    windows = averaging_windows(load_config(run_dir / "config.json"), tiny_scenario)
    stages = sorted({w["stage"] for w in windows})
    assert stages == [0, 1] and len(windows) == 3 * 2, r.stdout
    assert re.findall(r"averaging stage (\d+) \(2 nodes\): measured", r.stdout) == ["0", "1"], r.stdout
    for w in windows:
        assert w["earliest_s"] >= 0.95 * w["modelled_s"], w
        if w["iteration"] > 0:  # the first opens the connections inside the stage
            assert (w["measured_s"] - w["modelled_s"]) * scale < EXCHANGE_WALL_S, w
