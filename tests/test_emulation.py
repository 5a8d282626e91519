"""The one emulation object: scenario seconds x time_scale (x the slow factor) for links, compute
and averaging, and divided out again for reports."""

import asyncio
import json
import time

import pytest

from skippipe.costs import Costs
from skippipe.network import GIB
from skippipe.ops import OpKind
from skippipe.runtime.launch.report import measured_iteration
from skippipe.runtime.net.linkemu import LinkModel
from skippipe.runtime.node.emulation import Emulation
from skippipe.runtime.node.runconfig import RunConfig, events_dir


def _config(tmp_path, time_scale=2.0, compute=True, links=True) -> RunConfig:
    return RunConfig(
        run_dir=str(tmp_path),
        scenario_path="",
        scenario_overrides={},
        schedule_path="",
        variant="random",
        iterations=1,
        time_scale=time_scale,
        emulate_compute=compute,
        emulate_links=links,
        peers={},
        local_nodes=(),
        data_nodes=(),
        epoch=0.0,
        seed=0,
        peer_timeout_s=1.0,
        connect_timeout_s=1.0,
    )


def test_links_are_scaled_per_destination(tmp_path, tiny_scenario):
    emu = Emulation.from_config(_config(tmp_path, 2.0), Costs(tiny_scenario), node=0)
    links = emu.link_emulator()
    # node 0 is in "east", node 1 in "west" (round-robin), node 3 in "east" again
    assert links.model(1) == LinkModel(0.020, 0.01 * GIB, 0.002, 2.0)
    assert links.model(3) == LinkModel(0.0005, 1.0 * GIB, 0.002, 2.0)
    assert links.model(1).delay_s(1000) == pytest.approx(2.0 * (0.020 + 1000 / (0.01 * GIB) + 0.002))
    with pytest.raises(KeyError):
        links.model(0)  # no link to itself
    assert (
        Emulation.from_config(_config(tmp_path, links=False), Costs(tiny_scenario), 0).link_emulator() is None
    )


def test_compute_and_averaging_are_scaled(tmp_path, tiny_scenario):
    costs = Costs(tiny_scenario)
    emu = Emulation.from_config(_config(tmp_path, 0.5), costs, node=2)
    # 0.004 s/sample/layer x 1 layer per stage x 2 samples x 1.5 (backward) x 0.5 (time scale)
    assert emu.op_s(OpKind.B) == pytest.approx(0.006)
    assert emu.op_s(OpKind.F) == pytest.approx(costs.forward_s(2) * 0.5)
    assert emu.averaging_s(1, [2, 3]) == pytest.approx(costs.averaging_s(1, [2, 3]) * 0.5)
    off = Emulation.from_config(_config(tmp_path, 0.5, compute=False, links=False), costs, node=2)
    assert off.op_s(OpKind.B) == 0.0 and off.averaging_s(1, [2, 3]) == 0.0


def test_slow_factor_stretches_compute_averaging_and_link_bytes(tmp_path, tiny_scenario):
    costs = Costs(tiny_scenario)
    emu = Emulation.from_config(_config(tmp_path, 2.0), costs, node=2)
    before = emu.op_s(OpKind.F), emu.averaging_s(1, [2, 3])
    emu.slow = 4.0
    assert emu.op_s(OpKind.F) == pytest.approx(4 * before[0])
    assert emu.averaging_s(1, [2, 3]) == pytest.approx(4 * before[1])
    assert emu.link_bytes(1000) == 4000
    assert emu.scenario_s(8.0) == 4.0  # reports divide the time scale only


def test_reports_divide_the_time_scale_out(tmp_path):
    cfg = _config(tmp_path, 4.0)
    assert Emulation.from_config(cfg).scenario_s(2.0) == 0.5
    events_dir(tmp_path).mkdir()
    lines = [
        {"t": 10.0, "node": 0, "event": "op", "dur": 2.0, "iteration": 0},
        {"t": 14.0, "node": 0, "event": "send", "arrive": 18.0, "iteration": 0},
    ]
    (events_dir(tmp_path) / "node-0.jsonl").write_text("".join(json.dumps(e) + "\n" for e in lines))
    op, send = sorted(measured_iteration(cfg, 0), key=lambda e: e["t"])
    assert (op["t"], op["dur"]) == (0.0, 0.5)
    assert (send["t"], send["arrive"]) == (1.0, 2.0)


def test_padding_waits_for_the_rest_only(tmp_path, tiny_scenario):
    emu = Emulation.from_config(_config(tmp_path), Costs(tiny_scenario), node=0)
    t0 = time.monotonic()
    asyncio.run(emu.pad(t0 - 10.0, 0.5))  # already slower than the target: no wait
    asyncio.run(emu.pad(time.monotonic(), 0.05))
    assert 0.05 <= time.monotonic() - t0 < 5.0


def test_node_formulas_need_the_costs(tmp_path):
    emu = Emulation.from_config(_config(tmp_path))
    with pytest.raises(ValueError, match="costs"):
        emu.op_s(OpKind.F)
    with pytest.raises(ValueError, match="time_scale"):
        Emulation(0.0)
