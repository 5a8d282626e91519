"""Lower bounds (skippipe/planner/bounds.py): the stage-set times equal an enumeration of every
path, and the data-node relaxation never exceeds the brute-force optimum (under every rule set
the tests switch), while it is tight where the visit share forces slow stage sets."""

from __future__ import annotations

import itertools

import pytest

from skippipe.planner.bounds import PathBounds, set_times
from skippipe.planner.cpsat import PathModel, solve
from skippipe.planner.greedy import greedy_plan
from skippipe.planner.model_data import Rules, all_sequences, plan_values
from test_cpsat import CASES, RULE_CASES, SOLVE_S, brute_force, data_for, make_scenario

RELAX_S = 5.0  # tiny relaxations are proven optimal in milliseconds
RULE_SETS = {
    "all": Rules(objective="makespan"),
    "iteration": Rules(),
    "no-memory": Rules(tc1_memory=False, objective="makespan"),
    "no-tc2": Rules(tc2=False, tc1_memory=False, objective="makespan"),
    "no-load": Rules(tc1_load=False, objective="makespan"),
    "no-cc3": Rules(cc3=False, objective="makespan"),
}
INSTANCES = {**CASES, **{f"rule-{r}": spec for r, (spec, _, _) in RULE_CASES.items()}}


def sequences_for(data, rules):
    return data.sequences if rules.cc3 else all_sequences(data)


def enumerate_times(data, origin, sequences):
    """Per stage set, the least fwd / bwd / round trip / tail over every concrete path."""
    out = {}
    for seq in sequences:
        for rest in itertools.product(*(data.allowed[origin][s] for s in seq[1:])):
            p = (origin,) + rest
            fwd = data.dur["F"][origin]
            for a, b in zip(p, p[1:] + (origin,)):
                fwd += data.link[a][b] + (data.dur["F"][b] if b != origin else 0)
            t, tails = data.link[origin][p[-1]], {}
            for h in range(len(p) - 1, 0, -1):
                t += data.dur["B"][p[h]]
                tails[seq[h]] = t
                t += data.link[p[h]][p[h - 1]]
            bwd = t + data.dur["B"][origin]
            st = tuple(sorted(seq[1:]))
            old = out.setdefault(st, [fwd, bwd, data.path_ticks(p), dict(tails)])
            old[0], old[1], old[2] = min(old[0], fwd), min(old[1], bwd), min(old[2], data.path_ticks(p))
            for s, v in tails.items():
                old[3][s] = min(old[3][s], v)
    return {
        st: (f, b, rt, max(v + data.avg[s] for s, v in tails.items()))
        for st, (f, b, rt, tails) in out.items()
    }


@pytest.mark.parametrize("case", ["reorder", "slow-node", "rule-cc3"])
def test_set_times_equal_an_enumeration_of_every_path(case):
    data = data_for(make_scenario(**INSTANCES[case]))
    for origin in data.origins():
        times = set_times(data, origin, data.sequences)
        want = enumerate_times(data, origin, data.sequences)
        assert {st: (t.fwd, t.bwd, t.round_trip, t.tail) for st, t in times.items()} == want


@pytest.mark.parametrize("rules", sorted(RULE_SETS))
@pytest.mark.parametrize("case", sorted(INSTANCES))
def test_relaxation_never_exceeds_the_optimum(case, rules):
    data, r = data_for(make_scenario(**INSTANCES[case])), RULE_SETS[rules]
    relaxed = PathBounds(data, sequences_for(data, r)).relax(r, RELAX_S)
    assert relaxed is not None and relaxed.status == "OPTIMAL"
    assert relaxed.bound <= brute_force(data, r)


def test_relaxation_is_tight_when_the_visit_share_forces_a_far_stage():
    """Two microbatches, each stage takes one visit: one must go far. The data-free floors
    miss it; the relaxation proves the optimum."""
    spec, rules, _ = RULE_CASES["tc1_load"]
    data = data_for(make_scenario(**spec))
    bounds = PathBounds(data, data.sequences)
    plain = bounds.objective_floor(rules)
    relaxed = bounds.relax(rules, RELAX_S)
    assert plain < relaxed.bound == brute_force(data, rules)
    assert bounds.objective_floor(rules) == relaxed.bound


def test_model_with_the_relaxation_bound_keeps_the_optimum():
    data, rules = data_for(make_scenario(**CASES["one-slot"])), Rules()
    bounds = PathBounds(data, data.sequences)
    bounds.relax(rules, RELAX_S)
    result = solve(PathModel(data, rules, lower=bounds), SOLVE_S, seed=0, workers=1)
    assert result.status == "OPTIMAL" and result.objective == brute_force(data, rules)


def test_guided_greedy_follows_the_relaxed_stage_sets():
    spec = dict(
        stage_sizes=(2, 1, 1, 1), k=3, mb_per_node=2, default_s=1.0, latency={(0, 2): 0.25, (1, 3): 0.25}
    )
    data, rules = data_for(make_scenario(**spec)), Rules()
    relaxed = PathBounds(data, data.sequences).relax(rules, RELAX_S)
    plan = greedy_plan(data, guide=relaxed)
    sets = {mb: tuple(sorted(data.stage_of[n] for n in nodes[1:])) for mb, nodes in plan.nodes.items()}
    assert sets == relaxed.stage_set
    assert plan_values(data, plan)["iteration"] >= relaxed.bound
