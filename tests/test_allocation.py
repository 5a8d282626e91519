"""Allocation: objective, search and the shared path helpers (skippipe/planner)."""

from __future__ import annotations

import itertools
import math
import random
from pathlib import Path

import pytest

from skippipe.costs import Costs
from skippipe.planner import (
    PlanningError,
    allocate,
    allocation_score,
    microbatch_ids,
    random_allocation,
    round_robin_allocation,
    score_breakdown,
    stage_sequences,
)
from skippipe.planner.matching import bottleneck_s
from skippipe.rules import cc3_problem, stage_visit_cap
from skippipe.scenario import load_scenario

SETTINGS = Path(__file__).resolve().parent.parent / "settings"
QUICK = {"restarts": 2, "moves": 400, "time_budget_s": math.inf}  # small, deterministic search

SMALL_MODEL = """
[model]
d_model = 64
n_heads = 4
n_layers = {layers}
ffn_hidden = 176
ctx_tokens = 8
vocab_size = 512
"""

PIPELINE = """
[pipeline]
stage_sizes = {sizes}
path_length = 2
memory_slots = 2
microbatches_per_node = 2
samples_per_microbatch = 1

[costs]
per_hop_overhead_s = 0.01    # seconds per message
"""


def _write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "hand.toml"
    path.write_text(body)
    return path


@pytest.fixture
def two_clusters(tmp_path):
    """8 nodes, round-robin over locations a (even ids) and b (odd ids); a fast local link and
    a slow a-b link. Parameters (~0.2-0.5 MB a stage) dwarf activations (2 KiB)."""
    body = (
        SMALL_MODEL.format(layers=2)
        + PIPELINE.format(sizes=[4, 4])
        + """
[network]
name = "two-clusters"
locations = ["a", "b"]
compute_s_per_sample_per_layer = { a = 0.01, b = 0.01 }
same_location_link = { latency_ms = 1, bandwidth_gib_s = 1.0 }
links = [{ a = "a", b = "b", latency_ms = 100, bandwidth_gib_s = 0.001 }]

[node_generator]
count = 8
"""
    )
    return load_scenario(_write(tmp_path, body))


@pytest.fixture
def one_slow_node(tmp_path):
    """6 nodes in one location; node 0 computes 4x slower than the others."""
    nodes = "".join(
        f'\n[[nodes]]\nlocation = "x"\ncompute_factor = {4.0 if i == 0 else 1.0}\n' for i in range(6)
    )
    body = (
        SMALL_MODEL.format(layers=3)
        + PIPELINE.format(sizes=[2, 2, 2])
        + """
[network]
name = "one-place"
locations = ["x"]
compute_s_per_sample_per_layer = { x = 0.01 }
same_location_link = { latency_ms = 1, bandwidth_gib_s = 1.0 }
links = []
"""
        + nodes
    )
    return load_scenario(_write(tmp_path, body))


def _all_allocations(scenario):
    """Every allocation of a small scenario (node sets per stage, sorted)."""
    sizes = scenario.pipeline.stage_sizes

    def split(nodes, sizes):
        if not sizes:
            yield ()
            return
        for group in itertools.combinations(nodes, sizes[0]):
            rest = [n for n in nodes if n not in group]
            for tail in split(rest, sizes[1:]):
                yield (group,) + tail

    return list(split(list(range(len(scenario.nodes))), list(sizes)))


def _brute_best(scenario) -> float:
    return min(allocation_score(scenario, a) for a in _all_allocations(scenario))


# ------------------------------------------------------------------------------------------
# Objective


def test_bottleneck_matches_brute_force():
    rng = random.Random(0)
    for _ in range(150):
        rows = rng.randint(1, 6)
        cols = rng.randint(1, rows)
        link = [[rng.choice([1.0, 2.0, 3.0, 4.0]) for _ in range(cols)] for _ in range(rows)]
        best = math.inf
        for pick in itertools.product(range(cols), repeat=rows):
            loads = [pick.count(c) for c in range(cols)]
            if max(loads) - min(loads) <= 1:
                best = min(best, max(link[i][c] for i, c in enumerate(pick)))
        assert bottleneck_s(link) == best


