"""Stage split vs an independent single-module reference; state keys; paths; checkpoints."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from skippipe.errors import SkipPipeError
from skippipe.scenario import ModelConfig
from skippipe.train.checkpoint import CheckpointInfo, load_checkpoint, load_stage_file, save_checkpoint
from skippipe.train.model import (
    PathError,
    build_stage,
    build_stages,
    check_path,
    forward_path,
    initial_stage_state,
    initial_state,
    layer_range,
    load_stage_state,
    path_token_nll,
)

torch.set_num_threads(1)

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
EPS = 1e-5


# An independent reference: one function over the full state dict, explicit mask and softmax,
# rotary embeddings through complex multiplication.


def _rms(x, w):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + EPS) * w


def _rotary(x):  # x [B, H, T, hd]
    t, hd = x.shape[-2], x.shape[-1]
    freqs = 10000.0 ** (-torch.arange(0, hd, 2).float() / hd)
    angles = torch.arange(t).float()[:, None] * freqs[None, :]
    z = torch.complex(x[..., : hd // 2], x[..., hd // 2 :])  # feature i pairs with i + hd/2
    r = z * torch.polar(torch.ones_like(angles), angles)
    return torch.cat((r.real, r.imag), dim=-1)


def _layer(x, w, i, n_heads):
    p = f"layers.{i}."
    b, t, d = x.shape
    h = _rms(x, w[p + "attn_norm.weight"])
    q, k, v = (h @ w[p + f"attn.{n}.weight"].T for n in ("wq", "wk", "wv"))
    q, k, v = (z.view(b, t, n_heads, d // n_heads).transpose(1, 2) for z in (q, k, v))
    q, k = _rotary(q), _rotary(k)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d // n_heads)
    scores = scores.masked_fill(torch.triu(torch.ones(t, t, dtype=torch.bool), 1), float("-inf"))
    attn = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, d)
    x = x + attn @ w[p + "attn.wo.weight"].T
    h = _rms(x, w[p + "mlp_norm.weight"])
    gate = F.silu(h @ w[p + "mlp.w_gate.weight"].T) * (h @ w[p + "mlp.w_up.weight"].T)
    return x + gate @ w[p + "mlp.w_down.weight"].T


def reference_logits(w, tokens, layer_order, n_heads=CFG.n_heads):
    x = w["embedding.weight"][tokens]
    for i in layer_order:
        x = _layer(x, w, i, n_heads)
    return _rms(x, w["final_norm.weight"]) @ w["lm_head.weight"].T


def _tokens(seed=0, batch=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, CFG.vocab_size, (batch, CFG.ctx_tokens + 1), generator=g)


def test_stage_split_matches_single_module_logits_and_gradients():
    stages = build_stages(CFG, N_STAGES, seed=3, device="cpu")
    tokens = _tokens()
    loss = forward_path(stages, tokens, [0, 1, 2, 3])
    loss.backward()

    ref = {k: v.clone().requires_grad_(True) for k, v in initial_state(CFG, N_STAGES, 3).items()}
    logits = reference_logits(ref, tokens[:, :-1], range(CFG.n_layers))
    ref_loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
    ref_loss.backward()

    h = stages[0].embed(tokens[:, :-1])
    for s in stages:
        h = s.run_layers(h)
    torch.testing.assert_close(stages[0].logits(h), logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=1e-6)
    for s in stages:
        for key, p in s.named_parameters():
            torch.testing.assert_close(p.grad, ref[key].grad, atol=1e-6, rtol=1e-4, msg=key)


def test_reordered_path_matches_reference_layer_order():
    stages = build_stages(CFG, N_STAGES, seed=1, device="cpu")
    tokens = _tokens(1)
    nll = path_token_nll(stages, tokens, [0, 2, 1])  # layers 0, 2, 1 (stage 3 skipped)
    logits = reference_logits(initial_state(CFG, N_STAGES, 1), tokens[:, :-1], [0, 2, 1])
    ref = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten(), reduction="none")
    torch.testing.assert_close(nll, ref.view(nll.shape), atol=1e-5, rtol=1e-5)


def test_path_order_changes_the_loss():
    stages = build_stages(CFG, N_STAGES, seed=0, device="cpu")
    tokens = _tokens(2)
    a = forward_path(stages, tokens, [0, 1, 2, 3]).item()
    b = forward_path(stages, tokens, [0, 2, 1, 3]).item()
    assert abs(a - b) > 1e-6


def test_state_keys_are_global_and_stage_state_is_a_slice_of_the_full_state():
    full = initial_state(CFG, N_STAGES, seed=7)
    stage2 = build_stage(CFG, 2, N_STAGES, "cpu", seed=7)
    keys = set(stage2.state_dict())
    assert {k.split(".")[1] for k in keys} == {"2"}
    assert list(layer_range(CFG, 2, N_STAGES)) == [2]
    for k, v in stage2.state_dict().items():
        torch.testing.assert_close(v, full[k])
    assert set(initial_stage_state(CFG, 0, N_STAGES, 7)) >= {
        "embedding.weight",
        "lm_head.weight",
        "final_norm.weight",
    }
    assert set(full) == set().union(*(initial_stage_state(CFG, s, N_STAGES, 7) for s in range(N_STAGES)))
    other = initial_state(CFG, N_STAGES, seed=8)
    assert not torch.equal(full["layers.1.attn.wq.weight"], other["layers.1.attn.wq.weight"])


def test_stage_state_is_independent_of_the_split():
    """Layer 3's weights are the same whether a stage of 2 or of 4 stages holds it."""
    two = build_stage(CFG, 1, 2, "cpu", seed=5).state_dict()
    four = build_stage(CFG, 3, 4, "cpu", seed=5).state_dict()
    torch.testing.assert_close(two["layers.3.mlp.w_up.weight"], four["layers.3.mlp.w_up.weight"])


