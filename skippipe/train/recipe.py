"""The training recipe shared by `python -m skippipe train`, the node processes of a distributed
run (so both train alike, loss for loss) and the sparse-pipeline study (skippipe.study): the
scenario's settings, a linear warm-up over WARMUP_FRACTION of the iterations, then cosine decay.
Kept free of torch so the commands' --help stays fast."""

from __future__ import annotations

from dataclasses import replace

WARMUP_FRACTION = 0.05  # the recipe's linear warm-up: this share of the iterations
EVAL_SAMPLES = 8  # sequences per validation batch


def recipe_config(scenario, **overrides):
    """TrainConfig of the recipe; `overrides` (None values ignored) replace any of its fields."""
    from .optim import TrainConfig

    given = {k: v for k, v in overrides.items() if v is not None}
    cfg = TrainConfig.from_scenario(scenario, **{"cosine_decay": True, **given})
    if "warmup_iterations" not in given:
        cfg = replace(cfg, warmup_iterations=round(WARMUP_FRACTION * cfg.iterations))
    return cfg
