"""Perplexity = exp(mean token NLL) on hand-checked cases; omission paths; sweeps; plots."""

from __future__ import annotations

import math

import pytest
import torch

from skippipe.errors import SkipPipeError
from skippipe.scenario import ModelConfig
from skippipe.train.evaluate import (
    omission_path,
    omission_subsets,
    parse_stage_list,
    path_nll,
    perplexity,
    plot_sweep,
    summarize,
    sweep,
    sweep_table,
)
from skippipe.train.model import build_stages

torch.set_num_threads(1)

EPS = 1e-5  # the model's RMSNorm epsilon


def _identity_stages(vocab: int, n_stages: int = 3):
    """Stages whose layers are the identity (zero output projections); d_model 4, one head."""
    cfg = ModelConfig(
        d_model=4,
        n_heads=1,
        n_layers=n_stages,
        ffn_hidden=4,
        ctx_tokens=4,
        vocab_size=vocab,
        activation_dtype_bytes=4,
        param_dtype_bytes=4,
    )
    stages = build_stages(cfg, n_stages, seed=0, device="cpu")
    with torch.no_grad():
        for s in stages:
            for block in s.layers.values():
                block.attn.wo.weight.zero_()
                block.mlp.w_down.weight.zero_()
    return stages


def test_uniform_model_has_perplexity_equal_to_vocab():
    stages = _identity_stages(vocab=7)
    with torch.no_grad():
        stages[0].lm_head.weight.zero_()
    batches = [torch.tensor([[1, 2, 3, 4, 5]]), torch.tensor([[6, 0, 1, 2, 3], [0, 0, 0, 0, 0]])]
    result = perplexity(stages, batches)
    assert result.tokens == 12
    assert result.perplexity == pytest.approx(7.0, rel=1e-6)


def test_perplexity_is_exp_of_mean_token_nll_hand_checked():
    """Two tokens; after token 0 the model says P(0) = 3/4, after token 1 it says P(0) = 1/4."""
    stages = _identity_stages(vocab=2)
    with torch.no_grad():
        stages[0].embedding.weight.copy_(torch.tensor([[1.0] * 4, [-1.0] * 4]))  # rms exactly 1
        stages[0].final_norm.weight.fill_(1.0)
        stages[0].lm_head.weight.copy_(torch.tensor([[math.log(3) / 4] * 4, [0.0] * 4]))
    scale = 1 / math.sqrt(1 + EPS)  # RMSNorm of a unit-rms vector
    p0_after_0 = 1 / (1 + math.exp(-math.log(3) * scale))  # ~3/4
    p0_after_1 = 1 / (1 + math.exp(math.log(3) * scale))  # ~1/4
    # sequence 0 0 1 0 0: predictions 0|0, 1|0, 0|1, 0|0
    nlls = [-math.log(p0_after_0), -math.log(1 - p0_after_0), -math.log(p0_after_1), -math.log(p0_after_0)]
    result = perplexity(stages, [torch.tensor([[0, 0, 1, 0, 0]])])
    assert result.tokens == 4
    assert result.mean_nll == pytest.approx(sum(nlls) / 4, rel=1e-6)
    assert result.perplexity == pytest.approx(math.exp(sum(nlls) / 4), rel=1e-6)
    assert result.perplexity == pytest.approx((0.75 * 0.25 * 0.25 * 0.75) ** -0.25, rel=1e-4)


def test_perplexity_pools_tokens_over_batches_not_batch_means():
    stages = build_stages(ModelConfig(8, 2, 2, 8, 6, 11, 4, 4), 2, seed=1, device="cpu")
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 11, (3, 7), generator=g), torch.randint(0, 11, (1, 5), generator=g)]
    total, count = 0.0, 0
    for b in batches:
        logits = stages[0].logits(stages[1].run_layers(stages[0].run_layers(stages[0].embed(b[:, :-1]))))
        nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), b[:, 1:].flatten(), reduction="sum")
        total, count = total + nll.item(), count + b[:, 1:].numel()
    result = perplexity(stages, batches)
    assert result.tokens == count == 22
    assert result.perplexity == pytest.approx(math.exp(total / count), rel=1e-5)


def test_omitted_stages_are_jumped_over():
    stages = build_stages(ModelConfig(8, 2, 4, 8, 6, 11, 4, 4), 4, seed=2, device="cpu")
    batches = [torch.randint(0, 11, (2, 7), generator=torch.Generator().manual_seed(1))]
    assert omission_path(4, (2,)) == (0, 1, 3)
    skipped = perplexity(stages, batches, (2,))
    assert skipped.nll_sum == pytest.approx(path_nll(stages, batches, (0, 1, 3))[0], rel=1e-9)
    assert skipped.fraction == pytest.approx(1 / 3)
    assert skipped.perplexity != pytest.approx(perplexity(stages, batches).perplexity, rel=1e-6)


def test_parse_stage_list():
    assert parse_stage_list("4, 2", 6) == (2, 4)
    for bad in ("0", "6", "2,2", "a"):
        with pytest.raises(SkipPipeError):
            parse_stage_list(bad, 6)
    with pytest.raises(SkipPipeError):
        omission_path(4, (0,))


def test_omission_subsets_exhaustive_and_sampled():
    small = omission_subsets(6, seed=0)
    assert len(small) == 2**5 and small[0] == () and small[-1] == (1, 2, 3, 4, 5)
    big = omission_subsets(12, seed=0)
    assert big == omission_subsets(12, seed=0)
    sizes = [len(s) for s in big]
    assert sizes.count(0) == 1 and sizes.count(11) == 1 and sizes.count(5) == 8
    assert len(set(big)) == len(big) and all(0 not in s for s in big)


def test_sweep_summary_table_and_plot(tmp_path):
    stages = build_stages(ModelConfig(8, 2, 3, 8, 6, 11, 4, 4), 3, seed=3, device="cpu")
    batches = [torch.randint(0, 11, (2, 7), generator=torch.Generator().manual_seed(2))]
    results = sweep(stages, batches, omission_subsets(3, seed=0))
    summary = summarize(results)
    assert [s.omitted_count for s in summary] == [0, 1, 2]
    assert summary[1].subsets == 2
    assert summary[1].mean_perplexity == pytest.approx((results[1].perplexity + results[2].perplexity) / 2)
    assert "mean ppl" in sweep_table(summary)
    png = plot_sweep({"a": results, "b": results}, tmp_path / "p.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_scoring_reports_progress_so_a_long_evaluation_is_not_silent(monkeypatch):
    from skippipe.train import evaluate

    monkeypatch.setattr(evaluate, "PROGRESS_EVERY_S", -1.0)  # a line after every batch
    stages = _identity_stages(vocab=16)
    lines = []
    perplexity(stages, [torch.randint(0, 16, (2, 5)) for _ in range(3)], progress=lines.append)
    assert lines == [f"  {i}/3 batches scored" for i in (1, 2, 3)]
