"""The study's iteration times for its time to target (skippipe/study/times.py and
`python -m skippipe study-times`): the trained paths on the study scenario against the best
full pipeline at equal memory, and the report reading them."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest

from skippipe import cli
from skippipe.study import times
from skippipe.study.cli import PRESETS
from skippipe.study.inputs import load_inputs
from skippipe.study.report import Report

QUICK = str(PRESETS["quick"].settings)  # the study scenario the committed paths were planned on


@pytest.fixture(scope="module")
def planned():
    """The quick preset's full pipelines, planned and ranked at quick effort, once."""
    from skippipe.commands.study_times import full_pipelines
    from skippipe.scenario import load_scenario

    scenario = load_scenario(QUICK)
    sched, rows = full_pipelines(scenario, "quick", 0, None)
    return scenario, sched, rows


@pytest.mark.slow  # the fixture plans the full pipelines (seconds)
def test_comparator_is_the_best_full_pipeline_compare_picks(planned):
    from skippipe.variants import REGISTRY

    _, sched, rows = planned
    assert {r["variant"] for r in rows} <= {
        n for n, v in REGISTRY.items() if v.full_pipeline
    } and "baseline" in sched.variants
    best = min(rows, key=lambda r: r["iteration_s"])  # equal work per iteration: fastest = best
    assert all(r["best_full"] == best["variant"] for r in rows)


@pytest.mark.slow
def test_trained_sequences_keep_their_stages_on_the_fastest_nodes_found(planned):
    from skippipe.sim.simulate import simulate

    scenario, sched, _ = planned
    trained = load_inputs().paths["ca-partial"]
    dealt = times._iteration_s(sched, "random", times._dealt(sched, scenario, trained), scenario)
    paths, best = times.fastest_nodes(sched, scenario, "random", trained)
    assert tuple(p.stages for p in paths) == trained  # only the nodes may change
    assert all(h.node in sched.allocation[h.stage] for p in paths for h in p.hops)
    assert best <= dealt and times.split_s(sched, scenario, paths) <= best
    again = simulate(times._with_paths(sched, "random", paths), "random", scenario)
    assert again.iteration_s == pytest.approx(best)
    with pytest.raises(times.SkipPipeError):
        times._dealt(sched, scenario, trained[:3])  # one path per microbatch, no fewer


@pytest.mark.slow
def test_layerdrop_time_is_between_no_stages_and_every_stage(planned, monkeypatch):
    scenario, sched, _ = planned
    full = sched.variants["baseline"].paths
    everything = times._iteration_s(sched, "random", full, scenario)
    monkeypatch.setattr(times, "keep_probability", lambda k, s: 1.0)
    assert times.layerdrop_s(sched, scenario, 0) == pytest.approx(everything)  # nothing dropped
    monkeypatch.undo()
    mean = times.layerdrop_s(sched, scenario, 0)
    assert 0 < mean < everything
    assert times.layerdrop_s(sched, scenario, 0) == mean  # the draws are seeded


@pytest.mark.slow  # plans every full pipeline of the study scenario (quick effort)
def test_command_writes_times_the_report_reads(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(times, "LAYERDROP_SAMPLES", 4)  # the mean of fewer draws: a faster test
    out = tmp_path / "results"
    assert (
        cli.main(["study-times", "--preset", "quick", "--effort", "quick", "--results", str(out), "--quiet"])
        == 0
    )
    stored = json.loads((out / times.TIMES_FILE).read_text())
    s = stored["iteration_s"]
    assert set(s) == {"baseline", "ca-partial", "random", "layerdrop"}
    assert s["baseline"] == min(stored["full_pipelines"].values())
    assert stored["full_pipelines"][stored["comparator"]] == s["baseline"]
    assert all(math.isfinite(t) and t > 0 for t in s.values())
    split = stored["split_backward_s"]  # the same split on both sides: never slower than fused
    assert set(split) == set(s) and all(split[v] <= s[v] for v in ("baseline", "ca-partial", "random"))
    assert "best full pipeline at equal memory" in capsys.readouterr().out
    paths = load_inputs().paths
    assert times.load_times(out, QUICK, paths) == stored
    assert times.load_times(out, QUICK, paths, effort="default") is None
    changed = {**paths, "random": paths["ca-partial"]}
    assert times.load_times(out, QUICK, changed) is None  # other paths: not these times
    assert times.load_times(out, str(PRESETS["cpu"].settings), paths) is None


def test_bad_input_is_one_error_line(tmp_path, capsys):
    assert cli.main(["study-times", "--inputs", str(tmp_path / "none.json"), "--quiet"]) == 2
    assert cli.main(["study-times", "--settings", str(tmp_path / "none.toml"), "--quiet"]) == 2
    assert cli.main(["study-times", "--results", "/proc/skippipe/x", "--quiet"]) == 2  # no planning
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("error: ") for line in err)
    with pytest.raises(times.SkipPipeError):
        times.write_times(tmp_path, {"iteration_s": {"baseline": float("nan")}})


