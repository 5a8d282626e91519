"""One run of the study: train one variant at one learning rate and seed, score the full model on
the validation split at fixed iterations (the curve that chooses learning rates) and on the test
split at the end (the figure reported), save the weights; and, for the runs the report needs,
score sparse pipelines on the test split (every subset of stages kept, and the trained reordered
path orders against the same stages in sorted order).

A run writes `<results>/runs/<key>.json` (atomically, last) and its weights under
`<work>/<key>/checkpoint/`; its sweep writes `<results>/runs/<key>.sweep.json`. A result whose
`fingerprint` matches the current settings (thread count and device type included: they change
the floating-point sums) is reused by a rerun: the study is resumable.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..scenario import load_scenario
from ..train.checkpoint import CHECKPOINT_META, CheckpointInfo, load_checkpoint, save_checkpoint
from ..train.data import prepare_data, training_batches, validation_batches
from ..train.evaluate import omission_subsets, path_nll
from ..train.local import train_iteration
from ..train.model import build_stages
from ..train.optim import learning_rate, make_optimizer
from ..train.recipe import recipe_config
from ..util.files import write_atomic
from .layerdrop import layerdrop_paths

log = logging.getLogger("skippipe.study")

EVAL_SAMPLES = 16  # windows per scoring batch (batching only: every window is scored)


@dataclass(frozen=True)
class RunSpec:
    """Everything that decides a run's result (its fingerprint)."""

    variant: str
    learning_rate: float
    seed: int
    paths: tuple[tuple[int, ...], ...]  # per microbatch; LayerDrop: the full paths it thins
    keep: float  # LayerDrop's per-stage keep probability; 0: train `paths` as they are
    settings: str  # scenario file: model, stages, weight decay, clipping
    data: str  # corpus source
    iterations: int
    samples_per_microbatch: int
    warmup_iterations: int
    eval_at: tuple[int, ...]  # iterations after which the full model is scored on validation
    threads: int
    device: str  # "cpu" or "cuda"
    max_eval_windows: int | None = None  # None: every window of a split (smoke tests: fewer)

    @property
    def key(self) -> str:
        return f"{self.variant}-lr{self.learning_rate:g}-seed{self.seed}"

    def fingerprint(self) -> dict:
        """What must match for a stored result to be reused: the scenario by its content, not
        its path, so a fresh clone elsewhere resumes the same study."""
        out = asdict(self)
        out["settings"] = settings_digest(self.settings)
        return out

    def paths_at(self, iteration: int) -> tuple[tuple[int, ...], ...]:
        if not self.keep:
            return self.paths
        n_stages = max(max(p) for p in self.paths) + 1
        return layerdrop_paths(len(self.paths), n_stages, self.keep, self.seed, iteration)


def settings_digest(path: str) -> str:
    return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def result_path(results: Path, key: str, suffix: str = "") -> Path:
    return results / "runs" / f"{key}{suffix}.json"


def load_result(path: Path, fingerprint: dict | None) -> dict | None:
    """The stored result when it exists and, unless `fingerprint` is None, was made with the same
    settings; else None."""
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if fingerprint is None or stored.get("fingerprint") == json.loads(json.dumps(fingerprint)):
        return stored
    return None


def write_result(path: Path, payload: dict) -> dict:
    """Write through a temporary file and a rename (a killed run leaves no half result);
    returns the payload as a rerun will read it back. One line per file keeps the committed
    results small."""
    text = json.dumps(payload)
    write_atomic(path, (text + "\n").encode())
    return json.loads(text)


def _setup(threads: int) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    torch.set_num_threads(threads)


