"""The whole build (planning.build_schedule): per-variant allocations, time limits, the two
objectives, ca-partial never worse than non-ca-partial, reproducibility, the CLI's errors."""
import dataclasses
import json
from pathlib import Path

import pytest

from skippipe.cli import main
from skippipe.planner.paths import PlanningError
from skippipe.planning import PlanOptions, build_schedule, format_table, summary_rows
from skippipe.scenario import load_scenario
from skippipe.schedule import SCHEMA_VERSION, ScheduleError, from_dict, load_schedule, save_schedule, to_dict
from skippipe.placement import fold
from skippipe.variants import V_PLACED, VARIANTS
from skippipe.sim.simulate import simulate

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "settings" / "tiny.toml"
LIMIT_S = 4.0
SLACK_S = 0.5  # a phase may overrun its limit by CP-SAT's stop and the checks after it


@pytest.fixture(scope="module")
def tiny():
    return load_scenario(TINY)


@pytest.fixture(scope="module")
def built(tiny):
    return build_schedule(tiny, PlanOptions(time_limit_s=LIMIT_S, workers=1, seed=3))


def test_every_variant_obeys_its_time_limit(built):
    total = 0.0
    for name, v in built.variants.items():
        p = v.provenance
        if name in ("non-ca-partial", "ca-partial"):
            assert p.time_limit_s is not None and p.time_limit_s <= LIMIT_S
            assert p.wall_s <= p.time_limit_s + SLACK_S, name
        total += p.wall_s
    assert total <= LIMIT_S + SLACK_S


def test_partial_variants_get_their_own_allocation_and_baseline_the_full_pipeline_one(tiny, built):
    assert built.variants["baseline"].allocation == built.allocation
    assert built.variants["random"].allocation == built.allocation
    assert built.variants["ca-partial"].allocation == built.variants["non-ca-partial"].allocation
    for name in built.variants:  # each variant validates and simulates on its own allocation
        held = {}  # dualpipev: a node holds a stage and its mirror; stage_of names the lower
        for s, nodes in enumerate(built.allocation_of(name)):
            for n in nodes:
                held.setdefault(n, []).append(s)
        assert built.stages_of(name) == {n: tuple(h) for n, h in held.items()}
        assert built.stage_of(name) == {n: h[0] for n, h in held.items()}
        predicted = built.variants[name].predicted  # online: a mean over the router's seeds
        low, high = predicted.get("iteration_min_s"), predicted.get("iteration_max_s")
        got = simulate(built, name, tiny).iteration_s
        if low is None:
            assert got == pytest.approx(predicted["iteration_s"], abs=1e-3)
        else:
            assert low - 1e-3 <= got <= high + 1e-3 and low <= predicted["iteration_s"] <= high


def test_shared_allocation_keeps_one_for_all(tiny):
    sched = build_schedule(tiny, PlanOptions(time_limit_s=3, workers=1, shared_allocation=True,
                                             family_memory=True))  # dualpipev fits no 2 slots
    assert {v.allocation for n, v in sched.variants.items() if n not in V_PLACED} == {sched.allocation}
    assert sched.variants["dualpipev"].allocation == fold(sched.allocation)  # the same, as a V


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["iteration", "makespan"])
def test_ca_partial_is_never_worse_than_non_ca_partial(tiny, objective):
    key = f"{objective}_s"
    for seed in (0, 1):
        sched = build_schedule(tiny, PlanOptions(time_limit_s=5, workers=1, seed=seed,
                                                 objective=objective))
        ca, non_ca = (sched.variants[n].predicted[key] for n in ("ca-partial", "non-ca-partial"))
        assert ca <= non_ca + 1e-9


