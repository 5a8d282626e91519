"""The sparse-pipeline study (skippipe.study): n-gram references, statistics, the plan's pure
helpers, LayerDrop paths, the test split, resuming, and a tiny end-to-end run with
--report-only."""

from __future__ import annotations

import json
import math
import random
import shutil

import numpy as np
import pytest
import torch

from skippipe.study import cli, layerdrop, ngram, plan, runs, stats
from skippipe.study.inputs import load_inputs, reordered_paths
from skippipe.study.report import crossing, default_targets, layer_flops_per_iteration

WORDS = (
    "the stage node path pipeline skips layers while training converges on a network of "
    "heterogeneous links with latency and bandwidth between locations"
).split()


def test_add_k_references_by_hand():
    train = np.array([0, 1, 0, 1, 2])
    contexts, targets = np.array([0, 1]), np.array([1, 2])
    # unigram: counts 2, 2, 1 of N=5; add-0.1 over V=3
    uni = math.exp(-(math.log(2.1 / 5.3) + math.log(1.1 / 5.3)) / 2)
    assert ngram.unigram_perplexity(train, contexts, targets, 3) == pytest.approx(uni)
    # bigram: c(0,1)=2 of c(0)=2, c(1,2)=1 of c(1)=2
    assert ngram.bigram_perplexity(train, contexts, targets, 3) == pytest.approx(2.3 / math.sqrt(2.1 * 1.1))
    with pytest.raises(ValueError):
        ngram.bigram_perplexity(train, contexts, np.array([1, 3]), 3)


def test_kneser_ney_bigram_by_hand():
    # train 0 1 0 2 0 1, V=3. Bigrams: (0,1)x2, (1,0), (0,2), (2,0): counts 2,1,1,1 -> n1=3,
    # n2=1, n3=n4=0 -> the plain discount D = 3/(3+2) = 0.6 for every count.
    # Continuations of w: distinct left neighbours: 0 <- {1,2}, 1 <- {0}, 2 <- {0}: 2,1,1 of 4;
    # counts 1,1,2 -> n1=2, n2=1 -> D = 2/4 = 0.5; order 1: (cc - 0.5 + 1.5/3) / 4.
    model = ngram.KneserNey(np.array([0, 1, 0, 2, 0, 1]), 2, 3)
    p1 = {0: (2 - 0.5 + 0.5) / 4, 1: (1 - 0.5 + 0.5) / 4, 2: (1 - 0.5 + 0.5) / 4}
    # after 0: c(0.)=3, (0,1)=2, (0,2)=1, backoff mass 0.6*2 = 1.2
    expect = {0: (0 + 1.2 * p1[0]) / 3, 1: (2 - 0.6 + 1.2 * p1[1]) / 3, 2: (1 - 0.6 + 1.2 * p1[2]) / 3}
    got = model.probabilities(np.zeros((3, 1), dtype=np.int64), np.arange(3))
    assert got == pytest.approx([expect[w] for w in range(3)])
    unseen = model.probabilities(np.full((3, 1), -1), np.arange(3))  # no history: order 1
    assert unseen == pytest.approx([p1[w] for w in range(3)])


@pytest.mark.parametrize("order", [1, 3, 5])
def test_kneser_ney_sums_to_one_for_every_context(order):
    rng = np.random.default_rng(0)
    vocab = 7
    train = rng.integers(0, vocab, 400) // rng.integers(1, 3, 400)  # skewed counts
    model = ngram.KneserNey(train, order, vocab)
    for _ in range(5):
        history = rng.integers(-1, vocab, order - 1)
        history = np.where(np.arange(order - 1) < rng.integers(0, order), -1, history)
        p = model.probabilities(np.tile(history, (vocab, 1)), np.arange(vocab))
        assert p.sum() == pytest.approx(1.0) and (p > 0).all()
    seen = train[: order - 1]  # a context seen in training, from its start
    p = model.probabilities(np.tile(seen, (vocab, 1)), np.arange(vocab))
    assert p.sum() == pytest.approx(1.0)


