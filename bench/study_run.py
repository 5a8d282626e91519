"""One run of the sparse-pipeline study: train one variant at one learning rate and seed, score
the full model on every validation token at fixed iterations, save the weights; and, for the runs
the report needs, the evaluation of sparse pipelines (every subset of stages kept, and the
trained reordered path orders against the same stages in sorted order).

A run writes `<out>/runs/<key>.json` (atomically, last) and `<out>/runs/<key>/checkpoint/`;
its sweep writes `<out>/runs/<key>.sweep.json`. A file whose `fingerprint` matches the current
settings is reused by a rerun: the study is resumable.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from skippipe.train.recipe import recipe_config
from skippipe.scenario import load_scenario
from skippipe.train.data import prepare_data, training_batches, validation_batches
from skippipe.train.evaluate import omission_subsets, path_nll
from skippipe.train.local import train_iteration
from skippipe.train.optim import learning_rate, make_optimizer
from skippipe.train.model import CheckpointInfo, build_stages, load_checkpoint, save_checkpoint

log = logging.getLogger("bench.study")

EVAL_SAMPLES = 16  # validation windows per batch (batching only: every window is scored)


@dataclass(frozen=True)
class RunSpec:
    """Everything that decides a run's result (its fingerprint) plus where to write it."""
    variant: str
    learning_rate: float
    seed: int
    paths: tuple[tuple[int, ...], ...]
    settings: str  # scenario file: model, stages, weight decay, clipping
    data: str  # corpus source
    iterations: int
    samples_per_microbatch: int
    warmup_iterations: int
    eval_at: tuple[int, ...]  # iterations after which the full model is scored
    threads: int
    max_eval_windows: int | None = None  # None: every validation window (smoke tests: fewer)

    @property
    def key(self) -> str:
        return f"{self.variant}-lr{self.learning_rate:g}-seed{self.seed}"

    def fingerprint(self) -> dict:
        """What must match for a stored result to be reused: the scenario by its content, not
        its path, so a fresh clone elsewhere resumes the same study."""
        out = {k: v for k, v in asdict(self).items() if k != "threads"}
        out["settings"] = settings_digest(self.settings)
        return out


def settings_digest(path: str) -> str:
    return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def result_path(out: Path, key: str, suffix: str = "") -> Path:
    return out / "runs" / f"{key}{suffix}.json"


def load_result(path: Path, fingerprint: dict) -> dict | None:
    """The stored result when it exists and was made with the same settings, else None."""
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return stored if stored.get("fingerprint") == json.loads(json.dumps(fingerprint)) else None


