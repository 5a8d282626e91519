"""bench/families_bench.py: its rows and markdown table (no planning: predicted figures given)."""

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "families_bench.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("families_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _predicted(iteration_s, peak):
    return {
        "iteration_s": iteration_s,
        "makespan_s": iteration_s - 0.5,
        "bubble_share": 0.25,
        "peak_activations": peak,
    }


def test_rows_compare_every_variant_with_1f1b(bench):
    rows = bench.rows_of("geo", {"ca-partial": _predicted(50.0, 3), "1f1b": _predicted(200.0, 6)}, 3)
    assert [r["vs_ref"] for r in rows] == [0.25, 1.0]
    assert all(r["scenario"] == "geo" and r["memory_slots"] == 3 for r in rows)


def test_rows_without_1f1b_have_no_ratio(bench):
    assert bench.rows_of("geo", {"baseline": _predicted(10.0, 2)}, 2)[0]["vs_ref"] is None


def test_markdown_table_marks_each_scenarios_fastest_variant(bench):
    rows = bench.rows_of("a", {"gpipe": _predicted(2.0, 6), "1f1b": _predicted(4.0, 4)}, 2) + bench.rows_of(
        "b", {"1f1b": _predicted(3.0, 4)}, 2
    )
    lines = bench.markdown(rows).splitlines()
    assert lines[0] == "| " + " | ".join(bench.HEADER) + " |"
    assert lines[1] == "|---|---|---|---|---|---|---|---|"
    assert lines[2] == "| a | gpipe | **2.000** | 0.500 | 1.500 | 25.0% | 6 | 2 |"
    assert lines[3] == "| a | 1f1b | 4.000 | 1.000 | 3.500 | 25.0% | 4 | 2 |"
    assert lines[4] == "| b | 1f1b | **3.000** | 1.000 | 2.500 | 25.0% | 4 | 2 |"


def test_unknown_scenario_is_one_error_line(bench, capsys):
    assert bench.main(["--scenarios", "no-such-scenario", "--json", "/dev/null"]) == 2
    assert capsys.readouterr().err.startswith("error: no scenario 'no-such-scenario'")
