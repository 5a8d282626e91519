"""Greedy list scheduler: its plans obey every rule, are complete feasible CP-SAT hints, keep
TC1's visit share by looking ahead, and are deterministic."""

from __future__ import annotations

from collections import Counter

import pytest
from ortools.sat.python import cp_model

from conftest import SETTINGS
from skippipe.planner import candidates
from skippipe.planner.candidates import candidate_paths
from skippipe.planner.cpsat import PathModel
from skippipe.planner.greedy import greedy_plan
from skippipe.planner.model_data import Rules, build_data, plan_values
from skippipe.planner.partial import to_variant
from skippipe.planner.paths import stage_sequences
from skippipe.rules import validate
from skippipe.scenario import load_scenario
from skippipe.schedule import Provenance, Schedule
from test_cpsat import FAR_S, NEAR_S, data_for, make_scenario

GEO_ALLOCATION = ((1, 3, 11, 13, 15), (7, 14, 16), (2, 4, 19), (0, 9, 12), (5, 10, 17), (6, 8, 18))


def check_valid(sc, data, plan):
    v = to_variant("ca-partial", data, plan, Provenance("greedy"), ordered=True)
    validate(Schedule(sc.name, sc.content_hash, sc.source, data.stages, {v.name: v}), sc)
    return v


@pytest.mark.parametrize(
    "spec",
    [
        dict(stage_sizes=(2, 2, 1, 1), k=3, mb_per_node=3, slots=2, default_s=0.5),
        dict(stage_sizes=(1, 2, 2), k=3, mb_per_node=4, slots=1, node_f_s={2: 3.0}),
        dict(stage_sizes=(2, 1, 1, 1, 1), k=4, mb_per_node=2, slots=2, latency={(0, 2): FAR_S}),
    ],
)
def test_greedy_plan_obeys_every_rule(spec):
    sc = make_scenario(**spec)
    data = data_for(sc)
    check_valid(sc, data, greedy_plan(data))


def test_greedy_plan_is_a_complete_feasible_hint():
    sc = make_scenario(stage_sizes=(2, 2, 1, 1), k=3, mb_per_node=2, slots=1, default_s=0.5)
    data = data_for(sc)
    plan = greedy_plan(data)
    pm = PathModel(data, Rules(), upper_bound=plan_values(data, plan)["iteration"])
    pm.add_hint(plan)
    solver = cp_model.CpSolver()
    solver.parameters.fix_variables_to_their_hinted_value = True
    solver.parameters.num_workers = 1
    assert solver.Solve(pm.model) == cp_model.OPTIMAL
    assert solver.Value(pm.iteration) == plan_values(data, plan)["iteration"]


def test_greedy_keeps_the_visit_share_by_looking_ahead():
    # stages 1 and 2 are near, 3 is far: a myopic choice sends every microbatch to {1, 2}, but
    # with 3 microbatches each stage may take only 2 visits, so the last one would be stuck
    sc = make_scenario(
        stage_sizes=(1, 1, 1, 1),
        k=3,
        mb_per_node=3,
        slots=3,
        default_s=NEAR_S,
        latency={(0, 3): FAR_S, (1, 3): FAR_S, (2, 3): FAR_S},
    )
    data = data_for(sc)
    plan = greedy_plan(data)
    visits = Counter(data.stage_of[n] for nodes in plan.nodes.values() for n in nodes[1:])
    assert max(visits.values()) <= data.visit_cap == 2
    check_valid(sc, data, plan)


def test_microbatches_of_a_data_node_start_in_id_order():
    sc = make_scenario(stage_sizes=(2, 2, 2), k=3, mb_per_node=3, slots=2)
    data = data_for(sc)
    plan = greedy_plan(data)
    for origin in data.origins():
        mbs = [mb for mb, o in data.microbatches if o == origin]
        starts = [plan.starts["F", mb, 0] for mb in mbs]
        assert starts == sorted(starts)


def test_greedy_is_deterministic():
    data = data_for(make_scenario(stage_sizes=(2, 2, 1, 1), k=3, mb_per_node=3))
    assert greedy_plan(data) == greedy_plan(data)


def test_beam_keeps_cheapest_paths_when_too_many(monkeypatch):
    sc = make_scenario(stage_sizes=(1, 3, 3, 3), k=4, latency={(0, 1): NEAR_S})
    data = data_for(sc)
    full = candidate_paths(data, 0)
    monkeypatch.setattr(candidates, "CANDIDATES_PER_ORIGIN", len(data.sequences) * 2)
    beamed = candidate_paths(data, 0)
    assert len(beamed) < len(full) and set(beamed) <= set(full)
    assert min(map(data.path_ticks, beamed)) == min(map(data.path_ticks, full))
    assert {n for p in beamed for n in p[1:]} == set(range(1, 10))  # every node keeps paths


def test_greedy_on_the_paper_setting_is_valid():
    sc = load_scenario(SETTINGS / "geo-distributed.toml")
    data = build_data(sc, GEO_ALLOCATION)
    plan = greedy_plan(data)
    v = check_valid(sc, data, plan)
    assert {tuple(h.stage for h in p.hops) for p in v.paths} <= set(stage_sequences(sc))
