"""The path LNS (skippipe/planner/lns.py): every neighbourhood frees distinct microbatches of
the plan, and a search never returns a worse plan than it started from, always a valid one."""

from __future__ import annotations

import random

import pytest

from conftest import SETTINGS
from skippipe.planner.bounds import PathBounds
from skippipe.planner.greedy import greedy_plan
from skippipe.planner.lns import NEIGHBOURHOODS, _neighbourhood, improve_paths
from skippipe.planner.model_data import Rules, build_data, plan_values
from skippipe.scenario import load_scenario
from test_greedy import GEO_ALLOCATION, check_valid


@pytest.fixture(scope="module")
def geo():
    sc = load_scenario(SETTINGS / "geo-distributed.toml")
    data = build_data(sc, GEO_ALLOCATION)
    return sc, data, greedy_plan(data)


@pytest.mark.parametrize("kind", NEIGHBOURHOODS)
def test_neighbourhoods_free_distinct_microbatches(geo, kind):
    _, data, plan = geo
    ids = {mb for mb, _ in data.microbatches}
    for size in (2, 5):
        free = _neighbourhood(data, plan, size, kind, random.Random(size))
        assert free and free <= ids
        assert len(free) <= max(size, 6)  # an origin's neighbourhood is its 6 microbatches


def test_search_improves_or_keeps_the_start_and_stays_valid(geo):
    sc, data, plan = geo
    rules = Rules()
    best = improve_paths(
        data, rules, plan, budget_s=4.0, seed=0, workers=1, lower=PathBounds(data, data.sequences)
    )
    assert plan_values(data, best)["iteration"] <= plan_values(data, plan)["iteration"]
    check_valid(sc, data, best)