def test_kneser_ney_learns_a_deterministic_sequence():
    train = np.tile(np.arange(5), 200)
    windows = np.tile(np.arange(5), 4)[None, :]
    assert ngram.KneserNey(train, 3, 5).perplexity(windows) < 1.3
    assert ngram.unigram_perplexity(train, windows[0, :-1], windows[0, 1:], 5) == pytest.approx(5)


def test_window_histories_stay_inside_a_window():
    history, targets = ngram.window_histories(np.array([[5, 6, 7]]), 2)
    assert history.tolist() == [[-1, 5], [5, 6]] and targets.tolist() == [6, 7]
    contexts, targets = ngram.window_pairs([torch.tensor([[5, 6, 7], [8, 9, 10]])])
    assert contexts.tolist() == [5, 6, 8, 9] and targets.tolist() == [6, 7, 9, 10]


def test_statistics_match_known_values():
    assert stats.mean_sd([2.0]) == (2.0, 0.0)
    assert stats.mean_sd([1.0, 3.0]) == pytest.approx((2.0, math.sqrt(2)))
    assert stats.t_quantile(0.975, 4) == pytest.approx(2.776445, abs=1e-5)
    assert stats.t_quantile(0.975, 1) == pytest.approx(12.7062, abs=1e-3)
    assert stats.t_two_sided_p(2.0, 10) == pytest.approx(0.07339, abs=1e-5)
    assert stats.interval([1, 2, 3, 4, 5]) == pytest.approx((3 - 1.96324, 3 + 1.96324), abs=1e-4)
    test = stats.paired_test([1.1, 2.3, 3.0, 4.2], [1, 2, 3, 4])
    assert test["mean"] == pytest.approx(0.15) and test["p"] == pytest.approx(0.1027, abs=1e-3)
    assert stats.paired_test([1, 2], [1, 2])["p"] == 1.0
    with pytest.raises(ValueError):
        stats.paired_test([1.0], [2.0])


def test_plan_helpers():
    curve = [{"iteration": 10, "mean_nll": math.log(100)}, {"iteration": 20, "mean_nll": math.log(10)}]
    assert crossing(curve, math.sqrt(1000)) == pytest.approx(15)
    assert crossing(curve, 200) == 10 and crossing(curve, 5) is None
    assert plan.eval_points(800, 10) == tuple(range(80, 801, 80))
    assert plan.eval_points(3, 10) == (1, 2, 3)
    results = [
        {"variant": "a", "learning_rate": lr, "curve": [{"mean_nll": nll}]}
        for lr, nll in ((1e-3, 3.0), (2e-3, 2.5), (3e-3, 2.5))
    ]
    assert plan.best_learning_rates(results) == {"a": 2e-3}
    assert plan.next_rate([1e-3, 2e-3, 4e-3], 4e-3) == 8e-3
    assert plan.next_rate([1e-3, 2e-3, 4e-3], 1e-3) == 5e-4
    assert plan.next_rate([1e-3, 2e-3, 4e-3], 2e-3) is None
    assert cli.parse_args(["--quick"]).iterations == cli.PRESETS["quick"].iterations
    finals = {"a": [{"curve": [{"mean_nll": math.log(30)}]}, {"curve": [{"mean_nll": math.log(20)}]}]}
    targets = default_targets(finals, 3)
    assert targets == pytest.approx([30, math.sqrt(600), 20])


def test_layerdrop_paths_keep_k_of_s_on_average():
    keep = layerdrop.keep_probability(4, 6)
    assert 1 + keep * 5 == pytest.approx(4)
    paths = [p for it in range(400) for p in layerdrop.layerdrop_paths(10, 6, keep, 3, it)]
    assert all(p[0] == 0 and list(p) == sorted(set(p)) for p in paths)
    assert sum(map(len, paths)) / len(paths) == pytest.approx(4, abs=0.05)
    assert layerdrop.layerdrop_paths(10, 6, keep, 3, 7) == layerdrop.layerdrop_paths(10, 6, keep, 3, 7)
    assert layerdrop.layerdrop_paths(10, 6, keep, 3, 7) != layerdrop.layerdrop_paths(10, 6, keep, 4, 7)


