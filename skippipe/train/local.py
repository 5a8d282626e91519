"""Path training in one process: the convergence study of partial and reordered pipelines.

Every microbatch of an iteration runs the stages of its path in path order (stage 0 embeds and
runs its layers, then each later stage of the path runs its layers, then the stage holding the
head applies the final norm, LM head and loss: stage 0, or the last stage when the variant's
loss runs there, `RunInfo.loss_at`; the head's gradient is clipped with its stage's, as in the
distributed runtime). Losses are averaged over the iteration's microbatches, gradients
accumulate over all of them, each stage's gradient norm is clipped to `grad_clip` (as the
distributed runtime does: stages clip without a global barrier), and AdamW takes
exactly one step per iteration. Parameters of a stage no microbatch visited get no gradient and
are left untouched by that step.

Paths (tuples of stage ids, stage 0 first) come from:
- `baseline_paths(n_stages, n_microbatches)`: every stage in order;
- `local_paths(scenario, "random", seed)`: network-blind random skip paths of length k that
  obey the schedule rules (CC1-CC3 and TC1's even visits), from the planner's one generator
  (`planner.random_paths.random_stage_paths`);
- `schedule_paths(variant_schedule)`: the paths of one variant of a planner schedule.

`train(model_cfg, n_stages, paths, data, cfg, run)` runs the loop, logs progress, writes
`metrics.jsonl` (one JSON event a line) and per-stage checkpoints under `run.run_dir`. The
optimiser, learning-rate schedule and clipping are the runtime's too (optim.py).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..errors import SkipPipeError
from ..scenario import ModelConfig, Scenario
from ..util.rundir import keep_in
from ..variants import REGISTRY
from .checkpoint import CheckpointInfo, save_checkpoint
from .data import TokenData, training_batches
from .model import Stage, build_stages, check_path, forward_path
from .optim import TrainConfig, clip_stage, learning_rate, make_optimizer, set_learning_rate

log = logging.getLogger(__name__)

StagePath = tuple[int, ...]  # stage ids of one microbatch's path, stage 0 first
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoint"


@dataclass(frozen=True)
class RunInfo:
    run_dir: Path
    variant: str
    scenario_name: str
    scenario_hash: str
    loss_at: str = "origin"  # where the head sits (ops.LOSS_AT): stage 0 or the last stage


@dataclass(frozen=True)
class IterationStats:
    iteration: int  # 1-based
    loss: float  # mean next-token loss over the iteration's microbatches, nats
    grad_norm: float  # global gradient norm before clipping
    learning_rate: float
    tokens: int  # tokens predicted this iteration
    seconds: float  # wall time of the iteration
    tokens_per_s: float


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    checkpoint_dir: Path
    history: tuple[IterationStats, ...]
    tokens_seen: int
    stages: tuple[Stage, ...] = field(default=(), compare=False, repr=False)  # trained modules


# ----------------------------------------------------------------------------------------------
# Paths.


def baseline_paths(n_stages: int, n_microbatches: int) -> tuple[StagePath, ...]:
    """Every microbatch visits every stage in order."""
    return tuple(tuple(range(n_stages)) for _ in range(n_microbatches))


def schedule_paths(variant_schedule) -> tuple[StagePath, ...]:
    """Stage sequences of a schedule variant's paths, ordered by microbatch id."""
    ordered = sorted(variant_schedule.paths, key=lambda p: p.microbatch)
    return tuple(tuple(h.stage for h in p.hops) for p in ordered)


# ----------------------------------------------------------------------------------------------
# One iteration.


def train_iteration(
    stages: Sequence[Stage],
    optimizer: torch.optim.Optimizer,
    paths: Sequence[StagePath],
    batches: Iterator[torch.Tensor],
    grad_clip: float,
) -> tuple[float, float]:
    """One iteration: every microbatch along its path, one optimizer step.

    Returns (mean loss in nats over the microbatches, global gradient norm before clipping).
    """
    device = next(stages[0].parameters()).device
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for path in paths:
        loss = forward_path(stages, next(batches).to(device), path)
        (loss / len(paths)).backward()
        total += loss.item()
    norms = [clip_stage(s, grad_clip) for s in stages]
    norm = math.sqrt(sum(n * n for n in norms))
    optimizer.step()
    return total / len(paths), float(norm)


# ----------------------------------------------------------------------------------------------
# The loop.


