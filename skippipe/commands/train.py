"""Train the model in one process along the microbatch paths of a variant (convergence study)."""
from __future__ import annotations

import argparse
from pathlib import Path

HELP = "train in one process: each microbatch runs the stages of its path, in path order"
EVAL_SAMPLES = 8  # sequences per validation batch
WARMUP_FRACTION = 0.05  # the recipe's linear warm-up: this share of the iterations


def recipe_config(scenario, **overrides):
    """The training recipe of this command and of the sparse-pipeline study (bench/study.py):
    the scenario's settings, linear warm-up over WARMUP_FRACTION of the iterations, then cosine
    decay; `overrides` (None values ignored) replace any TrainConfig field."""
    from dataclasses import replace

    from ..train.local import TrainConfig

    given = {k: v for k, v in overrides.items() if v is not None}
    cfg = TrainConfig.from_scenario(scenario, **{"cosine_decay": True, **given})
    if "warmup_iterations" not in given:
        cfg = replace(cfg, warmup_iterations=round(WARMUP_FRACTION * cfg.iterations))
    return cfg


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="settings file (.toml) or schedule file (.json)")
    p.add_argument("--variant", default="baseline",
                   help="baseline | random (no schedule needed) | any variant of the schedule")
    p.add_argument("--iterations", type=int,
                   help="optimizer steps (default: scenario training.iterations)")
    p.add_argument("--lr", type=float, help="peak learning rate (default: scenario)")
    p.add_argument("--seed", type=int, help="model/data/path seed (default: scenario training.seed)")
    p.add_argument("--warmup", type=int, help="linear warm-up iterations (default: "
                   f"{WARMUP_FRACTION:.0%} of the iterations)")
    p.add_argument("--cosine", action=argparse.BooleanOptionalAction, default=True,
                   help="cosine learning-rate decay to the end (default: on)")
    p.add_argument("--data", help="web (World English Bible, the default), builtin (standard-"
                                  "library docstrings), a text file or directory of .txt files, "
                                  "or hf:NAME")
    p.add_argument("--tokenizer", help="SentencePiece .model to use instead of training one")
    p.add_argument("--out", help="run directory (default: runs/<scenario>-<variant>-<time>)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--log-every", type=int, default=10, help="iterations between progress lines")
    p.add_argument("--checkpoint-every", type=int, default=0,
                   help="iterations between checkpoints (default: only at the end)")
    p.add_argument("--eval-batches", type=int,
                   help=f"validation batches of {EVAL_SAMPLES} sequences scored at the end "
                        "(default: every validation token; 0: none)")


def _positive(name: str, value: int | None, zero_ok: bool = False) -> None:
    from ..errors import SkipPipeError

    if value is not None and (value < 0 or (value == 0 and not zero_ok)):
        raise SkipPipeError(f"{name} must be {'non-negative' if zero_ok else 'positive'}, got {value}")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..train.data import prepare_data, validation_batches
    from ..train.evaluate import perplexity
    from ..train.model import resolve_device
    from ..train.local import METRICS_FILE, MetricsWriter, RunInfo, new_run_dir, resolve_paths, train

    for name in ("iterations", "log_every", "threads"):
        _positive(f"--{name.replace('_', '-')}", getattr(args, name))
    for name in ("warmup", "checkpoint_every", "eval_batches"):
        _positive(f"--{name.replace('_', '-')}", getattr(args, name), zero_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    scenario, paths = resolve_paths(args.source, args.variant, args.seed)
    cfg = recipe_config(scenario, iterations=args.iterations, learning_rate=args.lr,
                        seed=args.seed, warmup_iterations=args.warmup, cosine_decay=args.cosine,
                        log_every=args.log_every, checkpoint_every=args.checkpoint_every)
    data = prepare_data(args.data, scenario.model.vocab_size, args.tokenizer)
    run_dir = Path(args.out) if args.out else new_run_dir(f"{scenario.name}-{args.variant}")
    device = resolve_device(args.device)
    result = train(scenario.model, scenario.pipeline.n_stages, paths, data, cfg,
                   RunInfo(run_dir, args.variant, scenario.name, scenario.content_hash), device)
    last = result.history[-1]
    print(f"{scenario.name} {args.variant}: {cfg.iterations} iterations, {len(paths)} microbatches "
          f"each, {result.tokens_seen} tokens, final train loss {last.loss:.4f}")
    if args.eval_batches != 0:
        batches = validation_batches(data.validation, EVAL_SAMPLES, scenario.model.ctx_tokens,
                                     args.eval_batches)
        ppl = perplexity(result.stages, batches)
        MetricsWriter(result.run_dir / METRICS_FILE).write(
            "validation", omitted=[], tokens=ppl.tokens, mean_nll=ppl.mean_nll,
            perplexity=ppl.perplexity)
        print(f"validation perplexity (full model, {ppl.tokens} tokens): {ppl.perplexity:.3f}")
    print(f"run directory: {result.run_dir}  checkpoint: {result.checkpoint_dir}")
    return 0
