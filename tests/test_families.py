"""Schedule families (naive, gpipe, 1f1b, zb-h1) under their own memory rules (family memory):
the published formulas on a uniform scenario, their memory rules, and the variants on the tiny
scenario. The capped forms (the shared budget of memory slots): test_families_capped.py.

Uniform scenario: every forward 1 s, a loss of LOSS_S on the last stage (each family's default
placement), zero-latency links, one node per stage (p stages, m microbatches), or several
identical columns. The classic formulas fold the LM head into the last stage's forward; here it
is its own op there, so that stage is LOSS_S slower per microbatch and every schedule takes its
formula plus m LOSS_S."""

import dataclasses

import pytest

from skippipe.costs import Costs
from skippipe.memory import family_limits, peak_along
from skippipe.ops import Op
from skippipe.planner.families import family_variant
from skippipe.rules import planned_makespan, violations
from skippipe.schedule import Schedule
from skippipe.schedule_file import from_dict, to_dict
from skippipe.sim.simulate import simulate
from test_simulate import allocation_of, make_scenario

LOSS_S = 0.05  # the loss op's cost (forward 1 s): positive, as in every settings file


def uniform(p, m, backward_factor, width=1):
    """(scenario, allocation): forward 1 s, backward `backward_factor` s, loss LOSS_S, no links."""
    sizes = [width] * p
    sc = make_scenario(
        sizes,
        slots=1,
        mb_per_node=m,
        f_s=1.0,
        backward_factor=backward_factor,
        loss_factor=LOSS_S,
        ser_s=0.0,
        prop_s=0.0,
    )
    return sc, allocation_of(sizes)


def run_family(name, sc, alloc, loss_at=None):
    v = family_variant(name, sc, alloc, family_memory=True, loss_at=loss_at)
    sched = Schedule(sc.name, sc.content_hash, sc.source, alloc, {name: v})
    assert violations(sched, sc) == []
    return simulate(sched, name, sc), v, sched


CASES = [(p, m) for p in (2, 3, 4, 5) for m in (p, 2 * p + 1)]


@pytest.mark.parametrize("p,m", CASES)
def test_gpipe_bubble_fraction(p, m):
    for backward_factor in (1.0, 2.0):
        r, _, _ = run_family("gpipe", *uniform(p, m, backward_factor))
        f_b = 1.0 + backward_factor  # bubble (p-1)/(m+p-1) of (m+p-1)(F+B)
        assert r.compute_s == pytest.approx((m + p - 1) * f_b + m * LOSS_S)
        assert [s.peak_activations for s in r.per_node] == [m] * p  # every microbatch held


@pytest.mark.parametrize("p,m", CASES)
def test_1f1b_bubble_fraction_and_peak_per_stage(p, m):
    r, _, _ = run_family("1f1b", *uniform(p, m, 1.0))
    assert r.compute_s == pytest.approx((m + p - 1) * 2.0 + m * LOSS_S)  # (p-1)(F+B) bubble
    assert [s.peak_activations for s in r.per_node] == [min(p - i, m) for i in range(p)]


def test_1f1b_and_zb_h1_match_their_formulas_with_the_loss_last_not_at_the_origin():
    """F = B = W = 1 s, p = 4, m = 8: 1F1B's (m+p-1)(F+B) = 33 s and ZB-H1's m(F+B+W) +
    (p-1)(F+B-W) = 27 s, plus m LOSS_S. With the loss at the origin (SkipPipe's ring) the last
    stage's output travels back first and the origin's losses wait behind its own work."""
    p, m = 4, 8
    sc, alloc = uniform(p, m, 2.0)
    assert run_family("1f1b", sc, alloc)[0].compute_s == pytest.approx(33 + m * LOSS_S)
    assert run_family("zb-h1", sc, alloc)[0].compute_s == pytest.approx(27 + m * LOSS_S)
    ring, v, _ = run_family("1f1b", sc, alloc, "origin")
    assert v.loss_at == "origin" and ring.compute_s > 38.9
    # B = 2F with the loss at the origin: it waits for the origin's running backward unless p
    # = 2 (mod 3) lands it between two origin ops
    r, _, _ = run_family("1f1b", *uniform(2, 4, 2.0), "origin")
    assert r.compute_s > (4 + 1) * 3.0 + 3 * 1.0