def split_batches(tokens, spec: RunSpec, ctx_tokens: int) -> list[torch.Tensor]:
    """The windows of a split the study scores: all of them, or the first max_eval_windows."""
    n = spec.max_eval_windows
    return validation_batches(tokens, EVAL_SAMPLES, ctx_tokens, None if n is None else -(-n // EVAL_SAMPLES))


def full_nll(stages, batches) -> tuple[float, int]:
    return path_nll(stages, batches, tuple(range(len(stages))))


def _train_loop(spec: RunSpec, cfg, stages, batches, valid) -> tuple[list[dict], float]:
    """The iterations: (validation curve with the mean train loss since the previous point,
    CPU seconds of training)."""
    optimizer = make_optimizer(stages, cfg)
    curve, losses, train_cpu = [], [], 0.0
    for it in range(spec.iterations):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(it, cfg)
        cpu = time.process_time()
        loss, _ = train_iteration(stages, optimizer, spec.paths_at(it), batches, cfg.grad_clip)
        train_cpu += time.process_time() - cpu
        losses.append(loss)
        if it + 1 in spec.eval_at:
            nll, tokens = full_nll(stages, valid)
            curve.append(
                {
                    "iteration": it + 1,
                    "mean_nll": nll / tokens,
                    "tokens": tokens,
                    "train_loss": sum(losses) / len(losses),
                }
            )
            losses = []
            log.info(
                "[%s] iteration %d/%d train loss %.3f validation ppl %.2f",
                spec.key,
                it + 1,
                spec.iterations,
                loss,
                math.exp(nll / tokens),
            )
    return curve, train_cpu


def train_run(spec: RunSpec, results: Path, work: Path, reuse: bool = True) -> dict:
    """Train one model, scoring the full model on validation at `spec.eval_at` and on test at
    the end; returns the stored result (reused when `reuse` and it matches the settings)."""
    _setup(spec.threads)
    path = result_path(results, spec.key)
    done = load_result(path, spec.fingerprint()) if reuse else None
    if done is not None:
        return done
    start = time.perf_counter()
    scenario = load_scenario(spec.settings)
    ctx = scenario.model.ctx_tokens
    data = prepare_data(spec.data, scenario.model.vocab_size, test_split=True)
    cfg = recipe_config(
        scenario,
        iterations=spec.iterations,
        learning_rate=spec.learning_rate,
        seed=spec.seed,
        samples_per_microbatch=spec.samples_per_microbatch,
        warmup_iterations=spec.warmup_iterations,
    )
    stages = build_stages(scenario.model, scenario.pipeline.n_stages, spec.seed, spec.device)
    batches = training_batches(data.train, cfg.samples_per_microbatch, ctx, spec.seed)
    valid = split_batches(data.validation, spec, ctx)
    curve, train_cpu = _train_loop(spec, cfg, stages, batches, valid)
    test_nll, test_tokens = full_nll(stages, split_batches(data.test, spec, ctx))
    per_iteration = len(spec.paths) * spec.samples_per_microbatch * ctx
    info = CheckpointInfo(
        scenario.model,
        scenario.pipeline.n_stages,
        spec.iterations,
        spec.iterations * per_iteration,
        spec.variant,
        scenario.name,
        scenario.content_hash,
        data.corpus_name,
        str(data.tokenizer_path),
        spec.seed,
    )
    save_checkpoint(stages, work / spec.key / "checkpoint", info)
    return write_result(
        path,
        {
            "fingerprint": spec.fingerprint(),
            "key": spec.key,
            "variant": spec.variant,
            "learning_rate": spec.learning_rate,
            "seed": spec.seed,
            "curve": curve,
            "test": {"mean_nll": test_nll / test_tokens, "tokens": test_tokens},
            "train_cpu_s": train_cpu,
            "wall_s": time.perf_counter() - start,
            "tokens_per_iteration": per_iteration,
            "corpus": data.corpus_name,
            "corpus_hash": data.corpus_hash,
        },
    )


def sweep_run(spec: RunSpec, results: Path, work: Path, reordered: tuple[tuple[int, ...], ...]) -> dict:
    """Score the trained run on the test split along every kept-stage subset (sorted order) and
    along each reordered path in `reordered` (its sorted twin is one of the subsets)."""
    _setup(spec.threads)
    path = result_path(results, spec.key, ".sweep")
    fingerprint = {**spec.fingerprint(), "reordered": reordered}
    done = load_result(path, fingerprint)
    if done is not None:
        return done
    checkpoint = work / spec.key / "checkpoint"
    if not (checkpoint / CHECKPOINT_META).exists():
        # results are committed, weights are not: a fresh clone trains the run again (seeded)
        log.info("[%s] no weights under %s; training the run again to score its paths", spec.key, checkpoint)
        train_run(spec, results, work, reuse=False)
    info, stages = load_checkpoint(checkpoint, spec.device)
    data = prepare_data(spec.data, info.model.vocab_size, info.tokenizer_path, test_split=True)
    test = split_batches(data.test, spec, info.model.ctx_tokens)
    n = info.n_stages
    rows = []
    for omitted in omission_subsets(n, spec.seed):
        rows.append(_score(stages, test, tuple(s for s in range(n) if s not in omitted)))
    for order in reordered:
        rows.append(_score(stages, test, order))
    return write_result(path, {"fingerprint": fingerprint, "key": spec.key, "paths": rows})


def _score(stages, batches, order: tuple[int, ...]) -> dict:
    nll, tokens = path_nll(stages, batches, order)
    return {"path": list(order), "mean_nll": nll / tokens, "tokens": tokens}