def test_bottleneck_with_class_counts_equals_expanded():
    link = [[1.0, 5.0], [4.0, 2.0]]
    expanded = [[1.0, 5.0, 5.0], [4.0, 2.0, 2.0], [4.0, 2.0, 2.0], [4.0, 2.0, 2.0]]
    assert bottleneck_s(link, [1, 3], [1, 2]) == bottleneck_s(expanded) == 2.0


def test_score_parts_by_hand(two_clusters):
    """Pure stages: both boundaries cross the a-b link (x2 directions); mixed stages pair a-a
    and b-b but average gradients over the a-b link."""
    costs = Costs(two_clusters)
    pure = ((0, 2, 4, 6), (1, 3, 5, 7))
    parts = score_breakdown(two_clusters, pure)
    assert parts["pipeline_s"] == pytest.approx(2 * 2 * costs.link_s(0, 1))
    assert parts["averaging_s"] == pytest.approx(
        max(costs.averaging_s(0, pure[0]), costs.averaging_s(1, pure[1]))
    )
    # stage 1 takes all 8 microbatches (k = 2), spread over its 4 equal nodes
    assert parts["compute_s"] == pytest.approx(8 * (costs.forward_s(1) + costs.backward_s(1)) / 4)
    mixed = ((0, 1, 2, 3), (4, 5, 6, 7))
    assert score_breakdown(two_clusters, mixed)["pipeline_s"] == pytest.approx(2 * 2 * costs.link_s(0, 2))
    assert allocation_score(two_clusters, pure) < allocation_score(two_clusters, mixed)


def test_score_rejects_bad_allocations(two_clusters):
    with pytest.raises(PlanningError, match="stage sizes"):
        allocation_score(two_clusters, ((0, 1, 2), (3, 4, 5, 6, 7)))
    with pytest.raises(PlanningError, match="exactly once"):
        allocation_score(two_clusters, ((0, 1, 2, 3), (3, 4, 5, 6)))


# ------------------------------------------------------------------------------------------
# Search


def test_clusters_share_a_stage_and_search_finds_the_optimum(two_clusters):
    found = allocate(two_clusters, seed=0, **QUICK)
    locations = [{two_clusters.node(n).location for n in nodes} for nodes in found.stages]
    assert all(len(locs) == 1 for locs in locations)
    assert found.score_s == pytest.approx(_brute_best(two_clusters))


def test_slow_node_goes_to_stage_zero(one_slow_node):
    """Links are all alike, so only compute differs: a later stage holding the 4x slower node
    has 1/4 + 1 node-speeds instead of 2 (1.6x the time); stage 0 is not charged its own work."""
    found = allocate(one_slow_node, seed=0, **QUICK)
    assert 0 in found.stages[0]
    with_slow_later = ((1, 2), (0, 3), (4, 5))
    assert allocation_score(one_slow_node, with_slow_later) - found.score_s == pytest.approx(
        score_breakdown(one_slow_node, with_slow_later)["compute_s"] * (1 - 1.25 / 2)
    )
    assert found.score_s == pytest.approx(_brute_best(one_slow_node))


def test_allocation_is_deterministic_given_a_seed():
    scenario = load_scenario(SETTINGS / "geo-distributed.toml")
    first = allocate(scenario, seed=7, **QUICK)
    again = allocate(scenario, seed=7, **QUICK)
    assert (first.stages, first.score_s) == (again.stages, again.score_s)


@pytest.mark.parametrize("name", ["geo-distributed", "hetero-gpus", "aws-geo-distributed", "tiny"])
def test_allocation_shape_and_beats_round_robin(name):
    scenario = load_scenario(SETTINGS / f"{name}.toml")
    found = allocate(scenario, seed=0, **QUICK)
    assert tuple(len(s) for s in found.stages) == scenario.pipeline.stage_sizes
    assert sorted(n for s in found.stages for n in s) == list(range(len(scenario.nodes)))
    assert all(list(s) == sorted(s) for s in found.stages)
    assert found.score_s == pytest.approx(allocation_score(scenario, found.stages))
    assert found.score_s <= allocation_score(scenario, round_robin_allocation(scenario)) + 1e-9
    assert set(found.breakdown) == {"averaging_s", "pipeline_s", "compute_s", "score_s"}


