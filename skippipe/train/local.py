"""Path training in one process: the convergence study of partial and reordered pipelines.

Every microbatch of an iteration runs the stages of its path in path order (stage 0 embeds and
runs its layers, then each later stage of the path runs its layers, then stage 0 applies the
final norm, LM head and loss). Losses are averaged over the iteration's microbatches, gradients
accumulate over all of them, each stage's gradient norm is clipped to `grad_clip` (as the
distributed runtime does: stages clip without a global barrier), and AdamW takes
exactly one step per iteration. Parameters of a stage no microbatch visited get no gradient and
are left untouched by that step.

Paths (tuples of stage ids, stage 0 first) come from:
- `baseline_paths(n_stages, n_microbatches)`: every stage in order;
- `balanced_skip_paths(scenario, n_microbatches, seed)`: network-blind random skip paths of
  length k that obey the schedule rules (CC1-CC3 and TC1's even visits);
- `schedule_paths(variant_schedule)`: the paths of one variant of a planner schedule.

`train(model_cfg, n_stages, paths, data, cfg, run)` runs the loop, logs progress, writes
`metrics.jsonl` (one JSON event a line) and per-stage checkpoints under `run.run_dir`.
"""
from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from .data import TokenData, training_batches
from ..errors import SkipPipeError
from .model import CheckpointInfo, Stage, build_stages, check_path, forward_path, save_checkpoint
from ..scenario import ModelConfig, Scenario

log = logging.getLogger(__name__)

StagePath = tuple[int, ...]  # stage ids of one microbatch's path, stage 0 first
SWAP_PROBABILITY = 0.5  # random variant: chance that an eligible adjacent pair is swapped
PATH_ATTEMPTS = 100  # random variant: re-draws allowed before giving up on a CC3-valid plan
MIN_LR_FRACTION = 0.1  # cosine decay ends at this fraction of the peak learning rate
ADAMW_BETAS = (0.9, 0.95)  # AdamW moment decay rates (LLaMA's)
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoint"


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
        base = cls(t.iterations, scenario.pipeline.samples_per_microbatch, t.learning_rate,
                   t.weight_decay, t.grad_clip, t.seed)
        return replace(base, **{k: v for k, v in overrides.items() if v is not None})


@dataclass(frozen=True)
class RunInfo:
    run_dir: Path
    variant: str
    scenario_name: str
    scenario_hash: str


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


def _visit_quotas(n_stages: int, visits: int, rng: random.Random) -> dict[int, int]:
    """Split `visits` over stages 1..S-1 as evenly as possible (the remainder at random)."""
    others = list(range(1, n_stages))
    base, extra = divmod(visits, len(others))
    lucky = set(rng.sample(others, extra))
    return {s: base + (s in lucky) for s in others}


def _pick_stages(quota: dict[int, int], count: int, rng: random.Random) -> list[int]:
    """The `count` stages with the most visits left (random tie-break); decrements them."""
    ranked = sorted(quota, key=lambda s: (-quota[s], rng.random()))
    chosen = ranked[:count]
    for s in chosen:
        quota[s] -= 1
    return sorted(chosen)


def _random_swaps(stages: list[int], max_swaps: int, rng: random.Random) -> list[int]:
    """Swap some adjacent pairs of consecutive stage numbers (non-overlapping, <= max_swaps)."""
    out, i, swaps = list(stages), 0, 0
    while i + 1 < len(out) and swaps < max_swaps:
        if out[i + 1] == out[i] + 1 and rng.random() < SWAP_PROBABILITY:
            out[i], out[i + 1] = out[i + 1], out[i]
            swaps += 1
            i += 2
        else:
            i += 1
    return out


def _skip_plan(scenario: Scenario, n_microbatches: int, rng: random.Random) -> list[StagePath] | None:
    """One draw of skip paths; None when a path breaks CC3 even without swaps."""
    from ..schedule import cc3_problem

    p = scenario.pipeline
    quota = _visit_quotas(p.n_stages, n_microbatches * (p.path_length - 1), rng)
    paths = []
    for _ in range(n_microbatches):
        plain = [0, *_pick_stages(quota, p.path_length - 1, rng)]
        if cc3_problem(tuple(plain), scenario) is not None:
            return None
        swapped = [0, *_random_swaps(plain[1:], p.max_swaps, rng)]
        paths.append(tuple(swapped if cc3_problem(tuple(swapped), scenario) is None else plain))
    return paths


def balanced_skip_paths(scenario: Scenario, n_microbatches: int, seed: int) -> tuple[StagePath, ...]:
    """Seeded network-blind skip paths of length k = pipeline.path_length.

    Each path is stage 0 then k-1 distinct other stages in increasing order, with some adjacent
    pairs of consecutive stages swapped (CC3); the other stages are visited equally often (each
    floor or ceil of n_microbatches*(k-1)/(S-1), TC1).
    """
    rng = random.Random(seed)
    for _ in range(PATH_ATTEMPTS):
        plan = _skip_plan(scenario, n_microbatches, rng)
        if plan is not None:
            return tuple(plan)
    raise SkipPipeError(f"{scenario.name}: no CC3-valid skip paths of length "
                        f"{scenario.pipeline.path_length} found in {PATH_ATTEMPTS} draws")


# ----------------------------------------------------------------------------------------------
# Optimisation.

def make_optimizer(stages: Sequence[Stage], cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over every stage; weight decay on matrices only (not on norm gains)."""
    params = [p for s in stages for p in s.parameters()]
    decay = [p for p in params if p.dim() >= 2]
    keep = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": keep, "weight_decay": 0.0}]
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


def clip_stage(stage: torch.nn.Module, grad_clip: float) -> float:
    """Clip one stage's gradient norm to `grad_clip` (0: no clipping); returns the norm before."""
    params = [p for p in stage.parameters() if p.grad is not None]
    if not params:
        return 0.0
    return float(torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else math.inf))