def test_committed_inputs_and_layer_flops():
    from skippipe.scenario import load_scenario

    inputs = load_inputs()
    sc = load_scenario(cli.PRESETS["quick"].settings)
    assert inputs.scenario == sc.name and set(cli.VARIANTS) - {"layerdrop"} <= set(inputs.paths)
    assert all(len(p) == sc.pipeline.path_length for p in inputs.paths["ca-partial"])
    assert inputs.iteration_s["ca-partial"] < inputs.iteration_s["baseline"]
    assert all(list(p) != sorted(p) for p in reordered_paths(inputs))
    n = sc.pipeline.n_stages
    full = layer_flops_per_iteration(sc.model, map(len, inputs.paths["baseline"]), 4, n)
    skip = layer_flops_per_iteration(sc.model, map(len, inputs.paths["ca-partial"]), 4, n)
    assert skip / full == pytest.approx(sc.pipeline.path_length / n)
    for preset in cli.PRESETS.values():  # every preset's scenario has the inputs' pipeline shape
        other = load_scenario(preset.settings).pipeline
        assert (other.n_stages, other.path_length) == (n, sc.pipeline.path_length)


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    """A small local text corpus, with the caches in tmp."""
    monkeypatch.setenv("SKIPPIPE_CACHE", str(tmp_path / "cache"))
    rng = random.Random(0)
    root = tmp_path / "text"
    root.mkdir()
    for f in range(3):
        paras = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60))) + "." for _ in range(80)]
        (root / f"part{f}.txt").write_text("\n\n".join(paras))
    return str(root)


def test_test_split_is_held_out_and_training_unchanged(corpus):
    from skippipe.train.data import prepare_data

    plain = prepare_data(corpus, 64)
    split = prepare_data(corpus, 64, test_split=True)
    assert plain.test is None and split.test is not None and len(split.test) > 0
    assert np.array_equal(plain.train, split.train)  # training runs see the same tokens
    assert len(split.validation) + len(split.test) == len(plain.validation)


TINY_MODEL = {
    "d_model": "32",
    "n_heads": "1",
    "n_layers": "6",
    "ffn_hidden": "96",
    "ctx_tokens": "32",
    "samples_per_microbatch": "2",
}


def tiny_settings(tmp_path) -> str:
    """The quick preset's scenario with a model small enough for a test."""
    lines = []
    for line in cli.PRESETS["quick"].settings.read_text().splitlines():
        key = line.split("=")[0].strip()
        lines.append(f"{key} = {TINY_MODEL[key]}" if key in TINY_MODEL else line)
    path = tmp_path / "tiny.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _args(corpus, tmp_path, *extra):
    return [
        "--preset",
        "quick",
        "--settings",
        tiny_settings(tmp_path),
        "--data",
        corpus,
        "--results",
        str(tmp_path / "results"),
        "--work",
        str(tmp_path / "work"),
        "--iterations",
        "2",
        "--evals",
        "1",
        "--variants",
        "baseline,ca-partial,layerdrop",
        "--lrs",
        "1e-3,3e-3",
        "--seeds",
        "0,1",
        "--max-eval-windows",
        "16",
        "--max-lr-extensions",
        "0",
        "--jobs",
        "1",
        *extra,
    ]


def _count_iterations(monkeypatch) -> list:
    calls = []
    real = runs.train_iteration
    monkeypatch.setattr(runs, "train_iteration", lambda *a: calls.append(a[2]) or real(*a))
    return calls