def test_random_allocation_is_valid_and_seeded():
    scenario = load_scenario(SETTINGS / "geo-distributed.toml")
    a = random_allocation(scenario, random.Random(1))
    assert a == random_allocation(scenario, random.Random(1))
    assert a != random_allocation(scenario, random.Random(2))
    assert tuple(len(s) for s in a) == scenario.pipeline.stage_sizes
    assert sorted(n for s in a for n in s) == list(range(len(scenario.nodes)))


# ------------------------------------------------------------------------------------------
# Shared path helpers


@pytest.mark.parametrize("name", ["geo-distributed", "aws-geo-distributed", "tiny"])
def test_stage_sequences_are_exactly_the_cc3_valid_ones(name):
    scenario = load_scenario(SETTINGS / f"{name}.toml")
    p = scenario.pipeline
    expected = sorted(
        (0,) + rest
        for rest in itertools.permutations(range(1, p.n_stages), p.path_length - 1)
        if cc3_problem((0,) + rest, scenario) is None
    )
    assert stage_sequences(scenario) == expected


def test_microbatch_ids_are_origin_major():
    scenario = load_scenario(SETTINGS / "tiny.toml")
    stages = ((4, 1), (0, 3), (2,), (5,))
    per_node = scenario.pipeline.microbatches_per_node
    assert microbatch_ids(stages, scenario) == (
        [(j, 4) for j in range(per_node)] + [(per_node + j, 1) for j in range(per_node)]
    )


@pytest.mark.parametrize("name", ["geo-distributed", "hetero-gpus", "aws-geo-distributed"])
def test_score_equals_a_node_by_node_recomputation(name):
    """The scorer works on per-location counts and caches; recompute on plain node ids."""
    scenario = load_scenario(SETTINGS / f"{name}.toml")
    costs = Costs(scenario)
    cap = stage_visit_cap(
        scenario, scenario.pipeline.stage_sizes[0] * scenario.pipeline.microbatches_per_node
    )
    rng = random.Random(4)
    for _ in range(5):
        stages = random_allocation(scenario, rng)
        n = len(stages)
        pairs = []
        for s in range(n):
            a, b = stages[s], stages[(s + 1) % n]
            big, small = (a, b) if len(a) >= len(b) else (b, a)
            pairs.append(bottleneck_s([[costs.link_s(i, j) for j in small] for i in big]))
        visits = max(
            cap / sum(1 / (costs.forward_s(i) + costs.backward_s(i)) for i in nodes) for nodes in stages[1:]
        )
        expected = (
            max(costs.averaging_s(s, nodes) for s, nodes in enumerate(stages)) + 2 * sum(pairs) + visits
        )
        assert allocation_score(scenario, stages) == pytest.approx(expected)


# ----------------------------------------------------------------------------------------------
# Skip-aware allocation (planner/skip_allocation.py)


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["iteration", "makespan"])
def test_skip_aware_allocation_is_valid_reproducible_and_never_worse_than_its_start(objective):
    from skippipe.planner.allocation import check_allocation
    from skippipe.planner.skip_allocation import _Scorer, skip_aware_allocation

    sc = load_scenario(SETTINGS / "tiny.toml")
    start = allocate(sc, seed=0, **QUICK).stages
    found = skip_aware_allocation(sc, start, objective, budget_s=0.3, seed=1)
    check_allocation(sc, found.stages)
    assert found.score_s <= found.start_score_s
    assert found.score_s == pytest.approx(_Scorer(sc, objective).score(found.stages))
    again = skip_aware_allocation(sc, start, objective, budget_s=0.3, seed=1)
    assert (again.stages, again.evaluations) == (found.stages, found.evaluations)


def test_skip_aware_neighbour_keeps_stage_sizes():
    from skippipe.planner.skip_allocation import _neighbour

    rng = random.Random(0)
    stages = ((0, 1, 2), (3, 4), (5, 6), (7,))
    for critical in (None, 0, 3):
        for _ in range(50):
            moved = _neighbour(stages, rng, critical)
            assert [len(g) for g in moved] == [3, 2, 2, 1]
            assert sorted(n for g in moved for n in g) == list(range(8))
