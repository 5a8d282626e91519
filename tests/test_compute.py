"""The split backward is the fused backward in two parts: B (input gradient, sent on at once)
then W (weight gradients from the graph B retained) give exactly the fused gradients."""

import pytest
import torch

from skippipe.ops import B, F, W
from skippipe.runtime.node.compute import StageCompute
from skippipe.train.optim import TrainConfig


def _stage(sc, stage: int, split: bool) -> StageCompute:
    return StageCompute(
        sc,
        sc.model,
        stage,
        torch.device("cpu"),
        TrainConfig.from_scenario(sc, seed=0),
        n_microbatches=2,
        split=split,
    )


def _backward(sc, stage: int, hop: int, split: bool):
    """Two microbatches through one stage at `hop`: F, then the backward (B, or B and W later);
    returns the input gradients sent on and the weight gradients."""
    gen = torch.Generator().manual_seed(7)
    c = _stage(sc, stage, split)
    shape = (sc.pipeline.samples_per_microbatch, sc.model.ctx_tokens, sc.model.d_model)
    sent = []
    for mb in range(2):
        if hop == 0:
            c.batch[mb] = torch.randint(0, sc.model.vocab_size, (shape[0], shape[1] + 1), generator=gen)
        else:
            c.give(F(mb, hop), torch.randn(shape, generator=gen))
        c.run(F(mb, hop))
    for mb in range(2):
        c.give(B(mb, hop), torch.randn(shape, generator=gen))
        sent.append(c.run(B(mb, hop)))
    if split:  # W after every B: the weight gradients wait, the input gradients did not
        assert all(p.grad is None for p in c.params)
        for mb in range(2):
            assert c.run(W(mb, hop)) is None
    assert not c.saved and not c.out_grads
    return sent, {k: p.grad for k, p in c.module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("stage,hop", [(0, 0), (1, 1), (3, 2)])
def test_split_backward_equals_fused(tiny_scenario, stage, hop):
    fused_sent, fused = _backward(tiny_scenario, stage, hop, split=False)
    split_sent, split = _backward(tiny_scenario, stage, hop, split=True)
    assert fused and set(split) == set(fused)
    for k in fused:
        torch.testing.assert_close(split[k], fused[k], rtol=0, atol=0)
    for a, b in zip(fused_sent, split_sent):
        if hop == 0:
            assert a is None and b is None  # nothing to send before the origin's embedding
        else:
            torch.testing.assert_close(b, a, rtol=0, atol=0)


def test_forgetting_a_microbatch_drops_what_w_needs(tiny_scenario):
    c = _stage(tiny_scenario, 1, split=True)
    shape = (
        tiny_scenario.pipeline.samples_per_microbatch,
        tiny_scenario.model.ctx_tokens,
        tiny_scenario.model.d_model,
    )
    c.give(F(0, 1), torch.randn(shape))
    c.run(F(0, 1))
    c.give(B(0, 1), torch.randn(shape))
    c.run(B(0, 1))
    c.forget(0)
    assert not c.saved and not c.out_grads
