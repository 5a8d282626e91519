"""DualPipeV: the V placement (a node holds stage i and its mirror), its validator rule, its
schedule against the authors' table on a uniform scenario, and the variant on tiny.

Uniform scenario: F = B = W = 1 s (fused backward 2 s), a loss of LOSS_S on the last stage
(whose node under the V also holds stage 0), zero-cost links. A V column
of P nodes needs 2P stages; the scenario's stage 0 has 3 data nodes, so the V holds three
identical columns side by side (the other families' test shows identical columns run as one)."""

import dataclasses

import pytest

from skippipe.costs import Costs
from skippipe.memory import family_limits
from skippipe.placement import averaging_ends, fold, hop_stages, stages_of, v_problems
from skippipe.plan_options import PlanOptions
from skippipe.planner.families import family_variant
from skippipe.planner.paths import PlanningError
from skippipe.planning import build_schedule
from skippipe.rules import planned_makespan, violations
from skippipe.schedule import Hop, Schedule
from skippipe.schedule_file import from_dict, to_dict
from skippipe.sim.simulate import simulate
from test_simulate import allocation_of, make_scenario

F_S, B_S, W_S = 1.0, 1.0, 1.0  # forward, input gradient, weight gradient
LOSS_S = 0.05


def v_uniform(p, m):
    """(scenario, full allocation, V allocation): 2p stages, 3 V columns of p nodes."""
    sizes = [3, p - 1] + [1] * (2 * p - 2)
    sc = make_scenario(
        sizes,
        slots=1,
        mb_per_node=m,
        f_s=F_S,
        backward_factor=(B_S + W_S) / F_S,
        loss_factor=LOSS_S / F_S,
        ser_s=0.0,
        prop_s=0.0,
    )
    alloc = allocation_of(sizes)
    return sc, alloc, fold(alloc)


def run_v(sc, alloc, v_alloc):
    v = dataclasses.replace(family_variant("dualpipev", sc, v_alloc, family_memory=True), allocation=v_alloc)
    sched = Schedule(sc.name, sc.content_hash, sc.source, alloc, {"dualpipev": v})
    assert violations(sched, sc) == []
    return simulate(sched, "dualpipev", sc), v, sched


@pytest.mark.parametrize("p", [2, 3, 4])
@pytest.mark.parametrize("extra", [0, 1, 3])
def test_dualpipev_bubble_and_memory_on_a_uniform_scenario(p, extra):
    """The authors' table (DualPipe README, DualPipeV row): bubble (PP/2-1)(F&B+B-3W) with PP =
    2P chunks and B the full backward, activations PP+1 = 2P+1 per device, parameters 2x.

    Memory: 2P+1 at every node, as the table says. Bubble: the simulator measures (P-1) F, half
    the table's 2(P-1) F when F&B = F + B (one op at a time, as here). The table's pair is an
    overlapped unit that starts once both inputs are in; run as F, then B, the F starts while
    the B's gradient is still on its way, so part of each warm-up-to-steady transition that the
    table counts as bubble is work here."""
    m = 2 * p + extra  # the authors' code needs m >= 2P
    r, v, _ = run_v(*v_uniform(p, m))
    work = 2 * m * (F_S + B_S + W_S)  # both chunks of every microbatch, on every node
    assert r.compute_s - work == pytest.approx((p - 1) * F_S)
    assert {s.peak_activations for s in r.per_node} == {2 * p + 1}
    assert set(v.activation_limits.values()) == {2 * p + 1}
    assert v.split_backward and {len(ops) for ops in v.order.values() if ops} >= {2 * m * 3}


@pytest.mark.parametrize("m", [1, 2, 3])
def test_dualpipev_runs_with_fewer_rounds_than_its_authors_need(m):
    r, _, _ = run_v(*v_uniform(3, m))  # 2P = 6 > m: the step counts are cut
    assert r.compute_s > 2 * m * (F_S + B_S + W_S)


def test_v_paths_go_down_and_back_through_the_same_nodes():
    sc, alloc, v_alloc = v_uniform(3, 6)
    assert v_alloc == ((0, 1, 2), (3, 4, 5), (6, 7, 8), (6, 7, 8), (3, 4, 5), (0, 1, 2))
    _, v, sched = run_v(sc, alloc, v_alloc)
    for p in v.paths:
        assert p.stages == tuple(range(6)) and p.nodes == p.nodes[::-1]
    assert sched.stages_of("dualpipev")[3] == (1, 4) and sched.stage_of("dualpipev")[3] == 1
    assert hop_stages(v.paths[0].nodes, stages_of(v_alloc)) == tuple(range(6))


