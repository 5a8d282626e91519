"""Huge scenarios (2,000 nodes): the model data is built in seconds (link times per location
pair, the pruned candidate set chosen once), the allocation search stops at its wall-clock cap,
and progress lines stay short."""

import time

import pytest

from conftest import ROOT
from skippipe.planner.allocation import round_robin_allocation
from skippipe.planner.allocation_search import allocate
from skippipe.planner.model_data import build_data
from skippipe.planning import MAX_LINE, _fmt_stages
from skippipe.scenario import load_scenario

STAGES = [200] + [150] * 12  # 2,000 nodes, 13 stages
BUILD_S = 30.0  # generous for a loaded 2-core machine (about 2 s idle)


@pytest.fixture(scope="module")
def huge(tmp_path_factory):
    text = (ROOT / "settings" / "scale-120.toml").read_text()
    table = ROOT / "settings" / "networks" / "gcp-12-locations.toml"
    lines = []
    for line in text.splitlines():
        key = line.split("=")[0].strip()
        line = {
            "name": 'name = "scale-2000"',
            "n_layers": "n_layers = 52",
            "count": "count = 2000",
            "stage_sizes": f"stage_sizes = {STAGES}",
            "table": f'table = "{table}"',
        }.get(key, line)
        lines.append(line)
    path = tmp_path_factory.mktemp("huge") / "scale-2000.toml"
    path.write_text("\n".join(lines) + "\n")
    return load_scenario(path)


@pytest.mark.slow
def test_model_data_of_2000_nodes_is_built_in_seconds(huge):
    started = time.monotonic()
    data = build_data(huge, round_robin_allocation(huge))
    assert time.monotonic() - started < BUILD_S
    assert data.pruned and len(data.link) == 2000
    assert data.link[0][0] == 0 and data.link[0][1] > 0


@pytest.mark.slow
def test_allocation_of_2000_nodes_stops_at_its_cap(huge):
    started = time.monotonic()
    found = allocate(huge, seed=0, time_budget_s=0.5, restarts=3)
    assert time.monotonic() - started < BUILD_S  # its setup only: no descent past the cap
    assert sum(map(len, found.stages)) == 2000


def test_progress_line_of_huge_allocations_stays_short():
    stages = tuple(tuple(range(s * 150, (s + 1) * 150)) for s in range(13))
    line = _fmt_stages(stages)
    assert len(line) <= MAX_LINE and "150 nodes" in line and "more stages" in line
    short = "stage 0: [0, 3] | stage 1: [2, 5] | stage 2: [4] | stage 3: [1]"
    assert _fmt_stages(((0, 3), (2, 5), (4,), (1,))) == short


@pytest.mark.slow
def test_a_2000_node_plan_past_its_cap_does_the_least_work(huge):
    """Past the wall-clock cap every phase of ca-partial does the least work: one path per
    reference stage set, one placement per microbatch, no bounds or search (minutes each before)."""
    from skippipe.planner.effort import WallCap
    from skippipe.planner.partial import ca_partial_variant

    lines = []
    started = time.monotonic()
    variant = ca_partial_variant(huge, round_robin_allocation(huge), cap=WallCap(1.0, lines.append))
    assert time.monotonic() - started < 4 * BUILD_S  # setup, model data, validation: ~25 s idle
    assert len(lines) == 1 and "cut in during the first greedy plan" in lines[0]
    assert len(variant.paths) == 200 * 6 and variant.provenance.bound is None
    assert "past the wall-clock cap" in variant.provenance.status
