"""LLaMA-style model in plain PyTorch, split into pipeline stages.

Architecture: token embedding, `n_layers` pre-norm transformer blocks (RMSNorm, causal
multi-head attention with rotary position embeddings via `F.scaled_dot_product_attention`,
SwiGLU MLP of hidden width `ffn_hidden`), final RMSNorm, untied LM head. No biases.

Stage split (`S = n_stages`, `L = n_layers // S` layers per stage): stage `s` holds the global
layers `[s*L, (s+1)*L)`; stage 0 also holds the embedding; the *head* (final norm, LM head and
next-token cross-entropy) sits where the loss runs (`loss_at`, ops.LOSS_AT): on stage 0 (the
origin, SkipPipe's default) or on the last stage (the classic pipelines). The model is untied,
so moving the head moves its weights and nothing else: no second copy to keep equal. Layer
weights are keyed by their GLOBAL index (`layers.7.attn.wq.weight`) so a stage's state dict is
the same whichever node holds it, and the union of all stage state dicts is the full model state
(`initial_state`).

A microbatch following the path `(0, a, b, ...)` is computed as
`h = stage0.run_layers(stage0.embed(x))`, then `h = stage_a.run_layers(h)`, ..., and finally
`head.loss(h, y)` on the stage holding the head. `forward_path` does exactly this in one process.

Public API (used by train_local, evaluate and the distributed runtime):

- Devices come from `util.devices` (`pick_device()`: CUDA when available, else CPU).
- `layer_range(model_cfg, stage, n_stages) -> range`: global layer ids of a stage.
- `Stage(model_cfg, stage, n_stages, loss_at="origin")`: `embed(tokens[B,T]) -> h[B,T,d]`
  (stage 0), `run_layers(h) -> h`, `logits(h) -> [B,T,vocab]`, `token_nll(h, targets) -> [B,T]`
  nats per token, `loss(h, targets) -> scalar` mean nats per token (the last three on the stage
  holding the head: `head_stage(n_stages, loss_at)`; `head_of(stages)` finds it).
- `build_stage(model_cfg, stage, n_stages, device=None, seed=0) -> Stage`: the stage starts
  from its part of `initial_state(model_cfg, n_stages, seed)`; load trained weights after.
- `initial_state(model_cfg, n_stages, seed) -> dict[str, Tensor]`: full seeded state; every
  tensor is drawn from its own generator seeded by (seed, key), so one stage's part can be built
  alone with `initial_stage_state` and equals the matching slice of the full state.
- `load_stage_state(stage_module, full_or_stage_state)`: load the keys this stage owns (strict).
- `build_stages(model_cfg, n_stages, seed, device=None) -> list[Stage]`.
- `forward_path(stages, tokens[B,T+1], path) -> scalar loss` and `path_token_nll(...) -> [B,T]`.
- Checkpoints of these stages: checkpoint.py.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SkipPipeError
from ..scenario import ModelConfig
from ..util.devices import pick_device

ROPE_BASE = 10000.0  # rotary embedding base frequency (LLaMA default)
RMS_NORM_EPS = 1e-5  # added to the mean square before the reciprocal square root
INIT_STD = 0.02  # standard deviation of the normal initialisation of embedding and linears
_RESIDUAL_OUTPUTS = ("attn.wo.weight", "mlp.w_down.weight")  # scaled by 1/sqrt(2 n_layers)


class PathError(SkipPipeError):
    """A microbatch path that does not start at stage 0 or repeats / names unknown stages."""


def layers_per_stage(model_cfg: ModelConfig, n_stages: int) -> int:
    """Transformer layers each stage holds; raises if they do not split evenly."""
    if n_stages < 1 or model_cfg.n_layers % n_stages:
        raise SkipPipeError(f"{model_cfg.n_layers} layers do not split into {n_stages} stages")
    return model_cfg.n_layers // n_stages


def layer_range(model_cfg: ModelConfig, stage: int, n_stages: int) -> range:
    """Global layer ids held by `stage`: [stage*L, (stage+1)*L)."""
    if not 0 <= stage < n_stages:
        raise SkipPipeError(f"stage {stage} is outside 0..{n_stages - 1}")
    per = layers_per_stage(model_cfg, n_stages)
    return range(stage * per, (stage + 1) * per)


class RMSNorm(nn.Module):
    """x / rms(x) * gain, over the last dimension."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + RMS_NORM_EPS) * self.weight