@pytest.mark.slow  # trains 4 tiny models for 2 iterations each
def test_runs_resume_and_settings_changes_rerun(corpus, tmp_path, monkeypatch):
    study = plan.Study(cli.parse_args(_args(corpus, tmp_path)))
    spec = study.spec("ca-partial", 3e-3, 0)
    calls = _count_iterations(monkeypatch)
    first = runs.train_run(spec, study.results, study.work)
    assert len(calls) == 2 and len(first["curve"]) == 1 and first["test"]["tokens"] > 0
    assert runs.train_run(spec, study.results, study.work) == first and len(calls) == 2  # reused
    sweep = runs.sweep_run(spec, study.results, study.work, ((0, 2, 1, 3),))
    assert len(sweep["paths"]) == 2**5 + 1
    with monkeypatch.context() as m:
        m.setattr(runs, "path_nll", lambda *a: pytest.fail("sweep not reused"))
        assert runs.sweep_run(spec, study.results, study.work, ((0, 2, 1, 3),)) == sweep
    threads = plan.Study(cli.parse_args(_args(corpus, tmp_path, "--threads", "2")))
    runs.train_run(threads.spec("ca-partial", 3e-3, 0), threads.results, threads.work)
    assert len(calls) == 4  # the thread count is part of the fingerprint
    drop = study.spec("layerdrop", 3e-3, 0)
    runs.train_run(drop, study.results, study.work)
    assert calls[-2:] == [drop.paths_at(0), drop.paths_at(1)] and drop.paths_at(0) != drop.paths


def test_same_seed_and_threads_train_the_same(corpus, tmp_path):
    study = plan.Study(cli.parse_args(_args(corpus, tmp_path)))
    spec = study.spec("baseline", 3e-3, 1)
    a = runs.train_run(spec, study.results, study.work)
    b = runs.train_run(spec, tmp_path / "again", tmp_path / "again-work")
    assert a["curve"][-1]["mean_nll"] == b["curve"][-1]["mean_nll"] and a["test"] == b["test"]


def test_a_sweep_without_the_weights_trains_the_run_again(corpus, tmp_path, monkeypatch):
    study = plan.Study(cli.parse_args(_args(corpus, tmp_path)))
    spec = study.spec("baseline", 3e-3, 1)
    trained = runs.train_run(spec, study.results, study.work)
    shutil.rmtree(study.work / spec.key / "checkpoint")  # a fresh clone: results, no weights
    calls = _count_iterations(monkeypatch)
    sweep = runs.sweep_run(spec, study.results, study.work, ())
    assert len(calls) == 2 and len(sweep["paths"]) == 2**5
    again = runs.load_result(runs.result_path(study.results, spec.key), spec.fingerprint())
    assert again["test"] == trained["test"]  # the same seed trained the same weights


@pytest.mark.slow  # trains 9 tiny models, scores 6 sweeps and 3 Kneser-Ney models
def test_study_end_to_end_then_report_only(corpus, tmp_path, monkeypatch, capsys):
    assert cli.main(_args(corpus, tmp_path)) == 0
    results = tmp_path / "results"
    report = (results / "report.md").read_text()
    for heading in (
        "Learning-rate sweep",
        "paired by seed",
        "stages kept",
        "reordered",
        "Speed-up",
        "5-gram",
        "layerdrop",
        "validation tokens",
        "test tokens",
        "Versions",
    ):
        assert heading in report
    for png in ("study-stages-kept", "study-curves", "study-speedup"):
        assert (tmp_path / "work" / f"{png}.png").stat().st_size > 0
    stored = sorted(p.name for p in (results / "runs").glob("*.json"))
    assert len([n for n in stored if "sweep" not in n]) == 3 * 2 + 3 * 1
    assert json.loads((results / "references.json").read_text())["references"]["test"]["kn5"] > 1
    narrower = plan.Study(cli.parse_args(_args(corpus, tmp_path, "--lrs", "1e-3")))
    assert len(plan.stored_sweep(narrower)) == 6  # stored rates of the same settings count
    calls = _count_iterations(monkeypatch)
    with monkeypatch.context() as m:  # report-only needs neither training nor the corpus
        m.setattr("skippipe.train.data.prepare_data", lambda *a, **k: pytest.fail("data read"))
        assert cli.main(_args(corpus, tmp_path, "--report-only")) == 0
    assert calls == [] and (results / "report.md").read_text() == report
    assert "not a claim" in report  # no times.json yet: the inputs file's other scenario
    from skippipe.study import times  # times made for these settings and paths take over

    study = plan.Study(cli.parse_args(_args(corpus, tmp_path)))
    fair = {
        "fingerprint": times.fingerprint(study.args.settings, study.inputs.paths, "quick", 0),
        "scenario": "study-6x2",
        "comparator": "zb-h1",
        "memory_slots": [3],
        "iteration_s": {"baseline": 3.0, "ca-partial": 2.0, "layerdrop": 2.5},
    }
    times.write_times(results, fair)
    assert cli.main(_args(corpus, tmp_path, "--report-only")) == 0
    redone = (results / "report.md").read_text()
    assert "vs zb-h1 at 3 slots, the best full pipeline at equal memory" in redone
    assert "not a claim" not in redone and "ca-partial 2, layerdrop 2.5" in redone