def test_load_stage_state_needs_every_key():
    stage = build_stage(CFG, 1, N_STAGES, "cpu")
    state = dict(initial_stage_state(CFG, 1, N_STAGES, 0))
    state.pop("layers.1.attn.wq.weight")
    with pytest.raises(SkipPipeError, match="missing layers.1.attn.wq.weight"):
        load_stage_state(stage, state)


@pytest.mark.parametrize("path", [[1, 2], [0, 1, 1], [0, 4], []])
def test_bad_paths_are_rejected(path):
    with pytest.raises(PathError):
        check_path(path, N_STAGES)


def test_only_stage_zero_embeds_and_scores():
    stage = build_stage(CFG, 1, N_STAGES, "cpu")
    with pytest.raises(SkipPipeError):
        stage.embed(_tokens()[:, :-1])


def test_checkpoint_roundtrip(tmp_path):
    stages = build_stages(CFG, N_STAGES, seed=2, device="cpu")
    with torch.no_grad():
        stages[3].layers["3"].mlp.w_up.weight.add_(1.0)
    info = CheckpointInfo(CFG, N_STAGES, 5, 100, "baseline", "t", "h", "builtin", "x.model", 2)
    save_checkpoint(stages, tmp_path, info)
    got, loaded = load_checkpoint(tmp_path, "cpu")
    assert got == info
    tokens = _tokens(4)
    assert (
        forward_path(loaded, tokens, [0, 1, 2, 3]).item() == forward_path(stages, tokens, [0, 1, 2, 3]).item()
    )
    torch.save({"x": [1, 2]}, tmp_path / "bad.pt")
    with pytest.raises(SkipPipeError):
        load_stage_file(tmp_path / "bad.pt")


def test_ctx_longer_than_model_is_rejected():
    stages = build_stages(replace(CFG, ctx_tokens=4), 2, seed=0, device="cpu")
    with pytest.raises(SkipPipeError, match="exceeds ctx_tokens"):
        forward_path(stages, _tokens(), [0, 1])
