"""The sparse-pipeline study's tooling: n-gram references, its pure helpers, resuming, and a tiny
end-to-end run of bench/study.py."""
from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch

from bench import ngram, study, study_run
from bench.study_inputs import load_inputs, reordered_paths
from bench.study_report import crossing, layer_flops_per_iteration, mean_sd

WORDS = ("the stage node path pipeline skips layers while training converges on a network of "
         "heterogeneous links with latency and bandwidth between locations").split()


def test_ngram_references_by_hand():
    train = np.array([0, 1, 0, 1, 2])
    contexts, targets = np.array([0, 1]), np.array([1, 2])
    # unigram: counts 2, 2, 1 of N=5; add-0.1 over V=3
    uni = math.exp(-(math.log(2.1 / 5.3) + math.log(1.1 / 5.3)) / 2)
    assert ngram.unigram_perplexity(train, contexts, targets, 3) == pytest.approx(uni)
    # bigram: c(0,1)=2 of c(0)=2, c(1,2)=1 of c(1)=2
    assert ngram.bigram_perplexity(train, contexts, targets, 3) == pytest.approx(
        2.3 / math.sqrt(2.1 * 1.1))
    with pytest.raises(ValueError):
        ngram.bigram_perplexity(train, contexts, np.array([1, 3]), 3)


def test_window_pairs_follow_the_model_targets():
    batch = torch.tensor([[5, 6, 7], [8, 9, 10]])
    contexts, targets = ngram.window_pairs([batch])
    assert contexts.tolist() == [5, 6, 8, 9] and targets.tolist() == [6, 7, 9, 10]


def test_helpers():
    assert mean_sd([2.0]) == (2.0, 0.0)
    assert mean_sd([1.0, 3.0]) == pytest.approx((2.0, math.sqrt(2)))
    curve = [{"iteration": 10, "mean_nll": math.log(100)}, {"iteration": 20, "mean_nll": math.log(10)}]
    assert crossing(curve, math.sqrt(1000)) == pytest.approx(15)
    assert crossing(curve, 200) == 10 and crossing(curve, 5) is None
    assert study.eval_points(800, 10) == tuple(range(80, 801, 80))
    assert study.eval_points(3, 10) == (1, 2, 3)
    results = [{"variant": "a", "learning_rate": lr, "curve": [{"mean_nll": nll}]}
               for lr, nll in ((1e-3, 3.0), (2e-3, 2.5), (3e-3, 2.5))]
    assert study.best_learning_rates(results) == {"a": 2e-3}


def test_committed_inputs_and_layer_flops():
    from skippipe.scenario import load_scenario

    inputs = load_inputs()
    sc = load_scenario(study.DEFAULT_SETTINGS)
    assert inputs.scenario == sc.name and set(study.DEFAULT_VARIANTS) <= set(inputs.paths)
    assert all(len(p) == sc.pipeline.path_length for p in inputs.paths["ca-partial"])
    assert inputs.iteration_s["ca-partial"] < inputs.iteration_s["baseline"]
    assert all(list(p) != sorted(p) for p in reordered_paths(inputs))
    full = layer_flops_per_iteration(sc.model, inputs.paths["baseline"], 4, sc.pipeline.n_stages)
    skip = layer_flops_per_iteration(sc.model, inputs.paths["ca-partial"], 4, sc.pipeline.n_stages)
    assert skip / full == pytest.approx(sc.pipeline.path_length / sc.pipeline.n_stages)


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    """A small local text corpus, with the caches in tmp."""
    monkeypatch.setenv("SKIPPIPE_CACHE", str(tmp_path / "cache"))
    rng = random.Random(0)
    root = tmp_path / "text"
    root.mkdir()
    for f in range(3):
        paras = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60))) + "."
                 for _ in range(60)]
        (root / f"part{f}.txt").write_text("\n\n".join(paras))
    return str(root)


def _args(corpus, tmp_path, *extra):
    return ["--data", corpus, "--out", str(tmp_path / "study"), "--iterations", "2", "--evals", "1",
            "--variants", "baseline,ca-partial", "--lrs", "1e-3,3e-3", "--seeds", "0,1",
            "--max-eval-windows", "16", "--jobs", "1", *extra]


def _count_iterations(monkeypatch) -> list:
    calls = []
    real = study_run.train_iteration
    monkeypatch.setattr(study_run, "train_iteration", lambda *a: calls.append(1) or real(*a))
    return calls


def test_runs_resume_and_settings_changes_rerun(corpus, tmp_path, monkeypatch):
    plan = study.Study(study.parse_args(_args(corpus, tmp_path)))
    spec = plan.spec("ca-partial", 3e-3, 0)
    calls = _count_iterations(monkeypatch)
    first = study_run.train_run(spec, plan.out)
    assert len(calls) == 2 and len(first["curve"]) == 1
    assert study_run.train_run(spec, plan.out) == first and len(calls) == 2  # reused
    sweep = study_run.sweep_run(spec, plan.out, ((0, 2, 1, 3),))
    assert len(sweep["paths"]) == 2 ** 5 + 1
    with monkeypatch.context() as m:
        m.setattr(study_run, "path_nll", lambda *a: pytest.fail("sweep not reused"))
        assert study_run.sweep_run(spec, plan.out, ((0, 2, 1, 3),)) == sweep
    longer = study.Study(study.parse_args(_args(corpus, tmp_path, "--iterations", "3")))
    study_run.train_run(longer.spec("ca-partial", 3e-3, 0), longer.out)
    assert len(calls) == 5  # a changed setting is not reused


@pytest.mark.swarm  # ~20 s: trains 6 tiny models and scores 6 sweeps
def test_study_end_to_end_and_rerun(corpus, tmp_path, monkeypatch, capsys):
    assert study.main(_args(corpus, tmp_path, "--figures", str(tmp_path / "fig"))) == 0
    report = (tmp_path / "study" / "report.md").read_text()
    for heading in ("Learning-rate sweep", "stages kept", "reordered", "Time to target",
                    "bigram", "Versions"):
        assert heading in report
    assert (tmp_path / "fig" / "study-stages-kept.png").stat().st_size > 0
    assert (tmp_path / "fig" / "study-curves.png").stat().st_size > 0
    saved = json.loads((tmp_path / "study" / "study.json").read_text())
    assert len(saved["runs"]) == 2 * 2 + 2 * 1  # the sweep, then the second seed per variant
    calls = _count_iterations(monkeypatch)
    assert study.main(_args(corpus, tmp_path, "--figures", str(tmp_path / "fig"))) == 0
    assert calls == []  # everything was reused


def test_bad_arguments_are_one_line_errors(corpus, tmp_path, capsys):
    assert study.main(_args(corpus, tmp_path, "--variants", "nope")) == 2
    assert study.main(_args(corpus, tmp_path, "--lrs", "x")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err)


def test_train_command_uses_the_study_recipe():
    from skippipe.train.recipe import WARMUP_FRACTION, recipe_config
    from skippipe.scenario import load_scenario

    sc = load_scenario(study.DEFAULT_SETTINGS)
    cfg = recipe_config(sc, iterations=200, learning_rate=None)
    assert cfg.cosine_decay and cfg.warmup_iterations == round(WARMUP_FRACTION * 200)
    assert cfg.learning_rate == sc.training.learning_rate
    plain = recipe_config(sc, warmup_iterations=0, cosine_decay=False)
    assert not plain.cosine_decay and plain.warmup_iterations == 0
    assert sc.training.iterations == study.DEFAULT_ITERATIONS  # `train` defaults = the study's