def test_bad_arguments_are_one_line_errors(corpus, tmp_path, capsys):
    assert cli.main(_args(corpus, tmp_path, "--variants", "nope")) == 2
    assert cli.main(_args(corpus, tmp_path, "--report-only")) == 2  # nothing stored yet
    assert cli.main(_args(corpus, tmp_path, "--device", "tpu")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("error: ") for line in err)
    with pytest.raises(SystemExit) as e:
        cli.main(_args(corpus, tmp_path, "--lrs", "x"))
    assert e.value.code == 2


def test_train_command_uses_the_study_recipe():
    from skippipe.scenario import load_scenario
    from skippipe.train.recipe import WARMUP_FRACTION, recipe_config

    sc = load_scenario(cli.PRESETS["cpu"].settings)
    cfg = recipe_config(sc, iterations=200, learning_rate=None)
    assert cfg.cosine_decay and cfg.warmup_iterations == round(WARMUP_FRACTION * 200)
    assert cfg.learning_rate == sc.training.learning_rate
    plain = recipe_config(sc, warmup_iterations=0, cosine_decay=False)
    assert not plain.cosine_decay and plain.warmup_iterations == 0
    assert sc.training.iterations == cli.PRESETS["cpu"].iterations  # `train` defaults = the study's


def test_throughput_measure_prints_one_line_per_size_and_path_length(tmp_path, capsys):
    from skippipe.study.throughput import Size

    assert Size.parse("64x12x128x4") == Size(64, 12, 128, 4)
    assert (
        cli.main(
            ["--settings", tiny_settings(tmp_path), "--measure", "32x6x16x2", "--measure-iterations", "1"]
        )
        == 0
    )
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["path_length"] for x in lines] == [6, 4]
    assert all(x["tokens"] == 32 and x["tokens_per_cpu_s"] > 0 for x in lines)
    assert cli.main(["--measure", "64x5x128x4"]) == 2  # 5 layers do not split over 6 stages
    assert cli.main(["--measure", "sixty-four"]) == 2


def test_speedup_divides_simulated_times_to_each_target():
    from types import SimpleNamespace

    from skippipe.study.report import Report

    def run(seed, nlls):
        return {
            "seed": seed,
            "curve": [{"iteration": 10 * (i + 1), "mean_nll": math.log(p)} for i, p in enumerate(nlls)],
            "test": {"mean_nll": 0.0},
        }

    inputs = SimpleNamespace(iteration_s={"baseline": 3.0, "ca-partial": 1.0})
    study = SimpleNamespace(inputs=inputs)
    chosen = {
        "baseline": [run(0, [40, 20]), run(1, [40, 20])],
        "ca-partial": [run(0, [40, 30]), run(1, [30, 25])],
    }
    rep = Report(study, [], {}, chosen, {}, {}, [40, 30], {})
    # 40: both at iteration 10 -> 30 s vs 10 s; 30: baseline 15 (log-linear), ca-partial 20 and 10
    assert rep.speedup("ca-partial", 40) == pytest.approx(3.0)
    base = 10 + 10 * (math.log(40) - math.log(30)) / (math.log(40) - math.log(20))
    assert rep.speedup("ca-partial", 30) == pytest.approx(base * 3.0 / 15.0)
    assert rep.speedup("ca-partial", 26) is None  # seed 0 never reaches it
