"""The shared memory budget: the classic families in their capped forms within the scenario's
memory slots (the default), the schedule's record of the rule each variant was made for, and
the validator holding a variant to it. Their own rules: test_families.py."""

import dataclasses
import json

import pytest

from conftest import SETTINGS
from skippipe.cli import main
from skippipe.memory import hold_within, peak_along, rounds_within
from skippipe.ops import B, F, Op, OpKind, W
from skippipe.placement import fold
from skippipe.plan_options import PlanOptions
from skippipe.planner.families import family_variant
from skippipe.planner.paths import PlanningError
from skippipe.planning import build_schedule
from skippipe.rules import violations
from skippipe.scenario import load_scenario
from skippipe.schedule import Schedule
from skippipe.schedule_file import from_dict, to_dict
from skippipe.sim.simulate import simulate
from skippipe.variants import REGISTRY
from test_simulate import allocation_of, make_scenario

FAMILIES = tuple(v.name for v in REGISTRY.values() if v.family)  # in table order

TINY_ALLOC = ((0, 1), (2, 3), (4,), (5,))
CAPPED = ("naive", "gpipe", "1f1b", "zb-h1")  # dualpipev fits no 2 slots of tiny


def run(name, sc, alloc, schedule_alloc=None, **kw):
    v = dataclasses.replace(family_variant(name, sc, alloc, **kw), allocation=alloc)
    sched = Schedule(sc.name, sc.content_hash, sc.source, schedule_alloc or alloc, {name: v})
    assert violations(sched, sc) == []
    return simulate(sched, name, sc), v, sched


def uniform(p, m, slots, width=1):
    sizes = [width] * p
    sc = make_scenario(
        sizes,
        slots=slots,
        mb_per_node=m,
        f_s=1.0,
        backward_factor=2.0,
        loss_factor=0.0,
        ser_s=0.0,
        prop_s=0.0,
    )
    return sc, allocation_of(sizes)


def kinds(ops):
    return "".join(o.kind.value for o in ops if o.kind is not OpKind.L)


def test_rounds_within_and_hold_within():
    assert rounds_within([1, 1, 1, 1], 3) == 3 and rounds_within([2, 2], 3) == 1
    assert rounds_within([4, 1], 3) == 0 and rounds_within([1, 1], 5) == 2
    pattern = [F(0, 0), F(1, 0), F(2, 0), B(0, 0), F(3, 0), B(1, 0), B(2, 0), B(3, 0)]
    held = hold_within(pattern, 2)
    assert kinds(held) == "FFBFBFBB" and peak_along(held) == 2  # 1F1B's shortened warm-up
    split = [F(0, 0), F(1, 0), B(0, 0), B(1, 0), W(0, 0), W(1, 0)]
    assert hold_within(split, 1, split=True) is None  # W(0) waits behind B(1), whose F cannot start
    assert kinds(hold_within(split[:2] + [B(0, 0), W(0, 0), B(1, 0), W(1, 0)], 1, True)) == "FBWFBW"


@pytest.mark.parametrize("p,m,slots", [(4, 8, 1), (4, 8, 2), (4, 8, 3), (5, 11, 2), (3, 6, 2)])
def test_1f1b_and_zb_h1_hold_at_most_slots_with_a_shorter_warm_up(p, m, slots):
    for name in ("1f1b", "zb-h1"):
        r, v, _ = run(name, *uniform(p, m, slots))
        assert v.memory == "slots"
        assert [s.peak_activations for s in r.per_node] == [
            min(slots, p - i if name == "1f1b" else p, m) for i in range(p)
        ], name
        warm = min(p, slots) - 1  # stage 0's forwards before its first backward
        assert kinds(v.order[0]).index("B") == warm + 1, name
    own, _, _ = run("1f1b", *uniform(p, m, slots), family_memory=True)
    assert r.iteration_s >= own.iteration_s - 1e-9  # less memory never buys a shorter iteration


def test_capped_forms_equal_the_family_rule_when_the_slots_allow_it():
    for name in ("naive", "gpipe", "1f1b", "zb-h1"):
        capped, _, _ = run(name, *uniform(4, 6, slots=6))
        own, _, _ = run(name, *uniform(4, 6, slots=6), family_memory=True)
        assert capped.iteration_s == pytest.approx(own.iteration_s), name


def test_gpipe_runs_in_rounds_of_at_most_slots():
    r, v, _ = run("gpipe", *uniform(3, 6, slots=2))
    assert {s.peak_activations for s in r.per_node} == {2}
    assert kinds(v.order[2]) == "FFBB" * 3  # fill two, drain two


@pytest.mark.parametrize("name", CAPPED)
def test_every_capped_family_on_tiny_stays_within_its_slots(name, tiny_scenario):
    sc = tiny_scenario
    r, v, sched = run(name, sc, TINY_ALLOC)
    assert all(s.peak_activations <= sc.nodes[s.node].memory_slots for s in r.per_node)
    assert all(v.activation_limits[n] <= sc.nodes[n].memory_slots for n in v.activation_limits)
    assert from_dict(to_dict(sched)).variants[name] == v  # the rule travels with the schedule


