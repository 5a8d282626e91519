"""The baseline (full pipeline) and random (network-blind skipping) variants."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest

from skippipe.planner import allocate, baseline_variant, random_variant, round_robin_allocation
from skippipe.rules import stage_visit_cap, violations
from skippipe.scenario import load_scenario
from skippipe.schedule import Schedule

SETTINGS = Path(__file__).resolve().parent.parent / "settings"
SETTING_FILES = sorted(SETTINGS.glob("*.toml"))


def _schedule(scenario, allocation, variants) -> Schedule:
    return Schedule(
        scenario.name, scenario.content_hash, scenario.source, allocation, {v.name: v for v in variants}
    )


@pytest.mark.parametrize("path", SETTING_FILES, ids=lambda p: p.stem)
def test_baseline_and_random_validate_on_every_setting(path):
    scenario = load_scenario(path)
    allocation = round_robin_allocation(scenario)
    variants = [baseline_variant(scenario, allocation), random_variant(scenario, allocation, 0)]
    assert violations(_schedule(scenario, allocation, variants), scenario) == []
    n = scenario.pipeline.stage_sizes[0] * scenario.pipeline.microbatches_per_node
    assert all(len(v.paths) == n and v.order is None for v in variants)


def test_variants_validate_on_a_searched_allocation():
    scenario = load_scenario(SETTINGS / "geo-distributed.toml")
    found = allocate(scenario, seed=0, restarts=1, moves=200, time_budget_s=math.inf)
    variants = [baseline_variant(scenario, found), random_variant(scenario, found, 3)]
    assert violations(_schedule(scenario, found.stages, variants), scenario) == []


def test_baseline_follows_columns_where_stage_sizes_match():
    scenario = load_scenario(SETTINGS / "tiny.toml")  # stage sizes [2, 2, 1, 1]
    allocation = ((0, 3), (1, 4), (2,), (5,))
    v = baseline_variant(scenario, allocation)
    for p in v.paths:
        column = allocation[0].index(p.origin)
        assert p.nodes == (p.origin, allocation[1][column], 2, 5)
    assert v.provenance.solver == "baseline"


def test_baseline_spreads_uneven_stages_within_one():
    scenario = load_scenario(SETTINGS / "geo-distributed.toml")  # stage sizes [5, 3, 3, ...]
    allocation = round_robin_allocation(scenario)
    loads = Counter(h.node for p in baseline_variant(scenario, allocation).paths for h in p.hops[1:])
    for nodes in allocation[1:]:
        counts = [loads[n] for n in nodes]
        assert max(counts) - min(counts) <= 1


def test_random_is_reproducible_and_differs_across_seeds():
    scenario = load_scenario(SETTINGS / "geo-distributed.toml")
    allocation = round_robin_allocation(scenario)
    first = random_variant(scenario, allocation, seed=5)
    assert first.paths == random_variant(scenario, allocation, seed=5).paths
    assert first.paths != random_variant(scenario, allocation, seed=6).paths
    assert (first.provenance.solver, first.provenance.seed) == ("random", 5)


def test_random_balances_stages_and_nodes():
    scenario = load_scenario(SETTINGS / "geo-distributed.toml")
    allocation = round_robin_allocation(scenario)
    paths = random_variant(scenario, allocation, seed=11).paths
    stage_visits = Counter(h.stage for p in paths for h in p.hops[1:])
    assert max(stage_visits.values()) <= stage_visit_cap(scenario, len(paths))
    node_visits = Counter(h.node for p in paths for h in p.hops[1:])
    for nodes in allocation[1:]:
        counts = [node_visits[n] for n in nodes]
        assert max(counts) - min(counts) <= 1
    assert len({p.stages for p in paths}) > 1  # not one sequence for everyone
