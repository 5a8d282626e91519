import dataclasses
import json

import pytest

from conftest import SETTINGS
from schedules import make_paths, make_schedule, replace_path, sequential_ops, timed_schedule, tiny
from skippipe.costs import Costs
from skippipe.ops import B, F
from skippipe.rules import cc3_problem, planned_makespan, validate, violations
from skippipe.scenario import load_scenario
from skippipe.schedule import Hop, ScheduleError
from skippipe.schedule_file import from_dict, load_schedule, save_schedule, to_dict


def rules(sched, sc):
    return {v.rule for v in violations(sched, sc)}


def test_valid_schedules_pass():
    sc = tiny()
    validate(make_schedule(sc, make_paths()), sc)
    validate(timed_schedule(sc), sc)


def test_cc1_path_must_start_at_its_own_data_node():
    sc = tiny()
    paths = list(make_paths())
    paths[0] = dataclasses.replace(paths[0], hops=(Hop(0, 1),) + paths[0].hops[1:])
    found = violations(make_schedule(sc, paths), sc)
    assert found[0].rule == "CC1" and found[0].microbatch == 0 and found[0].hop == 0


def test_cc1_stage_zero_never_revisited():
    sc = tiny()
    paths = replace_path(make_paths(), 2, [(0, 0), (1, 3), (0, 1)])
    assert "CC1" in rules(make_schedule(sc, paths), sc)


def test_cc2_exactly_k_distinct_stages():
    sc = tiny()
    short = replace_path(make_paths(), 1, [(0, 0), (2, 4)])
    assert "CC2" in rules(make_schedule(sc, short), sc)
    twice = replace_path(make_paths(), 1, [(0, 0), (2, 4), (2, 4)])
    assert "CC2" in rules(make_schedule(sc, twice), sc)


def test_cc3_swap_goes_back_at_most_one_stage():
    sc = tiny()
    paths = replace_path(make_paths(), 4, [(0, 1), (3, 5), (1, 2)])
    found = [v for v in violations(make_schedule(sc, paths), sc) if v.rule == "CC3"]
    assert found and found[0].microbatch == 4 and found[0].hop == 2


def test_cc3_limits_on_longer_paths():
    sc = load_scenario(SETTINGS / "geo-distributed.toml")
    assert cc3_problem((0, 2, 1, 4), sc) is None  # one adjacent swap
    assert cc3_problem((0, 2, 1, 4, 3), sc) is None  # two swaps, distance 2
    assert "jumps 5" in cc3_problem((0, 5, 4, 3), sc)[1]  # forward jump beyond 4 stages
    assert "more than 2 swaps" in cc3_problem((0, 2, 1, 4, 3, 6, 5), _with(sc))[1]
    assert "distance 3" in cc3_problem((0, 2, 1, 4, 3, 6, 5), _with(sc, max_swaps=3))[1]


def _with(sc, **limits):
    """geo-distributed's CC3 limits on 8 stages, so paths can be long enough to break them."""
    p = dataclasses.replace(sc.pipeline, stage_sizes=(1,) * 8, **limits)
    return dataclasses.replace(sc, pipeline=p)


def test_tc1_even_load_over_non_first_stages():
    sc = tiny()
    paths = replace_path(make_paths(), 1, [(0, 0), (1, 3), (3, 5)])  # stage 1 gets 5 > 4
    found = violations(make_schedule(sc, paths), sc)
    assert [v.rule for v in found] == ["TC1"] and "stage 1" in found[0].message


def test_tc1_memory_slots_with_start_times():
    sc = tiny()  # m = 2
    paths = make_paths()
    first = [F(mb, 0) for mb in (0, 1, 2)]  # node 0 starts three forwards at once
    rest = [op for op in sequential_ops(paths) if op not in first]
    found = violations(timed_schedule(sc, paths, first + rest), sc)
    assert [v.rule for v in found] == ["TC1"] and "holds 3" in found[0].message