def rotary_tables(ctx_tokens: int, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables [ctx_tokens, head_dim] for rotary embeddings (half-split layout)."""
    inv_freq = 1.0 / ROPE_BASE ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(ctx_tokens, dtype=torch.float32), inv_freq)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, H, T, hd] by the position angles: feature i pairs with feature i + hd/2."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    """Causal multi-head self-attention with rotary position embeddings, no biases."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.wq = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.wk = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.wv = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.wo = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        return x.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        q = apply_rotary(self._heads(self.wq(x)), cos, sin)
        k = apply_rotary(self._heads(self.wk(x)), cos, sin)
        out = F.scaled_dot_product_attention(q, k, self._heads(self.wv(x)), is_causal=True)
        return self.wo(out.transpose(1, 2).reshape(x.shape))


class SwiGLU(nn.Module):
    """w_down(silu(w_gate x) * w_up x), hidden width ffn_hidden, no biases."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.w_gate = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)
        self.w_up = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)
        self.w_down = nn.Linear(cfg.ffn_hidden, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


class Block(nn.Module):
    """Pre-norm transformer layer: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.d_model)
        self.mlp = SwiGLU(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))


def head_stage(n_stages: int, loss_at: str = "origin") -> int:
    """The stage holding the final norm and the LM head: 0, or the last one for loss_at "last"."""
    return n_stages - 1 if loss_at == "last" else 0


