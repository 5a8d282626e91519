"""ca-partial keeps the better of its plan and that plan's paths run first come first served."""

from __future__ import annotations

import dataclasses

from conftest import SETTINGS
from skippipe.planner.cpsat import Rules
from skippipe.planner.greedy import greedy_plan
from skippipe.planner.model_data import build_data, plan_values
from skippipe.planner.partial import PlanResult, better_of_fcfs, check_plan, to_variant
from skippipe.scenario import load_scenario
from skippipe.schedule import Provenance, Schedule
from skippipe.sim.simulate import simulate

TINY_ALLOCATION = ((0, 1), (2, 3), (4,), (5,))


def _greedy(objective: str):
    sc = load_scenario(SETTINGS / "tiny.toml")
    data = build_data(sc, TINY_ALLOCATION)
    plan = greedy_plan(data, objective, runs=1)
    return sc, data, PlanResult(plan, "GREEDY", plan_values(data, plan)[objective], None)


def test_a_plan_no_worse_than_its_fcfs_replay_is_kept():
    sc, data, result = _greedy("iteration")
    best = better_of_fcfs(sc, data, result, Rules())
    assert best.objective <= result.objective
    kept = better_of_fcfs(sc, data, best, Rules())  # the better one is kept as it is
    assert kept is best


def test_a_worse_plan_gives_way_to_its_fcfs_replay_which_runs_as_planned():
    sc, data, result = _greedy("makespan")
    worse = dataclasses.replace(result, objective=10**9)  # claims to be far worse than it is
    lines: list[str] = []
    best = better_of_fcfs(sc, data, worse, Rules(objective="makespan"), lines.append)
    assert best.status.startswith("FCFS") and best.objective < worse.objective
    assert best.plan.nodes == result.plan.nodes  # the same paths
    assert lines and lines[0].startswith("first-come-first-served replay")
    variant = to_variant("ca-partial", data, best.plan, Provenance("cp-sat"), ordered=True)
    check_plan(sc, data, variant, best.plan)  # valid, and the model's values recompute
    sched = Schedule(sc.name, sc.content_hash, sc.source, TINY_ALLOCATION, {"ca-partial": variant})
    planned = simulate(sched, "ca-partial", sc)
    fcfs = simulate(sched, "ca-partial", sc, use_order=False)
    # the replay is its own first-come-first-served run: a late message costs it no reordering
    assert abs(planned.makespan_s - fcfs.makespan_s) <= 2 * data.tick_s
    assert planned.makespan_s <= best.objective * data.tick_s + 1e-6
