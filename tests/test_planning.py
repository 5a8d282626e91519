"""The whole build (planning.build_schedule): per-variant allocations, effort and the wall-clock
cap, the two objectives, ca-partial never worse than non-ca-partial, the same schedule under
load, the CLI's errors."""

import dataclasses
import json
import threading
from pathlib import Path

import pytest

from skippipe.cli import main
from skippipe.placement import fold
from skippipe.plan_options import PlanOptions
from skippipe.planner.paths import PlanningError
from skippipe.planning import build_schedule
from skippipe.scenario import load_scenario
from skippipe.schedule import SCHEMA_VERSION, ScheduleError
from skippipe.schedule_file import from_dict, load_schedule, save_schedule, to_dict
from skippipe.schedule_summary import format_summary, summary_rows
from skippipe.sim.simulate import simulate
from skippipe.variants import REGISTRY, VARIANTS

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "settings" / "tiny.toml"
QUICK = PlanOptions(effort="quick", seed=3)


@pytest.fixture(scope="module")
def tiny():
    return load_scenario(TINY)


@pytest.fixture(scope="module")
def built(tiny):
    return build_schedule(tiny, QUICK)


def test_partial_variants_get_their_share_of_the_effort(tiny, built):
    from skippipe.planner.effort import problem_size, work_seconds
    from skippipe.planning import CA_SHARE, NON_CA_SHARE

    work = work_seconds("quick", problem_size(tiny))
    assert work < work_seconds("default", problem_size(tiny)) < work_seconds("thorough", problem_size(tiny))
    for name, share in (("non-ca-partial", NON_CA_SHARE), ("ca-partial", CA_SHARE)):
        p = built.variants[name].provenance
        assert p.time_limit_s == pytest.approx(share * work)  # work seconds, not a wall limit
        assert "wall-clock cap" not in p.status


def _comparable(sched) -> str:
    """The schedule's JSON without its wall times (the only fields that depend on the machine)."""
    d = to_dict(sched)
    for v in d["variants"].values():
        v["provenance"].pop("wall_s")
    return json.dumps(d, sort_keys=True)


def _busy(stop: threading.Event) -> None:
    """A CPU hog beside the planner: it takes the interpreter and a core from it."""
    x = 0
    while not stop.is_set():
        x += 1


@pytest.mark.slow
@pytest.mark.parametrize("effort", ["quick", "default"])
def test_same_schedule_under_load(tiny, effort):
    opts = PlanOptions(effort=effort, seed=1)
    idle = build_schedule(tiny, opts)
    stop = threading.Event()
    hog = threading.Thread(target=_busy, args=(stop,), daemon=True)
    hog.start()
    try:
        loaded = build_schedule(tiny, opts)
    finally:
        stop.set()
        hog.join(timeout=10)
    assert not hog.is_alive()
    assert _comparable(loaded) == _comparable(idle)


def test_wall_clock_cap_cuts_in_with_one_line_and_says_so_in_provenance(tiny):
    lines = []
    sched = build_schedule(
        tiny,
        PlanOptions(effort="quick", time_limit_s=0.05, variants=("baseline", "non-ca-partial", "ca-partial")),
        progress=lines.append,
    )
    cut = [line for line in lines if "cut in" in line]
    assert len(cut) == 1 and "cut in during" in cut[0]
    assert "[wall-clock cap cut in during" in sched.variants["ca-partial"].provenance.status
    assert all(len(line) < 300 for line in lines)


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
    sched = build_schedule(
        tiny, dataclasses.replace(QUICK, shared_allocation=True, family_memory=True)
    )  # dualpipev fits no 2 slots
    assert {v.allocation for n, v in sched.variants.items() if not REGISTRY[n].v_placed} == {sched.allocation}
    assert sched.variants["dualpipev"].allocation == fold(sched.allocation)  # the same, as a V


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["iteration", "makespan"])
def test_ca_partial_is_never_worse_than_non_ca_partial(tiny, objective):
    key = f"{objective}_s"
    for seed in (0, 1):
        sched = build_schedule(tiny, PlanOptions(effort="quick", seed=seed, objective=objective))
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
    from skippipe.planner.partial import check_plan, timed_from_order, to_variant
    from skippipe.schedule import Provenance

    non_ca = built.variants["non-ca-partial"]
    data = build_data(tiny, non_ca.allocation)
    timed = timed_from_order(data, non_ca.paths, simulate(built, "non-ca-partial", tiny).order)
    variant = to_variant("ca-partial", data, timed, Provenance("test"), ordered=True)
    check_plan(tiny, data, variant, timed)  # validates TC1/TC2 and recomputes the objective
    assert plan_values(data, timed)["iteration"] * data.tick_s <= non_ca.predicted["iteration_s"] + 0.05


def test_table_reports_both_objectives_for_every_variant(built):
    rows = summary_rows(built)
    assert all(r["iteration_s"] and r["makespan_s"] for r in rows)
    text = format_summary(rows)
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
    with pytest.raises(SystemExit) as exited:
        main(["schedule", str(TINY), "--effort", "lazy", "--out", str(tmp_path / "x.json")])
    assert exited.value.code == 2
    assert not (tmp_path / "x.json").exists()
    with pytest.raises(PlanningError):
        PlanOptions(workers=0).check()


def test_cli_writes_a_schedule_with_both_columns(capsys, tmp_path):
    out = tmp_path / "tiny.json"
    assert (
        main(
            [
                "schedule",
                str(TINY),
                "--effort",
                "quick",
                "--workers",
                "1",
                "--quiet",
                "--objective",
                "makespan",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "objective makespan" in text and "makespan s" in text
    sched, _ = load_schedule(out)
    assert set(sched.variants) == set(VARIANTS) - {"dualpipev"}  # its V order fits no 2 slots


def test_help_names_the_effort_levels_and_the_cap(capsys):
    with pytest.raises(SystemExit):
        main(["schedule", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "{quick,default,thorough}" in text and "same schedule on any machine" in text
    assert "safety cap" in text
    assert "--objective" in text and "--shared-allocation" in text