def _run(seed, nlls):
    return {
        "seed": seed,
        "curve": [{"iteration": 10 * (i + 1), "mean_nll": math.log(p)} for i, p in enumerate(nlls)],
        "test": {"mean_nll": 0.0},
    }


REFS = {"validation": {"tokens": 100, "unigram": 90.0, "bigram": 50.0, "add_k": 0.1, "kn5": 21.0}}


def test_report_takes_times_and_labels_the_comparator():
    from skippipe.study.tables import _speedup_table, _times_line

    inputs = SimpleNamespace(
        iteration_s={"baseline": 4.0, "ca-partial": 1.0}, wallclock_scenario="geo-distributed"
    )
    study = SimpleNamespace(
        inputs=inputs,
        variants=("baseline", "ca-partial", "layerdrop"),
        args=SimpleNamespace(max_eval_windows=None),
    )
    chosen = {v: [_run(0, [40, 20]), _run(1, [40, 20])] for v in study.variants}
    old = Report(study, [], {}, chosen, {}, REFS, [40], {})
    assert old.speedup("ca-partial", 40) == pytest.approx(4.0) and old.iteration_s("layerdrop") is None
    assert "not a claim" in old.comparator and old.wallclock == "geo-distributed"
    stored = {
        "scenario": "study-6x1",
        "comparator": "zb-h1",
        "memory_slots": [3],
        "iteration_s": {"baseline": 3.0, "ca-partial": 2.0, "layerdrop": 2.5},
        "split_backward_s": {"baseline": 2.0, "ca-partial": 1.0, "layerdrop": 2.0},
    }
    rep = Report(study, [], {}, chosen, {}, REFS, [40], {}, stored)
    assert rep.speedup("ca-partial", 40) == pytest.approx(1.5)  # same curves: 3 s / 2 s
    assert rep.speedup("layerdrop", 40) == pytest.approx(1.2)
    assert (
        rep.comparator == ("vs zb-h1 at 3 slots, the best full pipeline at equal memory (study-6x1)")
        and rep.wallclock == "study-6x1"
    )
    assert "ca-partial 2" in _times_line(rep)[0] and "ca-partial 2.00×" in _times_line(rep)[0]
    table = "\n".join(_speedup_table(rep))
    assert "1.50×" in table and "1.20×" in table


def test_targets_include_the_kneser_ney_lines():
    from skippipe.study.report import default_targets, reference_targets
    from skippipe.study.tables import _speedup_table

    assert reference_targets({"kn3": 26.0, "kn5": 21.0, "bigram": 50.0}) == [26.0, 21.0]
    chosen = {"baseline": [_run(0, [40, 21]), _run(1, [40, 23])]}
    assert default_targets(chosen, 3) == pytest.approx([23, math.sqrt(21 * 23), 21])
    study = SimpleNamespace(variants=("baseline",), args=SimpleNamespace(max_eval_windows=None))
    rep = Report(study, [], {}, chosen, {}, REFS, [40, 21.0], {})
    assert "| 21.00 (5-gram KN) | 20 (1/2 seeds) |" in "\n".join(_speedup_table(rep))
