"""`compare --condition`: each variant over a simulated session under a static network, a
straggler or churn, at the same memory, against the best full pipeline under the same condition."""

import json

import pytest

from conftest import SETTINGS
from skippipe.cli import main
from skippipe.commands.compare_conditions import SLOW_FACTOR, fault_node
from skippipe.schedule_file import load_schedule

TINY = SETTINGS / "tiny.toml"
VARIANTS = ["baseline", "1f1b", "ca-partial", "swarm"]


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    out = tmp_path_factory.mktemp("plain")
    assert (
        main(
            ["compare", str(TINY), "--variants", *VARIANTS, "--out", str(out), "--effort", "quick", "--quiet"]
        )
        == 0
    )
    rows = json.loads((out / "compare.json").read_text())["rows"]
    return out / "schedule.json", {r["variant"]: r for r in rows}


def _under(planned, tmp_path, condition, *extra):
    schedule, _ = planned
    out = tmp_path / condition
    assert (
        main(
            [
                "compare",
                str(TINY),
                "--schedule",
                str(schedule),
                "--condition",
                condition,
                "--out",
                str(out),
                *extra,
            ]
        )
        == 0
    )
    got = json.loads((out / "compare.json").read_text())
    return {r["variant"]: r for r in got["rows"]}, got, out


def test_a_static_session_repeats_a_planned_iteration(planned, tmp_path):
    _, plain = planned
    rows, got, out = _under(planned, tmp_path, "static")
    assert got["condition"] == "static" and "static network, 8 iterations" in got["verdict"]
    for name in ("baseline", "1f1b", "ca-partial"):
        assert rows[name]["iteration_s"] == pytest.approx(plain[name]["iteration_s"], rel=1e-9)
        assert rows[name]["worst_s"] == pytest.approx(rows[name]["iteration_s"], rel=1e-9)
        assert rows[name]["fault_node"] is None and rows[name]["lost"] == 0
    best = max((r for r in rows.values() if r["full_pipeline"]), key=lambda r: r["samples_per_s"])
    assert {r["best_full"] for r in rows.values()} == {best["variant"]}
    first = (out / "compare.md").read_text().splitlines()[0]
    assert "--condition static --iterations 8" in first


def test_a_straggler_slows_every_variant_on_a_node_its_stage_can_spare(planned, tmp_path):
    schedule, plain = planned
    sched, _ = load_schedule(schedule)
    rows, got, _ = _under(planned, tmp_path, "straggler", "--iterations", "6")
    assert f"one node {SLOW_FACTOR:g}x slower from iteration 3 of 6" in got["verdict"]
    for name, r in rows.items():
        alloc = sched.allocation_of(name)
        assert r["fault_node"] == fault_node(alloc) and r["fault_node"] not in alloc[0]
        assert any(r["fault_node"] in nodes and len(nodes) > 1 for nodes in alloc[1:])
        assert r["worst_s"] > plain[name]["iteration_s"] * 1.05  # the slowed node is on its paths
        assert r["samples_per_s"] == pytest.approx(r["work"] * 2 / r["iteration_s"])


def test_churn_loses_no_microbatch_and_reports_its_worst_iteration(planned, tmp_path):
    rows, got, _ = _under(planned, tmp_path, "churn")
    assert "down in iteration 2 of 8" in got["verdict"]
    for r in rows.values():
        assert r["lost"] == 0 and r["fault_node"] is not None and r["worst_s"] >= r["iteration_s"]


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--condition", "straggler", "--iterations", "4"], "--iterations must be at least 5"),
        (["--condition", "churn", "--emulate", "2"], "--emulate measures the static network only"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, message, tmp_path, capsys):
    assert main(["compare", str(TINY), *argv, "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and not (tmp_path / "c").exists()


def test_a_session_the_simulator_cannot_finish_is_left_out_with_its_reason(planned, tmp_path, monkeypatch):
    import skippipe.sim.session as session
    from skippipe.sim.simulate import SimulationError

    real = session.simulate_session

    def deadlocks_1f1b(sched, variant, *args, **kwargs):
        if variant == "1f1b":
            raise SimulationError("variant 1f1b (fcfs): deadlock at t=0.1s")
        return real(sched, variant, *args, **kwargs)

    monkeypatch.setattr(session, "simulate_session", deadlocks_1f1b)
    rows, got, out = _under(planned, tmp_path, "churn")
    assert "1f1b" not in rows and sorted(rows) == sorted(set(VARIANTS) - {"1f1b"})
    node = fault_node(load_schedule(planned[0])[0].allocation_of("1f1b"))
    assert got["left_out"] == {"1f1b": f"node {node}: variant 1f1b (fcfs): deadlock at t=0.1s"}
    assert "left out: 1f1b (node" in (out / "compare.md").read_text()
    rows, got, _ = _under(planned, tmp_path, "static")
    assert got["left_out"] == {"1f1b": "variant 1f1b (fcfs): deadlock at t=0.1s"}  # no fault node
