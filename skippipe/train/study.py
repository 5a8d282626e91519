"""The convergence study's two commands.

`train` (`run_study`): train in one process from a settings file (baseline or random paths) or a
schedule file (any variant's paths), with a validation perplexity at the end; the loop itself
is local.py's `train`. `evaluate` (`evaluate_checkpoint`): perplexity of a checkpoint, full,
with given stages omitted, or swept over the omitted subsets (evaluate.py), written as JSON and
a PNG."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..util.devices import resolve_device
from ..util.rundir import new_run_dir, resolve_in
from .checkpoint import CHECKPOINT_META, load_checkpoint
from .data import prepare_data, validation_batches
from .evaluate import (
    Perplexity,
    omission_subsets,
    parse_stage_list,
    perplexity,
    plot_sweep,
    summarize,
    sweep,
    sweep_table,
)
from .local import CHECKPOINT_DIR, METRICS_FILE, MetricsWriter, RunInfo, resolve_paths, train
from .recipe import EVAL_SAMPLES, recipe_config

RESULTS_FILE = "perplexity.json"
PLOT_FILE = "perplexity-vs-omitted.png"


@dataclass(frozen=True)
class StudyOptions:
    """The train command's options (commands/train.py documents each); None: the scenario's."""

    source: str  # settings (.toml) or schedule (.json) file
    variant: str
    log_every: int
    warmup: int | None  # None: the recipe's share of the iterations
    cosine: bool
    checkpoint_every: int
    eval_batches: int | None  # validation batches scored at the end; None: all, 0: none
    iterations: int | None = None
    lr: float | None = None
    seed: int | None = None
    data: str | None = None
    tokenizer: str | None = None
    out: str | None = None
    device: str | None = None
    threads: int | None = None


def run_study(opts: StudyOptions, say=print) -> int:
    """Train along the variant's paths, score the validation set, say where it all went."""
    if opts.threads:
        torch.set_num_threads(opts.threads)
    scenario, paths, loss_at = resolve_paths(opts.source, opts.variant, opts.seed)
    cfg = recipe_config(
        scenario,
        iterations=opts.iterations,
        learning_rate=opts.lr,
        seed=opts.seed,
        warmup_iterations=opts.warmup,
        cosine_decay=opts.cosine,
        log_every=opts.log_every,
        checkpoint_every=opts.checkpoint_every,
    )
    data = prepare_data(opts.data, scenario.model.vocab_size, opts.tokenizer)
    run_dir = Path(opts.out) if opts.out else new_run_dir(f"{scenario.name}-{opts.variant}")
    device = resolve_device(opts.device)
    result = train(
        scenario.model,
        scenario.pipeline.n_stages,
        paths,
        data,
        cfg,
        RunInfo(run_dir, opts.variant, scenario.name, scenario.content_hash, loss_at),
        device,
    )
    say(
        f"{scenario.name} {opts.variant}: {cfg.iterations} iterations, {len(paths)} microbatches "
        f"each, {result.tokens_seen} tokens, final train loss {result.history[-1].loss:.4f}"
    )
    if opts.eval_batches != 0:
        batches = validation_batches(
            data.validation, EVAL_SAMPLES, scenario.model.ctx_tokens, opts.eval_batches
        )
        ppl = perplexity(result.stages, batches)
        MetricsWriter(result.run_dir / METRICS_FILE).write(
            "validation", omitted=[], tokens=ppl.tokens, mean_nll=ppl.mean_nll, perplexity=ppl.perplexity
        )
        say(f"validation perplexity (full model, {ppl.tokens} tokens): {ppl.perplexity:.3f}")
    say(f"run directory: {result.run_dir}  checkpoint: {result.checkpoint_dir}")
    return 0


@dataclass(frozen=True)
class EvalOptions:
    """The evaluate command's options (commands/evaluate.py documents each)."""

    checkpoint: str  # checkpoint directory, or the run directory holding checkpoint/
    max_batches: int
    samples: int
    seed: int
    sweep: bool = False
    omit_stages: str | None = None  # "2,4"
    data: str | None = None
    tokenizer: str | None = None
    out: str | None = None
    device: str | None = None
    threads: int | None = None


def evaluate_checkpoint(opts: EvalOptions, say=print) -> int:
    """Full-model perplexity, then with `omit_stages` left out, then the sweep; JSON (+ PNG)."""
    if opts.threads:
        torch.set_num_threads(opts.threads)
    directory = _checkpoint_dir(opts.checkpoint)
    info, stages = load_checkpoint(directory, resolve_device(opts.device))
    omitted = parse_stage_list(opts.omit_stages, info.n_stages) if opts.omit_stages else None
    say(f"checkpoint {directory} ({info.variant}, {info.n_stages} stages, iteration {info.iteration})")
    data = prepare_data(
        opts.data or info.data_source,
        info.model.vocab_size,
        opts.tokenizer or resolve_in(directory, info.tokenizer_path),
    )
    batches = validation_batches(data.validation, opts.samples, info.model.ctx_tokens, opts.max_batches)
    say(f"full model: scoring {len(batches)} validation batches of {opts.samples} sequences ...")
    results = [perplexity(stages, batches, progress=say)]
    say(f"full model: perplexity {results[0].perplexity:.3f} over {results[0].tokens} tokens")
    if omitted is not None:
        r = perplexity(stages, batches, omitted, progress=say)
        results.append(r)
        say(f"stages {','.join(map(str, r.omitted))} omitted: perplexity {r.perplexity:.3f}")
    out = Path(opts.out) if opts.out else directory.parent / "eval"
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "checkpoint": str(directory),
        "variant": info.variant,
        "iteration": info.iteration,
        "results": [_result_row(r) for r in results],
    }
    if opts.sweep:
        subsets = omission_subsets(info.n_stages, opts.seed)
        say(f"sweep: scoring {len(subsets)} subsets of omitted stages")
        swept = sweep(stages, batches, subsets, progress=say)
        say(sweep_table(summarize(swept)))
        png = plot_sweep(
            {info.variant: swept},
            out / PLOT_FILE,
            title=f"{info.scenario_name} ({info.variant}): perplexity vs stages omitted",
        )
        report["sweep"] = [_result_row(r) for r in swept]
        say(f"plot: {png}")
    (out / RESULTS_FILE).write_text(json.dumps(report, indent=2) + "\n")
    say(f"results: {out / RESULTS_FILE}")
    return 0


def _checkpoint_dir(path: str) -> Path:
    p = Path(path)
    return p / CHECKPOINT_DIR if (p / CHECKPOINT_DIR / CHECKPOINT_META).is_file() else p


def _result_row(r: Perplexity) -> dict:
    return {
        "omitted": list(r.omitted),
        "fraction": r.fraction,
        "tokens": r.tokens,
        "mean_nll": r.mean_nll,
        "perplexity": r.perplexity,
    }