def test_tc2_no_overlap_on_a_node():
    sc = tiny()
    s = timed_schedule(sc)
    v = s.variants["ca-partial"]
    t0 = {o: o.start_s for ops in v.order.values() for o in ops}
    shift = t0[F(1, 0)] - t0[F(0, 0)] - 0.001  # microbatch 1 runs 1 ms after microbatch 0
    order = {
        n: tuple(dataclasses.replace(o, start_s=o.start_s - shift) if o.microbatch == 1 else o for o in ops)
        for n, ops in v.order.items()
    }
    found = violations(make_schedule(sc, v.paths, "ca-partial", order), sc)
    assert found and found[0].rule == "TC2" and found[0].microbatch in (0, 1)


def test_timing_respects_link_time():
    sc = tiny()
    v = timed_schedule(sc).variants["ca-partial"]
    order = {
        n: tuple(dataclasses.replace(o, start_s=o.start_s - 0.5) if o == B(5, 0) else o for o in ops)
        for n, ops in v.order.items()
    }
    assert "TIMING" in rules(make_schedule(sc, v.paths, "ca-partial", order), sc)


def test_order_must_list_every_operation():
    sc = tiny()
    v = timed_schedule(sc).variants["ca-partial"]
    order = dict(v.order)
    order[0] = order[0][1:]
    assert "ORDER" in rules(make_schedule(sc, v.paths, "ca-partial", order), sc)


def test_baseline_shape():
    sc = tiny()
    full = [(g // 3, [(1, 2 + g % 2), (2, 4), (3, 5)]) for g in range(6)]
    validate(make_schedule(sc, make_paths(full), "baseline"), sc)
    shuffled = list(full)
    shuffled[0] = (0, [(2, 4), (1, 2), (3, 5)])
    assert "BASELINE" in rules(make_schedule(sc, make_paths(shuffled), "baseline"), sc)
    uneven = [(o, [(1, 2), (2, 4), (3, 5)]) for o in (0, 1) for _ in range(3)]
    assert "BASELINE" in rules(make_schedule(sc, make_paths(uneven), "baseline"), sc)


def test_allocation_and_counts():
    sc = tiny()
    assert "ALLOC" in rules(make_schedule(sc, make_paths(), allocation=((0, 1), (2, 3), (4, 5))), sc)
    wrong_node = replace_path(make_paths(), 0, [(0, 0), (1, 4), (2, 2)])
    assert "ALLOC" in rules(make_schedule(sc, wrong_node), sc)
    assert "COUNT" in rules(make_schedule(sc, make_paths()[:5]), sc)


def test_json_round_trip_and_makespan(tmp_path):
    sc = tiny()
    s = timed_schedule(sc)
    path = tmp_path / "s.json"
    save_schedule(s, path)
    text = path.read_text()
    assert '"0":' not in text  # integer lists, never stringified int keys
    loaded, _ = load_schedule(path, sc)
    v0, v1 = s.variants["ca-partial"], loaded.variants["ca-partial"]
    assert v1.paths == v0.paths
    assert planned_makespan(v1, Costs(sc)) == pytest.approx(planned_makespan(v0, Costs(sc)), abs=1e-5)


def test_malformed_and_mismatched_files(tmp_path):
    sc = tiny()
    p = tmp_path / "s.json"
    p.write_text("{not json")
    with pytest.raises(ScheduleError, match="not valid JSON"):
        load_schedule(p, sc)
    d = to_dict(make_schedule(sc, make_paths()))
    d["variants"]["random"]["paths"][0]["hops"][1]["node"] = "2"
    p.write_text(json.dumps(d))
    with pytest.raises(ScheduleError, match="expected an integer"):
        load_schedule(p, sc)
    d = to_dict(make_schedule(sc, make_paths()))
    d["scenario"]["hash"] = "0" * 16
    p.write_text(json.dumps(d))
    with pytest.raises(ScheduleError, match="re-plan"):
        load_schedule(p, sc)
    del d["variants"]
    with pytest.raises(ScheduleError, match="malformed"):
        from_dict(d)