class Stage(nn.Module):
    """One pipeline stage: its layers (keyed by global index); stage 0 also embeds, and the head
    stage (`head_stage`) scores."""

    def __init__(self, cfg: ModelConfig, stage: int, n_stages: int, loss_at: str = "origin"):
        super().__init__()
        self.cfg, self.stage, self.n_stages = cfg, stage, n_stages
        self.has_head = stage == head_stage(n_stages, loss_at)
        self.layer_ids = tuple(layer_range(cfg, stage, n_stages))
        self.layers = nn.ModuleDict({str(i): Block(cfg) for i in self.layer_ids})
        if stage == 0:
            self.embedding = nn.Embedding(cfg.vocab_size, cfg.d_model)
        if self.has_head:
            self.final_norm = RMSNorm(cfg.d_model)
            self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        cos, sin = rotary_tables(cfg.ctx_tokens, cfg.d_model // cfg.n_heads)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def reset_rotary(self) -> None:
        """Recompute the (non-persistent) rotary tables on this module's device."""
        cos, sin = rotary_tables(self.cfg.ctx_tokens, self.cfg.d_model // self.cfg.n_heads)
        self.rope_cos, self.rope_sin = cos.to(self.rope_cos.device), sin.to(self.rope_sin.device)

    def _require_stage0(self, what: str) -> None:
        if self.stage != 0:
            raise SkipPipeError(f"{what} runs on stage 0 only, not on stage {self.stage}")

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids [B, T] -> hidden states [B, T, d_model] (stage 0 only)."""
        self._require_stage0("embed")
        return self.embedding(tokens)

    def run_layers(self, h: torch.Tensor) -> torch.Tensor:
        """Apply this stage's layers in global order to h [B, T, d_model]."""
        t = h.shape[1]
        if t > self.cfg.ctx_tokens:
            raise SkipPipeError(f"sequence of {t} tokens exceeds ctx_tokens {self.cfg.ctx_tokens}")
        cos, sin = self.rope_cos[:t], self.rope_sin[:t]
        for i in self.layer_ids:
            h = self.layers[str(i)](h, cos, sin)
        return h

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Final norm and LM head: h [B, T, d] -> logits [B, T, vocab] (the head stage only)."""
        if not self.has_head:
            raise SkipPipeError(f"stage {self.stage} does not hold the LM head")
        return self.lm_head(self.final_norm(h))

    def token_nll(self, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Next-token negative log-likelihood per token, nats, shape [B, T] (head stage only)."""
        logits = self.logits(h).float()
        nll = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
        return nll.view(targets.shape)

    def loss(self, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy over all tokens, nats (head stage only)."""
        logits = self.logits(h).float()
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


# ----------------------------------------------------------------------------------------------
# Seeded initialisation and state handling.


def _meta_stage(cfg: ModelConfig, stage: int, n_stages: int, loss_at: str = "origin") -> Stage:
    """A stage whose tensors live on the meta device: shapes only, no memory, no RNG use."""
    with torch.device("meta"):
        return Stage(cfg, stage, n_stages, loss_at)


def _tensor_seed(seed: int, key: str) -> int:
    """A 63-bit generator seed derived from the model seed and the tensor's key."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _init_tensor(cfg: ModelConfig, key: str, shape: torch.Size, seed: int) -> torch.Tensor:
    """Norm gains start at 1; other weights ~ N(0, INIT_STD), residual outputs scaled down."""
    if key.endswith("norm.weight"):
        return torch.ones(shape)
    std = INIT_STD / math.sqrt(2 * cfg.n_layers) if key.endswith(_RESIDUAL_OUTPUTS) else INIT_STD
    gen = torch.Generator().manual_seed(_tensor_seed(seed, key))
    return torch.randn(shape, generator=gen) * std


def initial_stage_state(
    cfg: ModelConfig, stage: int, n_stages: int, seed: int, loss_at: str = "origin"
) -> dict[str, torch.Tensor]:
    """Seeded initial state (CPU, float32) of one stage; a slice of `initial_state`. A tensor's
    value depends on its key only, so the head starts alike on whichever stage holds it."""
    shapes = {k: v.shape for k, v in _meta_stage(cfg, stage, n_stages, loss_at).state_dict().items()}
    return {key: _init_tensor(cfg, key, shape, seed) for key, shape in shapes.items()}


def initial_state(cfg: ModelConfig, n_stages: int, seed: int) -> dict[str, torch.Tensor]:
    """Full seeded model state: the union of every stage's `initial_stage_state`."""
    state: dict[str, torch.Tensor] = {}
    for stage in range(n_stages):
        state.update(initial_stage_state(cfg, stage, n_stages, seed))
    return state


def load_stage_state(module: Stage, state: Mapping[str, torch.Tensor]) -> None:
    """Load the keys `module` owns from a full or per-stage state dict; every key must exist."""
    own = module.state_dict().keys()
    missing = [k for k in own if k not in state]
    if missing:
        raise SkipPipeError(
            f"stage {module.stage} state is missing {missing[0]} ({len(missing)} keys missing)"
        )
    module.load_state_dict({k: state[k] for k in own}, strict=True)


def build_stage(
    cfg: ModelConfig,
    stage: int,
    n_stages: int,
    device: torch.device | str | None = None,
    seed: int = 0,
    loss_at: str = "origin",
) -> Stage:
    """A stage on `device` (default `pick_device()`) holding its part of `initial_state(seed)`.

    Load trained weights afterwards with `load_stage_state` (e.g. from a checkpoint or a peer).
    """
    target = pick_device() if device is None else device
    module = _meta_stage(cfg, stage, n_stages, loss_at).to_empty(device=target)
    module.reset_rotary()
    with torch.no_grad():
        load_stage_state(module, initial_stage_state(cfg, stage, n_stages, seed, loss_at))
    return module


def build_stages(
    cfg: ModelConfig,
    n_stages: int,
    seed: int,
    device: torch.device | str | None = None,
    loss_at: str = "origin",
) -> list[Stage]:
    """All stages of the model, seeded-initialised, on one device."""
    return [build_stage(cfg, s, n_stages, device, seed, loss_at) for s in range(n_stages)]


def head_of(stages: Sequence[Stage]) -> Stage:
    """The stage that holds the LM head (stage 0, or the last one: `head_stage`)."""
    return next(s for s in stages if s.has_head)


# ----------------------------------------------------------------------------------------------
# Paths in one process.


def check_path(path: Sequence[int], n_stages: int) -> tuple[int, ...]:
    """Basic path rules: starts at stage 0, stages distinct and in range. Returns a tuple."""
    path = tuple(int(s) for s in path)
    if not path or path[0] != 0:
        raise PathError(f"path {list(path)} must start at stage 0")
    if len(set(path)) != len(path):
        raise PathError(f"path {list(path)} visits a stage twice")
    bad = [s for s in path if not 0 <= s < n_stages]
    if bad:
        raise PathError(f"path {list(path)} names stage {bad[0]} outside 0..{n_stages - 1}")
    return path


def path_hidden(stages: Sequence[Stage], inputs: torch.Tensor, path: Sequence[int]) -> torch.Tensor:
    """Embed at stage 0, run stage 0's layers, then each later stage of `path` in path order."""
    path = check_path(path, len(stages))
    h = stages[0].run_layers(stages[0].embed(inputs))
    for s in path[1:]:
        h = stages[s].run_layers(h)
    return h


def path_token_nll(stages: Sequence[Stage], tokens: torch.Tensor, path: Sequence[int]) -> torch.Tensor:
    """Per-token next-token NLL [B, T] (nats) of tokens [B, T+1] along `path`."""
    return head_of(stages).token_nll(path_hidden(stages, tokens[:, :-1], path), tokens[:, 1:])


def forward_path(stages: Sequence[Stage], tokens: torch.Tensor, path: Sequence[int]) -> torch.Tensor:
    """Mean next-token loss (nats) of tokens [B, T+1] along `path` (stage 0 first), scored by
    the head wherever it sits (a path that skips the head's stage still ends in its head)."""
    return head_of(stages).loss(path_hidden(stages, tokens[:, :-1], path), tokens[:, 1:])