def test_dualpipev_is_refused_in_one_line_where_its_v_order_fits_no_slots(tiny_scenario):
    with pytest.raises(PlanningError, match="does not fit 2 memory slots") as e:
        family_variant("dualpipev", tiny_scenario, fold(TINY_ALLOC))
    assert "\n" not in str(e.value)


def test_dualpipev_capped_keeps_its_v_and_the_slots():
    p = 3  # 2p stages, 3 V columns of p nodes (as test_families_dualpipev.py)
    sizes = [3, p - 1] + [1] * (2 * p - 2)
    sc = make_scenario(
        sizes, slots=5, mb_per_node=8, f_s=1.0, backward_factor=2.0, loss_factor=0.0, ser_s=0.0, prop_s=0.0
    )
    alloc = allocation_of(sizes)
    r, v, _ = run("dualpipev", sc, fold(alloc), schedule_alloc=alloc)
    own, _, _ = run("dualpipev", sc, fold(alloc), schedule_alloc=alloc, family_memory=True)
    assert max(s.peak_activations for s in own.per_node) == 2 * p + 1
    assert max(s.peak_activations for s in r.per_node) <= 5
    assert r.iteration_s >= own.iteration_s - 1e-9


def test_validator_rejects_a_schedule_that_breaks_the_cap_it_was_made_for(tiny_scenario):
    sc = tiny_scenario
    _, v, _ = run("1f1b", sc, TINY_ALLOC)
    loose = dataclasses.replace(v, activation_limits={**v.activation_limits, 5: 6})
    found = violations(Schedule(sc.name, sc.content_hash, sc.source, TINY_ALLOC, {"1f1b": loose}), sc)
    assert [x.rule for x in found] == ["MEMORY"] and "shared budget of 2 memory slots" in str(found[0])
    node = 5
    gpipe_like = tuple(
        Op(o.kind, o.microbatch, o.hop) for o in sorted(v.order[node], key=lambda op: op.kind.value != "F")
    )
    over = dataclasses.replace(v, order={**v.order, node: gpipe_like})
    found = violations(Schedule(sc.name, sc.content_hash, sc.source, TINY_ALLOC, {"1f1b": over}), sc)
    assert {x.rule for x in found} == {"TC1"}
    _, own, _ = run("1f1b", sc, TINY_ALLOC, family_memory=True)
    relabelled = dataclasses.replace(own, memory="slots")  # its own rule's limits exceed the slots
    found = violations(Schedule(sc.name, sc.content_hash, sc.source, TINY_ALLOC, {"1f1b": relabelled}), sc)
    assert found and {x.rule for x in found} <= {"MEMORY", "TC1"}


def test_a_schedule_without_a_memory_record_loads_as_before(tiny_scenario):
    """Schedules written before the record: the families were planned under their own rules."""
    sc = tiny_scenario
    _, own, sched = run("zb-h1", sc, TINY_ALLOC, family_memory=True)
    d = to_dict(sched)
    assert d["variants"]["zb-h1"].pop("memory") == "family"
    back = from_dict(json.loads(json.dumps(d)))
    assert back.variants["zb-h1"].memory == "family" and violations(back, sc) == []
    d["variants"]["zb-h1"]["memory"] = "lots"
    with pytest.raises(Exception, match="memory 'lots' is not one of slots, family"):
        from_dict(d)


def test_build_uses_the_shared_budget_unless_told_otherwise(tiny_scenario):
    sc, wanted = tiny_scenario, ("baseline", *FAMILIES)
    lines = []
    shared = build_schedule(sc, PlanOptions(variants=wanted, time_limit_s=2, workers=1), lines.append)
    assert "dualpipev" not in shared.variants and any("dualpipev skipped" in x for x in lines)
    for name, v in shared.variants.items():
        assert v.memory == "slots"
        assert v.predicted["fullest_peak"] <= v.predicted["fullest_slots"] == 2, name
    keyed = load_scenario(SETTINGS / "tiny.toml", {"pipeline.family_memory": True})
    assert keyed.content_hash == sc.content_hash  # the schedule records the rule, not the hash
    own = build_schedule(keyed, PlanOptions(variants=wanted, time_limit_s=2, workers=1))
    assert {own.variants[n].memory for n in FAMILIES} == {"family"}
    assert own.variants["baseline"].memory == "slots"
    assert max(v.predicted["peak_activations"] for v in own.variants.values()) > 2


def test_create_schedule_family_memory_flag(tmp_path, capsys):
    out = tmp_path / "s.json"
    assert (
        main(
            [
                "schedule",
                str(SETTINGS / "tiny.toml"),
                "--variants",
                "baseline",
                "1f1b",
                "--time-limit",
                "2",
                "--workers",
                "1",
                "--quiet",
                "--out",
                str(out),
                "--family-memory",
            ]
        )
        == 0
    )
    table = capsys.readouterr().out
    assert "peak/slots" in table and " family " in table
    assert json.loads(out.read_text())["variants"]["1f1b"]["memory"] == "family"


def test_the_scenario_key_takes_a_boolean_only(tmp_path):
    from skippipe.settings_checks import ScenarioError

    with pytest.raises(ScenarioError, match="pipeline.family_memory.*must be bool"):
        load_scenario(SETTINGS / "tiny.toml", {"pipeline.family_memory": "yes"})