def write_result(path: Path, payload: dict) -> dict:
    """Write through a temporary file and a rename (a killed run leaves no half result);
    returns the payload as a rerun will read it back."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    text = json.dumps(payload, indent=1)
    tmp.write_text(text + "\n")
    os.replace(tmp, path)
    return json.loads(text)


def _setup(threads: int) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    torch.set_num_threads(threads)


def _config(spec: RunSpec, scenario):
    return recipe_config(scenario, iterations=spec.iterations, learning_rate=spec.learning_rate,
                         seed=spec.seed, samples_per_microbatch=spec.samples_per_microbatch,
                         warmup_iterations=spec.warmup_iterations)


def validation(data, spec: RunSpec, ctx_tokens: int) -> list[torch.Tensor]:
    """The validation windows the study scores: all of them, or the first max_eval_windows."""
    n = spec.max_eval_windows
    return validation_batches(data.validation, EVAL_SAMPLES, ctx_tokens,
                              None if n is None else -(-n // EVAL_SAMPLES))


def full_nll(stages, batches) -> tuple[float, int]:
    return path_nll(stages, batches, tuple(range(len(stages))))


def _train_loop(spec: RunSpec, cfg, stages, batches, valid) -> tuple[list[dict], list[float], float]:
    """The iterations: (full-model validation curve, train losses, CPU seconds of training)."""
    optimizer = make_optimizer(stages, cfg)
    curve, losses, train_cpu = [], [], 0.0
    for it in range(spec.iterations):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(it, cfg)
        cpu = time.process_time()
        loss, _ = train_iteration(stages, optimizer, spec.paths, batches, cfg.grad_clip)
        train_cpu += time.process_time() - cpu
        losses.append(loss)
        if it + 1 in spec.eval_at:
            nll, tokens = full_nll(stages, valid)
            curve.append({"iteration": it + 1, "mean_nll": nll / tokens, "tokens": tokens})
            log.info("[%s] iteration %d/%d train loss %.3f validation ppl %.2f", spec.key, it + 1,
                     spec.iterations, loss, math.exp(nll / tokens))
    return curve, losses, train_cpu


def train_run(spec: RunSpec, out: Path) -> dict:
    """Train one model on the CPU (the study's budget is sized for it), scoring the full model at
    `spec.eval_at`; returns the stored result."""
    _setup(spec.threads)
    path = result_path(out, spec.key)
    done = load_result(path, spec.fingerprint())
    if done is not None:
        return done
    start = time.perf_counter()
    scenario = load_scenario(spec.settings)
    ctx = scenario.model.ctx_tokens
    data = prepare_data(spec.data, scenario.model.vocab_size)
    cfg = _config(spec, scenario)
    stages = build_stages(scenario.model, scenario.pipeline.n_stages, spec.seed, "cpu")
    batches = training_batches(data.train, cfg.samples_per_microbatch, ctx, spec.seed)
    curve, losses, train_cpu = _train_loop(spec, cfg, stages, batches, validation(data, spec, ctx))
    per_iteration = _tokens_per_iteration(spec, scenario)
    info = CheckpointInfo(scenario.model, scenario.pipeline.n_stages, spec.iterations,
                          spec.iterations * per_iteration, spec.variant, scenario.name,
                          scenario.content_hash, data.corpus_name, str(data.tokenizer_path),
                          spec.seed)
    save_checkpoint(stages, out / "runs" / spec.key / "checkpoint", info)
    return write_result(path, {
        "fingerprint": spec.fingerprint(), "key": spec.key, "variant": spec.variant,
        "learning_rate": spec.learning_rate, "seed": spec.seed, "curve": curve,
        "train_loss": losses, "train_cpu_s": train_cpu, "wall_s": time.perf_counter() - start,
        "tokens_per_iteration": per_iteration, "corpus": data.corpus_name,
        "corpus_hash": data.corpus_hash})


def _tokens_per_iteration(spec: RunSpec, scenario) -> int:
    return len(spec.paths) * spec.samples_per_microbatch * scenario.model.ctx_tokens


def sweep_run(spec: RunSpec, out: Path, reordered: tuple[tuple[int, ...], ...]) -> dict:
    """Score the trained run along every kept-stage subset (sorted order) and along each
    reordered path in `reordered` (its sorted twin is one of the subsets)."""
    _setup(spec.threads)
    path = result_path(out, spec.key, ".sweep")
    fingerprint = {**spec.fingerprint(), "reordered": reordered}
    done = load_result(path, fingerprint)
    if done is not None:
        return done
    info, stages = load_checkpoint(out / "runs" / spec.key / "checkpoint", "cpu")
    data = prepare_data(spec.data, info.model.vocab_size, info.tokenizer_path)
    valid = validation(data, spec, info.model.ctx_tokens)
    n = info.n_stages
    rows = []
    for omitted in omission_subsets(n, spec.seed):
        order = tuple(s for s in range(n) if s not in omitted)
        rows.append(_score(stages, valid, order))
    for order in reordered:
        rows.append(_score(stages, valid, order))
    return write_result(path, {"fingerprint": fingerprint, "key": spec.key, "paths": rows})


def _score(stages, valid, order: tuple[int, ...]) -> dict:
    nll, tokens = path_nll(stages, valid, order)
    return {"path": list(order), "mean_nll": nll / tokens, "tokens": tokens}