def train_iteration(stages: Sequence[Stage], optimizer: torch.optim.Optimizer,
                    paths: Sequence[StagePath], batches: Iterator[torch.Tensor],
                    grad_clip: float) -> tuple[float, float]:
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


def _checkpoint(stages, run: RunInfo, data: TokenData, cfg: TrainConfig, iteration: int,
                tokens: int, metrics: MetricsWriter) -> Path:
    info = CheckpointInfo(stages[0].cfg, len(stages), iteration, tokens, run.variant,
                          run.scenario_name, run.scenario_hash, data.corpus_name,
                          str(data.tokenizer_path), cfg.seed)
    directory = save_checkpoint(stages, run.run_dir / CHECKPOINT_DIR, info)
    metrics.write("checkpoint", iteration=iteration, path=str(directory))
    return directory


def _check_inputs(paths: Sequence[Sequence[int]], n_stages: int,
                  cfg: TrainConfig) -> tuple[StagePath, ...]:
    if cfg.iterations < 1 or cfg.samples_per_microbatch < 1 or cfg.log_every < 1:
        raise SkipPipeError("iterations, samples per microbatch and log interval must be positive")
    if not paths:
        raise SkipPipeError("no microbatch paths to train on")
    return tuple(check_path(p, n_stages) for p in paths)


def _log_progress(stats: IterationStats, cfg: TrainConfig, variant: str) -> None:
    if stats.iteration % cfg.log_every == 0 or stats.iteration == cfg.iterations:
        log.info("[%s] iteration %d/%d loss %.4f grad-norm %.3f lr %.2e %.0f tokens/s", variant,
                 stats.iteration, cfg.iterations, stats.loss, stats.grad_norm,
                 stats.learning_rate, stats.tokens_per_s)


def _checkpoint_due(iteration: int, cfg: TrainConfig) -> bool:
    periodic = cfg.checkpoint_every > 0 and iteration % cfg.checkpoint_every == 0
    return periodic or iteration == cfg.iterations


def train(model_cfg: ModelConfig, n_stages: int, paths: Sequence[Sequence[int]], data: TokenData,
          cfg: TrainConfig, run: RunInfo, device: torch.device | str | None = None) -> TrainResult:
    """Train from the seeded initial state; every iteration runs all `paths` (one per microbatch)."""
    paths = _check_inputs(paths, n_stages, cfg)
    run.run_dir.mkdir(parents=True, exist_ok=True)
    metrics = MetricsWriter(run.run_dir / METRICS_FILE)
    metrics.write("start", variant=run.variant, scenario=run.scenario_name, paths=paths,
                  config=asdict(cfg), model=asdict(model_cfg), data=data.corpus_name)
    stages = build_stages(model_cfg, n_stages, cfg.seed, device)
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


def _timed_iteration(stages, optimizer, paths, batches, cfg: TrainConfig, it: int,
                     tokens: int) -> IterationStats:
    lr = learning_rate(it, cfg)
    for group in optimizer.param_groups:
        group["lr"] = lr
    start = time.perf_counter()
    loss, norm = train_iteration(stages, optimizer, paths, batches, cfg.grad_clip)
    seconds = time.perf_counter() - start
    return IterationStats(it + 1, loss, norm, lr, tokens, seconds, tokens / seconds)


# ----------------------------------------------------------------------------------------------
# Where paths and run directories come from.

RUNS_DIR = Path(__file__).resolve().parents[2] / "runs"  # default parent of run directories
LOCAL_VARIANTS = ("baseline", "random")  # variants available without a schedule file


def microbatches_per_iteration(scenario: Scenario) -> int:
    """Microbatches of one iteration: every data node (stage 0) sends microbatches_per_node."""
    return scenario.pipeline.stage_sizes[0] * scenario.pipeline.microbatches_per_node


def local_paths(scenario: Scenario, variant: str, seed: int) -> tuple[StagePath, ...]:
    """Paths of `baseline` (full pipelines) or `random` (balanced_skip_paths) without a schedule."""
    n = microbatches_per_iteration(scenario)
    if variant == "baseline":
        return baseline_paths(scenario.pipeline.n_stages, n)
    if variant == "random":
        return balanced_skip_paths(scenario, n, seed)
    raise SkipPipeError(f"variant {variant!r} needs a schedule file (without one: "
                        f"{', '.join(LOCAL_VARIANTS)})")


def resolve_paths(source: str | Path, variant: str,
                  seed: int | None = None) -> tuple[Scenario, tuple[StagePath, ...]]:
    """Scenario and paths from a settings file (.toml) or a schedule file (.json).

    `seed` draws the `random` variant's paths without a schedule (default: training.seed).
    """
    source = Path(source)
    if source.suffix == ".json":
        from ..schedule import load_schedule

        schedule, scenario = load_schedule(source)
        return scenario, schedule_paths(schedule.variant(variant))
    from ..scenario import load_scenario

    scenario = load_scenario(source)
    return scenario, local_paths(scenario, variant, scenario.training.seed if seed is None else seed)


def new_run_dir(name: str, parent: Path = RUNS_DIR) -> Path:
    """A fresh `runs/<name>-<YYYYmmdd-HHMMSS>[-n]` directory (created)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(PATH_ATTEMPTS):
        path = parent / (f"{name}-{stamp}" + (f"-{n}" if n else ""))
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
    raise SkipPipeError(f"cannot create a fresh run directory for {name} under {parent}")
