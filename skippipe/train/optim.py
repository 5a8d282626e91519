"""The optimisation both trainers share (the single-process study in local.py and the node
processes of the runtime): the training configuration, AdamW, the learning-rate schedule and
per-stage gradient clipping. One copy, so both train the same way."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from ..scenario import Scenario

MIN_LR_FRACTION = 0.1  # cosine decay ends at this fraction of the peak learning rate
ADAMW_BETAS = (0.9, 0.95)  # AdamW moment decay rates (LLaMA's)


@dataclass(frozen=True)
class TrainConfig:
    iterations: int
    samples_per_microbatch: int
    learning_rate: float
    weight_decay: float
    grad_clip: float  # max gradient norm per stage; 0 disables clipping
    seed: int  # model initialisation and data order
    warmup_iterations: int = 0  # linear learning-rate warm-up
    cosine_decay: bool = False  # decay to MIN_LR_FRACTION x peak at the last iteration
    log_every: int = 1  # iterations between progress lines
    checkpoint_every: int = 0  # iterations between checkpoints; 0: only at the end

    @classmethod
    def from_scenario(cls, scenario: Scenario, **overrides) -> TrainConfig:
        t = scenario.training
        base = cls(
            t.iterations,
            scenario.pipeline.samples_per_microbatch,
            t.learning_rate,
            t.weight_decay,
            t.grad_clip,
            t.seed,
        )
        return replace(base, **{k: v for k, v in overrides.items() if v is not None})


def make_optimizer(stages: Sequence[torch.nn.Module], cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over every stage; weight decay on matrices only (not on norm gains)."""
    params = [p for s in stages for p in s.parameters()]
    decay = [p for p in params if p.dim() >= 2]
    keep = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": keep, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=ADAMW_BETAS)


def learning_rate(iteration: int, cfg: TrainConfig) -> float:
    """Learning rate of the 0-based `iteration`: linear warm-up, then constant or cosine decay."""
    if iteration < cfg.warmup_iterations:
        return cfg.learning_rate * (iteration + 1) / cfg.warmup_iterations
    if not cfg.cosine_decay:
        return cfg.learning_rate
    span = max(1, cfg.iterations - cfg.warmup_iterations - 1)
    progress = min(1.0, (iteration - cfg.warmup_iterations) / span)
    floor = MIN_LR_FRACTION * cfg.learning_rate
    return floor + (cfg.learning_rate - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def clip_stage(stage: torch.nn.Module, grad_clip: float) -> float:
    """Clip one stage's gradient norm to `grad_clip` (0: no clipping); returns the norm before."""
    params = [p for p in stage.parameters() if p.grad is not None]
    if not params:
        return 0.0
    return float(torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else math.inf))
