"""The one random path generator: the planner's `random` variant and the single-process
trainer's `random` paths draw the same stage sequences, under CC1-CC3 and TC1."""

from __future__ import annotations

from collections import Counter

import pytest

from conftest import SETTINGS
from skippipe.planner import allocate, random_variant
from skippipe.planner.random_paths import random_stage_paths
from skippipe.rules import cc3_problem, stage_visit_cap
from skippipe.scenario import load_scenario
from skippipe.train.local import local_paths, microbatches_per_iteration


@pytest.mark.parametrize("settings", ["convergence-6x2.toml", "tiny.toml", "geo-distributed.toml"])
@pytest.mark.parametrize("count", [1, 7, 10])
def test_paths_obey_cc1_to_cc3_and_tc1(settings, count):
    scenario = load_scenario(SETTINGS / settings)
    p = scenario.pipeline
    paths = random_stage_paths(scenario, count, 3)
    assert len(paths) == count
    for path in paths:
        assert path[0] == 0  # CC1: from the data node's stage
        assert len(set(path)) == len(path) == p.path_length  # CC2: k distinct stages
        assert cc3_problem(path, scenario) is None  # CC3: swaps and jumps within limits
    visits = Counter(s for path in paths for s in path[1:])
    assert sum(visits.values()) == count * (p.path_length - 1)
    assert max(visits.values()) <= stage_visit_cap(scenario, count)  # TC1: even share


def test_same_seed_same_paths(tiny_scenario):
    n = 12
    assert random_stage_paths(tiny_scenario, n, 5) == random_stage_paths(tiny_scenario, n, 5)
    assert any(
        random_stage_paths(tiny_scenario, n, 5) != random_stage_paths(tiny_scenario, n, s)
        for s in range(6, 10)
    )


def test_planner_and_single_process_trainer_draw_the_same_paths():
    scenario = load_scenario(SETTINGS / "convergence-6x2.toml")
    variant = random_variant(scenario, allocate(scenario, seed=0), seed=4)
    planned = tuple(p.stages for p in sorted(variant.paths, key=lambda p: p.microbatch))
    assert planned == local_paths(scenario, "random", 4)
    assert len(planned) == microbatches_per_iteration(scenario)
