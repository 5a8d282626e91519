"""Path training in one process: path order, gradient averaging, one step per iteration."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from skippipe.errors import SkipPipeError
from skippipe.planner.random_paths import random_stage_paths
from skippipe.scenario import ModelConfig, load_scenario
from skippipe.train.checkpoint import load_checkpoint
from skippipe.train.data import TokenData, training_batches
from skippipe.train.local import RunInfo, baseline_paths, local_paths, train, train_iteration
from skippipe.train.model import build_stages, forward_path
from skippipe.train.optim import TrainConfig, learning_rate, make_optimizer

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
CFG = ModelConfig(
    d_model=16,
    n_heads=2,
    n_layers=4,
    ffn_hidden=24,
    ctx_tokens=8,
    vocab_size=32,
    activation_dtype_bytes=4,
    param_dtype_bytes=4,
)
N_STAGES = 4
TRAIN = TrainConfig(
    iterations=3, samples_per_microbatch=2, learning_rate=1e-2, weight_decay=0.0, grad_clip=1.0, seed=0
)


def _data() -> TokenData:
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, CFG.vocab_size, 2000).astype(np.int32)
    return TokenData(tokens, tokens[:200], Path("none.model"), "synthetic", "0")


def _batches(seed=0):
    return training_batches(_data().train, TRAIN.samples_per_microbatch, CFG.ctx_tokens, seed)


def _run(tmp_path, paths, cfg=TRAIN, name="run"):
    return train(CFG, N_STAGES, paths, _data(), cfg, RunInfo(tmp_path / name, "test", "t", "h"), "cpu")


def test_train_iteration_runs_each_microbatch_along_its_path_in_order():
    paths = [(0, 2, 1, 3), (0, 3, 1)]
    stages = build_stages(CFG, N_STAGES, seed=0, device="cpu")
    fresh = build_stages(CFG, N_STAGES, seed=0, device="cpu")
    batch = _batches()
    first, second = next(batch), next(batch)
    expected = (
        forward_path(fresh, first, paths[0]).item() + forward_path(fresh, second, paths[1]).item()
    ) / 2
    in_order = (
        forward_path(fresh, first, [0, 1, 2, 3]).item() + forward_path(fresh, second, [0, 1, 3]).item()
    ) / 2
    loss, _ = train_iteration(stages, make_optimizer(stages, TRAIN), paths, _batches(), TRAIN.grad_clip)
    assert loss == pytest.approx(expected, rel=1e-6)
    assert abs(loss - in_order) > 1e-5


def test_training_depends_on_path_order(tmp_path):
    a = _run(tmp_path, [(0, 1, 2, 3)] * 2, name="a")
    b = _run(tmp_path, [(0, 2, 1, 3)] * 2, name="b")
    assert a.history[0].loss != pytest.approx(b.history[0].loss, abs=1e-6)
    assert a.history[-1].loss != pytest.approx(b.history[-1].loss, abs=1e-6)


def test_gradients_are_the_mean_over_microbatches_and_one_step_is_taken():
    paths = [(0, 1, 2), (0, 3, 2), (0, 1, 3, 2)]
    stages = build_stages(CFG, N_STAGES, seed=0, device="cpu")
    ref = build_stages(CFG, N_STAGES, seed=0, device="cpu")
    batches = _batches()
    for path in paths:
        (forward_path(ref, next(batches), path) / len(paths)).backward()
    optimizer = make_optimizer(stages, replace(TRAIN, learning_rate=0.0))
    train_iteration(stages, optimizer, paths, _batches(), grad_clip=0.0)
    for s, r in zip(stages, ref):
        for (key, p), q in zip(s.named_parameters(), r.parameters()):
            torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-5, msg=key)
    steps = {int(st["step"]) for st in optimizer.state.values()}
    assert steps == {1}


def test_unvisited_stage_is_not_updated(tmp_path):
    result = _run(tmp_path, [(0, 1, 2)] * 2)
    untouched = build_stages(CFG, N_STAGES, seed=0, device="cpu")[3]
    for key, value in untouched.state_dict().items():
        assert torch.equal(result.stages[3].state_dict()[key], value), key
    assert not torch.equal(
        result.stages[1].layers["1"].attn.wq.weight,
        build_stages(CFG, N_STAGES, seed=0, device="cpu")[1].layers["1"].attn.wq.weight,
    )


def test_train_writes_metrics_and_loadable_checkpoints(tmp_path):
    result = _run(tmp_path, baseline_paths(N_STAGES, 2))
    events = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == [
        "start",
        "iteration",
        "iteration",
        "iteration",
        "checkpoint",
        "end",
    ]
    assert all({"t", "node", "event"} <= set(e) for e in events)
    assert [e["iteration"] for e in events if e["event"] == "iteration"] == [1, 2, 3]
    assert result.tokens_seen == 3 * 2 * TRAIN.samples_per_microbatch * CFG.ctx_tokens
    info, stages = load_checkpoint(result.checkpoint_dir, "cpu")
    assert info.iteration == 3 and info.n_stages == N_STAGES
    tokens = next(_batches(5))
    assert (
        forward_path(stages, tokens, [0, 1, 2, 3]).item()
        == forward_path(result.stages, tokens, [0, 1, 2, 3]).item()
    )


def test_training_is_deterministic(tmp_path):
    a = _run(tmp_path, [(0, 2, 1, 3), (0, 1, 3)], name="a")
    b = _run(tmp_path, [(0, 2, 1, 3), (0, 1, 3)], name="b")
    assert [h.loss for h in a.history] == [h.loss for h in b.history]


def test_bad_paths_are_rejected(tmp_path):
    with pytest.raises(SkipPipeError):
        _run(tmp_path, [(1, 2, 3)])
    with pytest.raises(SkipPipeError):
        _run(tmp_path, [])


def test_learning_rate_schedule():
    cfg = replace(TRAIN, iterations=10, warmup_iterations=2, cosine_decay=True)
    assert learning_rate(0, cfg) == pytest.approx(cfg.learning_rate / 2)
    assert learning_rate(2, cfg) == pytest.approx(cfg.learning_rate)
    assert learning_rate(9, cfg) == pytest.approx(0.1 * cfg.learning_rate)
    assert learning_rate(5, TRAIN) == TRAIN.learning_rate


def test_local_paths_need_a_schedule_for_planner_variants():
    scenario = load_scenario(ROOT / "settings" / "tiny.toml")
    assert local_paths(scenario, "baseline", 0)[0] == (0, 1, 2, 3)
    with pytest.raises(SkipPipeError, match="needs a schedule"):
        local_paths(scenario, "ca-partial", 0)


def test_paths_come_from_a_schedule_file_in_microbatch_order(tmp_path):
    from skippipe.train.local import resolve_paths

    settings = ROOT / "settings" / "tiny.toml"
    scenario = load_scenario(settings)
    stage_nodes = [[0, 1], [2, 3], [4], [5]]  # tiny: stage_sizes [2, 2, 1, 1]
    n_mb = 2 * scenario.pipeline.microbatches_per_node
    stage_paths = tuple(random_stage_paths(scenario, n_mb, 1))
    entries = [
        {
            "microbatch": mb,
            "origin": mb % 2,
            "hops": [
                {"stage": s, "node": mb % 2 if s == 0 else stage_nodes[s][mb % len(stage_nodes[s])]}
                for s in path
            ],
        }
        for mb, path in enumerate(stage_paths)
    ]
    doc = {
        "schema_version": 2,  # schedule.SCHEMA_VERSION
        "scenario": {"name": scenario.name, "hash": scenario.content_hash, "path": str(settings)},
        "allocation": {"stages": stage_nodes},
        "variants": {"random": {"paths": entries[::-1]}},
    }  # stored out of order
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(doc))
    got_scenario, paths, loss_at = resolve_paths(path, "random")
    assert got_scenario.content_hash == scenario.content_hash
    assert paths == stage_paths and loss_at == "origin"  # a file older than the field
    with pytest.raises(SkipPipeError, match="no variant"):
        resolve_paths(path, "ca-partial")