def test_replay_of_the_non_ca_order_simulates_to_the_non_ca_result(tiny, built):
    from skippipe.planner.partial import replay_variant
    from skippipe.schedule import Schedule
    non_ca = built.variants["non-ca-partial"]
    sim = simulate(built, "non-ca-partial", tiny)
    replay = replay_variant("ca-partial", non_ca, sim.order, non_ca.provenance, "iteration", sim.iteration_s)
    replay = dataclasses.replace(replay, allocation=non_ca.allocation)
    sched = Schedule(built.scenario_name, built.scenario_hash, "", built.allocation, {"ca-partial": replay})
    again = simulate(sched, "ca-partial", tiny)
    assert again.used_order
    assert again.iteration_s == pytest.approx(sim.iteration_s, abs=1e-9)


def test_the_non_ca_order_is_a_feasible_ca_plan_in_ticks(tiny, built):
    from skippipe.planner.model_data import build_data, plan_values
    from skippipe.planner.partial import timed_from_order, to_variant, check_plan
    from skippipe.schedule import Provenance
    non_ca = built.variants["non-ca-partial"]
    data = build_data(tiny, non_ca.allocation)
    timed = timed_from_order(data, non_ca.paths, simulate(built, "non-ca-partial", tiny).order)
    variant = to_variant("ca-partial", data, timed, Provenance("test"), ordered=True)
    check_plan(tiny, data, variant, timed)  # validates TC1/TC2 and recomputes the objective
    assert plan_values(data, timed)["iteration"] * data.tick_s <= non_ca.predicted["iteration_s"] + 0.05


@pytest.mark.slow
def test_one_worker_reproduces_the_schedule(tiny, built):
    again = build_schedule(tiny, PlanOptions(time_limit_s=LIMIT_S, workers=1, seed=3))

    def strip(s):
        d = to_dict(s)
        for v in d["variants"].values():
            v["provenance"].pop("wall_s")
        return d
    assert strip(again) == strip(built)


def test_table_reports_both_objectives_for_every_variant(built):
    rows = summary_rows(built)
    assert all(r["iteration_s"] and r["makespan_s"] for r in rows)
    text = format_table(rows)
    assert "iteration s" in text and "makespan s" in text and "mk/base" in text


def test_schedule_round_trips_with_per_variant_allocations(tiny, built, tmp_path):
    path = tmp_path / "tiny.json"
    save_schedule(built, path)
    loaded, _ = load_schedule(path, tiny)
    assert loaded == built or to_dict(loaded) == to_dict(built)
    assert json.loads(path.read_text())["schema_version"] == SCHEMA_VERSION


def test_old_schedule_fails_with_one_clear_line(built):
    old = to_dict(built)
    old["schema_version"] = 1
    with pytest.raises(ScheduleError, match="older than .*re-plan") as err:
        from_dict(old)
    assert "\n" not in str(err.value)


def test_variant_checked_against_its_own_allocation(tiny, built):
    from skippipe.rules import validate
    ca = built.variants["ca-partial"]
    wrong = dataclasses.replace(ca, allocation=tuple(reversed(ca.allocation)))
    bad = dataclasses.replace(built, variants={**built.variants, "ca-partial": wrong})
    with pytest.raises(ScheduleError, match="ca-partial"):
        validate(bad, tiny)


def test_bad_options_are_one_line_and_exit_2(capsys, tmp_path):
    assert main(["schedule", str(TINY), "--objective", "latency", "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert "objective 'latency'" in err and "\n" not in err
    assert main(["schedule", str(TINY), "--time-limit", "0", "--out", str(tmp_path / "x.json")]) == 2
    with pytest.raises(PlanningError):
        PlanOptions(workers=0).check()


def test_cli_writes_a_schedule_with_both_columns(capsys, tmp_path):
    out = tmp_path / "tiny.json"
    assert main(["schedule", str(TINY), "--time-limit", "3", "--workers", "1", "--quiet",
                 "--objective", "makespan", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "objective makespan" in text and "makespan s" in text
    sched, _ = load_schedule(out)
    assert set(sched.variants) == set(VARIANTS) - {"dualpipev"}  # its V order fits no 2 slots


def test_help_says_several_workers_vary(capsys):
    with pytest.raises(SystemExit):
        main(["schedule", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "same seed and time limit give the same schedule" in text and "results vary" in text
    assert "--objective" in text and "--shared-allocation" in text