@pytest.mark.parametrize("p,m", CASES)
def test_zb_h1_bubble(p, m):
    """F = B = W = 1 s (fused backward 2 s, weight_grad_share 0.5). The DualPipe README's
    (p-1)(F+B-2W) takes B as the fused backward; in the zero-bubble paper's terms (B = input
    gradient) it is (p-1)(F+B-W): a third of 1F1B's (p-1)(F+B+W)."""
    r, v, _ = run_family("zb-h1", *uniform(p, m, 2.0))
    f, b_full, w = 1.0, 2.0, 1.0
    assert r.compute_s - m * (f + b_full + LOSS_S) == pytest.approx((p - 1) * (f + b_full - 2 * w))
    assert v.split_backward and [s.peak_activations for s in r.per_node] == [p] * p


def test_naive_bubble_and_columns_run_side_by_side():
    p, m = 4, 3
    one, _, _ = run_family("naive", *uniform(p, m, 2.0))
    assert one.compute_s == pytest.approx(m * (p * 3.0 + LOSS_S))  # bubble (p-1)/p
    assert {s.peak_activations for s in one.per_node} == {1}
    for name in ("naive", "gpipe", "1f1b", "zb-h1"):  # identical columns: the same iteration
        single, _, _ = run_family(name, *uniform(p, m, 2.0))
        double, _, _ = run_family(name, *uniform(p, m, 2.0, width=2))
        assert double.compute_s == pytest.approx(single.compute_s), name


@pytest.mark.parametrize("name", ["naive", "gpipe", "1f1b", "zb-h1"])
def test_families_on_tiny_validate_replay_and_round_trip(name, tiny_scenario):
    sc = tiny_scenario
    alloc = ((0, 1), (2, 3), (4,), (5,))
    r, v, sched = run_family(name, sc, alloc)
    assert v.planned and v.has_start_times
    assert r.iteration_s == pytest.approx(v.provenance.objective, abs=1e-6)  # the dry run, replayed
    assert planned_makespan(v, Costs(sc)) == pytest.approx(r.makespan_s)
    assert {p.stages for p in v.paths} == {(0, 1, 2, 3)}
    # nodes 4 and 5 serve both columns: a round there is two microbatches
    rule = family_limits(name, v.paths, sched.stage_of(), 4)
    assert v.activation_limits == rule
    assert all(s.peak_activations <= rule[s.node] for s in r.per_node)
    back = from_dict(to_dict(sched))
    assert back.variants[name] == v


def test_validator_holds_a_family_to_its_own_rule(tiny_scenario):
    sc = tiny_scenario
    alloc = ((0, 1), (2, 3), (4,), (5,))
    v = family_variant("1f1b", sc, alloc, family_memory=True)
    node = 5  # stage 3 of 4: one round (two microbatches) at a time
    gpipe_like = tuple(sorted(v.order[node], key=lambda op: op.kind.value != "F"))
    assert peak_along(gpipe_like) == 6
    looser = dataclasses.replace(
        v,
        order={**v.order, node: tuple(Op(o.kind, o.microbatch, o.hop) for o in gpipe_like)},
        activation_limits={**v.activation_limits, node: None},
    )
    found = violations(Schedule(sc.name, sc.content_hash, sc.source, alloc, {"1f1b": looser}), sc)
    assert [x.rule for x in found] == ["MEMORY"] and "may hold 2" in str(found[0])
    tight = dataclasses.replace(v, activation_limits={**v.activation_limits, node: 1})
    found = violations(Schedule(sc.name, sc.content_hash, sc.source, alloc, {"1f1b": tight}), sc)
    assert {x.rule for x in found} == {"TC1"}


def test_malformed_memory_and_backward_fields_are_one_error(tiny_scenario):
    from skippipe.schedule import ScheduleError

    sc = tiny_scenario
    alloc = ((0, 1), (2, 3), (4,), (5,))
    v = family_variant("zb-h1", sc, alloc)
    d = to_dict(Schedule(sc.name, sc.content_hash, sc.source, alloc, {"zb-h1": v}))
    assert d["variants"]["zb-h1"]["backward"] == "split"
    d["variants"]["zb-h1"]["activation_limits"][0]["limit"] = 0
    with pytest.raises(ScheduleError, match="at least 1"):
        from_dict(d)
    d["variants"]["zb-h1"]["activation_limits"][0]["limit"] = None
    d["variants"]["zb-h1"]["backward"] = "halved"
    with pytest.raises(ScheduleError, match="not fused or split"):
        from_dict(d)
