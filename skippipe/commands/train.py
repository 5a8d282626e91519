"""Train the model in one process along the microbatch paths of a variant (convergence study)."""
from __future__ import annotations

import argparse
from pathlib import Path

HELP = "train in one process: each microbatch runs the stages of its path, in path order"
DEFAULT_EVAL_BATCHES = 16  # validation batches scored after training (0: skip)
EVAL_SAMPLES = 8  # sequences per validation batch


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="settings file (.toml) or schedule file (.json)")
    p.add_argument("--variant", default="baseline",
                   help="baseline | random (no schedule needed) | any variant of the schedule")
    p.add_argument("--iterations", type=int,
                   help="optimizer steps (default: scenario training.iterations)")
    p.add_argument("--lr", type=float, help="peak learning rate (default: scenario)")
    p.add_argument("--seed", type=int, help="model/data/path seed (default: scenario training.seed)")
    p.add_argument("--warmup", type=int, default=0, help="linear warm-up iterations")
    p.add_argument("--cosine", action="store_true", help="cosine learning-rate decay to the end")
    p.add_argument("--data", help="text file or directory of .txt files, or hf:NAME "
                                  "(default: built-in corpus)")
    p.add_argument("--tokenizer", help="SentencePiece .model to use instead of training one")
    p.add_argument("--out", help="run directory (default: runs/<time>-<scenario>-<variant>-<pid>)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--log-every", type=int, default=10, help="iterations between progress lines")
    p.add_argument("--checkpoint-every", type=int, default=0,
                   help="iterations between checkpoints (default: only at the end)")
    p.add_argument("--eval-batches", type=int, default=DEFAULT_EVAL_BATCHES,
                   help=f"validation batches of {EVAL_SAMPLES} sequences scored at the end (0: none)")


def _positive(name: str, value: int | None, zero_ok: bool = False) -> None:
    from ..errors import SkipPipeError

    if value is not None and (value < 0 or (value == 0 and not zero_ok)):
        raise SkipPipeError(f"{name} must be {'non-negative' if zero_ok else 'positive'}, got {value}")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..train.data import prepare_data, validation_batches
    from ..train.evaluate import perplexity
    from ..train.local import METRICS_FILE, MetricsWriter, RunInfo, resolve_paths, train
    from ..train.optim import TrainConfig
    from ..util.devices import resolve_device
    from ..util.rundir import new_run_dir

    for name in ("iterations", "log_every", "threads"):
        _positive(f"--{name.replace('_', '-')}", getattr(args, name))
    for name in ("warmup", "checkpoint_every", "eval_batches"):
        _positive(f"--{name.replace('_', '-')}", getattr(args, name), zero_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    scenario, paths = resolve_paths(args.source, args.variant, args.seed)
    cfg = TrainConfig.from_scenario(scenario, iterations=args.iterations, learning_rate=args.lr,
                                    seed=args.seed, warmup_iterations=args.warmup,
                                    cosine_decay=args.cosine, log_every=args.log_every,
                                    checkpoint_every=args.checkpoint_every)
    data = prepare_data(args.data, scenario.model.vocab_size, args.tokenizer)
    run_dir = Path(args.out) if args.out else new_run_dir(f"{scenario.name}-{args.variant}")
    device = resolve_device(args.device)
    result = train(scenario.model, scenario.pipeline.n_stages, paths, data, cfg,
                   RunInfo(run_dir, args.variant, scenario.name, scenario.content_hash), device)
    last = result.history[-1]
    print(f"{scenario.name} {args.variant}: {cfg.iterations} iterations, {len(paths)} microbatches "
          f"each, {result.tokens_seen} tokens, final train loss {last.loss:.4f}")
    if args.eval_batches:
        batches = validation_batches(data.validation, EVAL_SAMPLES, scenario.model.ctx_tokens,
                                     args.eval_batches)
        ppl = perplexity(result.stages, batches)
        MetricsWriter(result.run_dir / METRICS_FILE).write(
            "validation", omitted=[], tokens=ppl.tokens, mean_nll=ppl.mean_nll,
            perplexity=ppl.perplexity)
        print(f"validation perplexity (full model, {ppl.tokens} tokens): {ppl.perplexity:.3f}")
    print(f"run directory: {result.run_dir}  checkpoint: {result.checkpoint_dir}")
    return 0