class MetricsWriter:
    """Appends `{"t": unix s, "node": null, "event": ..., ...}` lines to metrics.jsonl."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, event: str, **fields) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"t": time.time(), "node": None, "event": event, **fields}) + "\n")


def _checkpoint(
    stages,
    run: RunInfo,
    data: TokenData,
    cfg: TrainConfig,
    iteration: int,
    tokens: int,
    metrics: MetricsWriter,
) -> Path:
    info = CheckpointInfo(
        stages[0].cfg,
        len(stages),
        iteration,
        tokens,
        run.variant,
        run.scenario_name,
        run.scenario_hash,
        data.corpus_name,
        keep_in(run.run_dir / CHECKPOINT_DIR, data.tokenizer_path),
        cfg.seed,
        run.loss_at,
    )
    directory = save_checkpoint(stages, run.run_dir / CHECKPOINT_DIR, info)
    metrics.write("checkpoint", iteration=iteration, path=str(directory))
    return directory


def _check_inputs(paths: Sequence[Sequence[int]], n_stages: int, cfg: TrainConfig) -> tuple[StagePath, ...]:
    if cfg.iterations < 1 or cfg.samples_per_microbatch < 1 or cfg.log_every < 1:
        raise SkipPipeError("iterations, samples per microbatch and log interval must be positive")
    if not paths:
        raise SkipPipeError("no microbatch paths to train on")
    return tuple(check_path(p, n_stages) for p in paths)


def _log_progress(stats: IterationStats, cfg: TrainConfig, variant: str) -> None:
    if stats.iteration % cfg.log_every == 0 or stats.iteration == cfg.iterations:
        log.info(
            "[%s] iteration %d/%d loss %.4f grad-norm %.3f lr %.2e %.0f tokens/s",
            variant,
            stats.iteration,
            cfg.iterations,
            stats.loss,
            stats.grad_norm,
            stats.learning_rate,
            stats.tokens_per_s,
        )


def _checkpoint_due(iteration: int, cfg: TrainConfig) -> bool:
    periodic = cfg.checkpoint_every > 0 and iteration % cfg.checkpoint_every == 0
    return periodic or iteration == cfg.iterations


def train(
    model_cfg: ModelConfig,
    n_stages: int,
    paths: Sequence[Sequence[int]],
    data: TokenData,
    cfg: TrainConfig,
    run: RunInfo,
    device: torch.device | str | None = None,
) -> TrainResult:
    """Train from the seeded initial state; every iteration runs all `paths` (one per microbatch)."""
    paths = _check_inputs(paths, n_stages, cfg)
    run.run_dir.mkdir(parents=True, exist_ok=True)
    metrics = MetricsWriter(run.run_dir / METRICS_FILE)
    metrics.write(
        "start",
        variant=run.variant,
        scenario=run.scenario_name,
        paths=paths,
        config=asdict(cfg),
        model=asdict(model_cfg),
        data=data.corpus_name,
    )
    stages = build_stages(model_cfg, n_stages, cfg.seed, device, run.loss_at)
    optimizer = make_optimizer(stages, cfg)
    batches = training_batches(data.train, cfg.samples_per_microbatch, model_cfg.ctx_tokens, cfg.seed)
    per_iteration = len(paths) * cfg.samples_per_microbatch * model_cfg.ctx_tokens  # tokens
    history, checkpoint = [], run.run_dir / CHECKPOINT_DIR
    for it in range(cfg.iterations):
        stats = _timed_iteration(stages, optimizer, paths, batches, cfg, it, per_iteration)
        history.append(stats)
        metrics.write("iteration", **asdict(stats))
        _log_progress(stats, cfg, run.variant)
        if _checkpoint_due(it + 1, cfg):
            checkpoint = _checkpoint(stages, run, data, cfg, it + 1, (it + 1) * per_iteration, metrics)
    total = cfg.iterations * per_iteration
    metrics.write("end", iterations=cfg.iterations, tokens=total)
    return TrainResult(run.run_dir, checkpoint, tuple(history), total, tuple(stages))


def _timed_iteration(
    stages, optimizer, paths, batches, cfg: TrainConfig, it: int, tokens: int
) -> IterationStats:
    lr = learning_rate(it, cfg)
    set_learning_rate(optimizer, lr)
    start = time.perf_counter()
    loss, norm = train_iteration(stages, optimizer, paths, batches, cfg.grad_clip)
    seconds = time.perf_counter() - start
    return IterationStats(it + 1, loss, norm, lr, tokens, seconds, tokens / seconds)


# ----------------------------------------------------------------------------------------------
# Where paths come from.

# the variants whose paths need no search (by their planner, variants.Variant.planner): drawn
# here without a schedule file
LOCAL_PLANNERS = ("full-pipelines", "random-skips")
LOCAL_VARIANTS = tuple(v.name for v in REGISTRY.values() if v.planner in LOCAL_PLANNERS)


def microbatches_per_iteration(scenario: Scenario) -> int:
    """Microbatches of one iteration: every data node (stage 0) sends microbatches_per_node."""
    return scenario.pipeline.stage_sizes[0] * scenario.pipeline.microbatches_per_node


def local_paths(scenario: Scenario, variant: str, seed: int) -> tuple[StagePath, ...]:
    """Paths of `baseline` (full pipelines) or `random` (the planner's random stage sequences,
    drawn from `seed`) without a schedule."""
    n = microbatches_per_iteration(scenario)
    planner = REGISTRY[variant].planner if variant in REGISTRY else None
    if planner == "full-pipelines":
        return baseline_paths(scenario.pipeline.n_stages, n)
    if planner == "random-skips":
        from ..planner.random_paths import random_stage_paths

        return tuple(random_stage_paths(scenario, n, seed))
    raise SkipPipeError(
        f"variant {variant!r} needs a schedule file (without one: {', '.join(LOCAL_VARIANTS)})"
    )


def resolve_paths(
    source: str | Path, variant: str, seed: int | None = None
) -> tuple[Scenario, tuple[StagePath, ...], str]:
    """Scenario, paths and where the loss runs (ops.LOSS_AT) from a settings file (.toml) or a
    schedule file (.json: the variant's own; .toml: the variant's default).

    `seed` draws the `random` variant's paths without a schedule (default: training.seed).
    """
    source = Path(source)
    if source.suffix == ".json":
        from ..schedule_file import load_schedule

        schedule, scenario = load_schedule(source)
        v = schedule.variant(variant)
        return scenario, schedule_paths(v), v.loss_at
    from ..scenario import load_scenario
    from ..variants import default_loss_at

    scenario = load_scenario(source)
    seed = scenario.training.seed if seed is None else seed
    return scenario, local_paths(scenario, variant, seed), default_loss_at(variant)