def test_fold_keeps_the_data_nodes_and_deals_the_rest_evenly():
    assert fold(((0, 1), (2, 3), (4,), (5,))) == ((0, 1), (2, 3, 4, 5), (2, 3, 4, 5), (0, 1))
    geo = fold(((0, 1, 2, 3, 4),) + tuple(tuple(range(5 + 3 * i, 8 + 3 * i)) for i in range(5)))
    assert [len(g) for g in geo] == [5, 8, 7, 7, 8, 5]
    for bad in (((0,), (1,), (2,)), ((0,), (1,))):
        with pytest.raises(ValueError, match="even number of stages"):
            fold(bad)


def test_validator_holds_the_v_placement_to_its_rule():
    sc, alloc, v_alloc = v_uniform(2, 4)
    assert v_problems(v_alloc, sc.pipeline.stage_sizes, len(sc.nodes)) == []
    _, v, _ = run_v(sc, alloc, v_alloc)
    crossed = (v_alloc[0], v_alloc[1], (5, 4, 3), v_alloc[3])
    found = violations(
        Schedule(
            sc.name,
            sc.content_hash,
            sc.source,
            alloc,
            {"dualpipev": dataclasses.replace(v, allocation=crossed)},
        ),
        sc,
    )
    assert found and found[0].rule == "ALLOC" and "stages 1 and 2" in found[0].message
    # a path that comes back up through another node of the group is no V
    p0 = v.paths[0]
    other = tuple(n for n in v_alloc[1] if n != p0.nodes[1])[0]
    bent = dataclasses.replace(p0, hops=p0.hops[:2] + (Hop(2, other),) + p0.hops[3:])
    found = violations(
        Schedule(
            sc.name,
            sc.content_hash,
            sc.source,
            alloc,
            {"dualpipev": dataclasses.replace(v, paths=(bent,) + v.paths[1:], order=None)},
        ),
        sc,
    )
    assert "returns through the nodes" in str(found[0])
    assert "ALLOC" in {
        x.rule
        for x in violations(
            Schedule(
                sc.name,
                sc.content_hash,
                sc.source,
                alloc,
                {"baseline": dataclasses.replace(v, name="baseline", order=None, activation_limits={})},
            ),
            sc,
        )
    }


def test_a_v_group_averages_its_two_stages_one_after_the_other():
    ends = averaging_ends((5.0, 4.0, 4.0, 5.0), (1.0, 2.0, 3.0, 0.5), ((0,), (1,), (1,), (0,)))
    assert ends == (6.0, 6.0, 9.0, 6.5)
    assert averaging_ends((1.0, 2.0), (1.0, 1.0), ((0,), (1,))) == (2.0, 3.0)


def test_dualpipev_on_tiny_plans_validates_replays_and_round_trips(tiny_scenario):
    sc = tiny_scenario
    sched = build_schedule(
        sc,
        PlanOptions(
            variants=("baseline", "1f1b", "dualpipev"), time_limit_s=5, workers=1, family_memory=True
        ),
    )
    v = sched.variant("dualpipev")
    assert v.allocation[0] == sched.allocation[0] and v.allocation[1] == v.allocation[2]
    assert sorted(n for g in v.allocation[:2] for n in g) == list(range(6))
    assert len(v.paths) == len(sched.variant("baseline").paths)
    r = simulate(sched, "dualpipev", sc)
    assert r.iteration_s == pytest.approx(v.predicted["iteration_s"], abs=1e-4)
    assert planned_makespan(v, Costs(sc)) == pytest.approx(r.makespan_s)
    assert v.activation_limits == family_limits("dualpipev", v.paths, sched.stage_of("dualpipev"), 4)
    assert from_dict(to_dict(sched)).variants["dualpipev"] == v


def test_a_scenario_without_a_v_skips_dualpipev_or_is_one_planning_error():
    sc = make_scenario([1, 1, 1], mb_per_node=2)
    lines = []
    sched = build_schedule(
        sc, PlanOptions(variants=("1f1b", "dualpipev"), time_limit_s=2, workers=1), lines.append
    )
    assert list(sched.variants) == ["1f1b"] and any("dualpipev skipped" in x for x in lines)
    with pytest.raises(PlanningError, match="even number of stages"):
        build_schedule(sc, PlanOptions(variants=("dualpipev",), time_limit_s=2, workers=1))
