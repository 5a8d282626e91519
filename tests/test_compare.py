"""`python -m skippipe compare`: every variant at the same memory, the table, the verdict against
the best full pipeline, its files, and its errors."""

import json

import pytest

from conftest import SETTINGS
from skippipe.cli import main

TINY = SETTINGS / "tiny.toml"
QUICK = ["--effort", "quick", "--quiet"]
VARIANTS = ["baseline", "gpipe", "1f1b", "zb-h1", "ca-partial", "swarm", "swarm-skip"]


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    assert main(["compare", str(TINY), "--variants", *VARIANTS, "--out", str(out), *QUICK]) == 0
    return out, json.loads((out / "compare.json").read_text())


def test_every_row_keeps_the_slots_and_the_verdict_names_the_best_full_pipeline(compared):
    out, got = compared
    rows = {r["variant"]: r for r in got["rows"]}
    assert sorted(rows) == sorted(VARIANTS)  # in the registry's order
    assert all(r["peak"] <= r["slots"] == 2 and r["memory"] == "slots" for r in rows.values())
    full = [r for r in rows.values() if r["full_pipeline"]]
    best = max(full, key=lambda r: r["samples_per_s"])
    assert {r["best_full"] for r in rows.values()} == {best["variant"]}
    assert best["vs_best_full"] == 1.0 and all(r["vs_best_full"] <= 1.0 for r in full)
    assert f"the best full pipeline ({best['variant']})" in got["verdict"]
    assert "3/4 of the work per microbatch" in got["verdict"]  # k = 3 of S = 4
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "compare.md").read_text()
    assert md.startswith(f"`python -m skippipe compare {TINY} --effort quick --seed 0 --variants")
    assert md.count("\n| ") == len(VARIANTS) + 1 and got["verdict"] in md


def test_work_counts_k_of_s_per_path_and_throughput_follows(compared):
    _, got = compared
    rows = {r["variant"]: r for r in got["rows"]}
    assert rows["baseline"]["work"] == 6 and rows["ca-partial"]["work"] == 6 * 3 / 4
    for r in rows.values():
        assert r["samples_per_s"] == pytest.approx(r["work"] * 2 / r["iteration_s"])  # 2 samples/mb
        assert r["it_speedup"] == pytest.approx(rows[r["best_full"]]["iteration_s"] / r["iteration_s"])


def test_a_loaded_schedule_gives_the_same_table(compared, tmp_path, capsys):
    out, got = compared
    capsys.readouterr()
    assert main(["compare", str(TINY), "--schedule", str(out / "schedule.json"), "--out", str(tmp_path)]) == 0
    again = json.loads((tmp_path / "compare.json").read_text())
    assert again["rows"] == got["rows"] and again["verdict"] == got["verdict"]
    assert got["verdict"] in capsys.readouterr().out


def test_a_schedule_of_family_memory_is_refused_unless_asked(tmp_path, capsys):
    plan = tmp_path / "own.json"
    assert (
        main(
            [
                "schedule",
                str(TINY),
                "--variants",
                "baseline",
                "1f1b",
                "--family-memory",
                "--out",
                str(plan),
                *QUICK,
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["compare", str(TINY), "--schedule", str(plan), "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip()
    assert "1f1b planned under its family's own memory rule" in err and "\n" not in err
    assert (
        main(["compare", str(TINY), "--schedule", str(plan), "--family-memory", "--out", str(tmp_path / "c")])
        == 0
    )
    assert "own memory rules" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--emulate", "-1"], "--emulate must be 0 or more"),
        (["--schedule", "/nonexistent/s.json"], "cannot read"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, message, tmp_path, capsys):
    assert main(["compare", str(TINY), *argv, "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not (tmp_path / "c" / "compare.json").exists()


def test_a_missing_scenario_is_one_line(tmp_path, capsys):
    assert main(["compare", str(tmp_path / "none.toml"), "--out", str(tmp_path / "c")]) == 2
    assert "\n" not in capsys.readouterr().err.strip()


@pytest.mark.swarm
def test_emulate_adds_measured_beside_predicted(compared, tmp_path, capsys):
    out, _ = compared
    capsys.readouterr()
    assert (
        main(
            [
                "compare",
                str(TINY),
                "--schedule",
                str(out / "schedule.json"),
                "--variants",
                "baseline",
                "--emulate",
                "2",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    (row,) = json.loads((tmp_path / "compare.json").read_text())["rows"]
    assert row["measured_s"] > 0 and "measured/predicted" in capsys.readouterr().out


def test_a_variant_built_on_another_plans_it_too_and_no_full_pipeline_means_no_ratio(tmp_path, capsys):
    assert main(["compare", str(TINY), "--variants", "ca-repair", "--out", str(tmp_path), *QUICK]) == 0
    got = json.loads((tmp_path / "compare.json").read_text())
    assert [r["variant"] for r in got["rows"]] == ["ca-repair"] and got["rows"][0]["vs_best_full"] is None
    assert got["verdict"] == "no full-pipeline variant compared: no verdict"
