"""Perplexity of a trained checkpoint: full model, given stages omitted, or a sweep."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "validation perplexity of a checkpoint with stages omitted (full, --omit-stages, --sweep)"
EVAL_SAMPLES = 8  # sequences per validation batch
RESULTS_FILE = "perplexity.json"
PLOT_FILE = "perplexity-vs-omitted.png"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="checkpoint directory (or the run directory holding checkpoint/)")
    p.add_argument("--omit-stages", help="comma-separated non-first stages to omit, e.g. 2,4")
    p.add_argument("--sweep", action="store_true",
                   help="every subset of non-first stages (seeded sample when S > 8), table + PNG")
    p.add_argument("--max-batches", type=int,
                   help="validation batches of --samples sequences per path (default: every "
                        "validation token)")
    p.add_argument("--samples", type=int, default=EVAL_SAMPLES, help="sequences per batch")
    p.add_argument("--seed", type=int, default=0, help="subset sample seed when S > 8")
    p.add_argument("--data", help="data source (default: the one the checkpoint was trained on)")
    p.add_argument("--tokenizer", help="SentencePiece .model (default: the checkpoint's)")
    p.add_argument("--out", help="directory for perplexity.json and the PNG (default: <run>/eval)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--threads", type=int, help="torch CPU threads")


def _checkpoint_dir(path: str) -> Path:
    from ..train.model import CHECKPOINT_META
    from ..train.local import CHECKPOINT_DIR

    p = Path(path)
    return p / CHECKPOINT_DIR if (p / CHECKPOINT_DIR / CHECKPOINT_META).is_file() else p


def _result_row(r) -> dict:
    return {"omitted": list(r.omitted), "fraction": r.fraction, "tokens": r.tokens,
            "mean_nll": r.mean_nll, "perplexity": r.perplexity}


def run(args: argparse.Namespace) -> int:
    import torch

    from ..train.data import prepare_data, validation_batches
    from ..errors import SkipPipeError
    from ..train.evaluate import (format_table, omission_subsets, parse_stage_list, perplexity,
                            plot_sweep, summarize, sweep)
    from ..train.model import load_checkpoint, resolve_device

    if (args.max_batches is not None and args.max_batches < 1) or args.samples < 1:
        raise SkipPipeError("--max-batches and --samples must be positive")
    if args.threads:
        torch.set_num_threads(args.threads)
    directory = _checkpoint_dir(args.checkpoint)
    device = resolve_device(args.device)
    info, stages = load_checkpoint(directory, device)
    omitted = parse_stage_list(args.omit_stages, info.n_stages) if args.omit_stages else None
    data = prepare_data(args.data or info.data_source, info.model.vocab_size,
                        args.tokenizer or info.tokenizer_path)
    batches = validation_batches(data.validation, args.samples, info.model.ctx_tokens, args.max_batches)
    results = [perplexity(stages, batches)]
    print(f"checkpoint {directory} ({info.variant}, {info.n_stages} stages, iteration {info.iteration})")
    print(f"full model: perplexity {results[0].perplexity:.3f} over {results[0].tokens} tokens")
    if omitted is not None:
        r = perplexity(stages, batches, omitted)
        results.append(r)
        print(f"stages {','.join(map(str, r.omitted))} omitted: perplexity {r.perplexity:.3f}")
    out = Path(args.out) if args.out else directory.parent / "eval"
    out.mkdir(parents=True, exist_ok=True)
    report = {"checkpoint": str(directory), "variant": info.variant, "iteration": info.iteration,
              "results": [_result_row(r) for r in results]}
    if args.sweep:
        swept = sweep(stages, batches, omission_subsets(info.n_stages, args.seed))
        print(format_table(summarize(swept)))
        png = plot_sweep({info.variant: swept}, out / PLOT_FILE,
                         title=f"{info.scenario_name} ({info.variant}): perplexity vs stages omitted")
        report["sweep"] = [_result_row(r) for r in swept]
        print(f"plot: {png}")
    (out / RESULTS_FILE).write_text(json.dumps(report, indent=2) + "\n")
    print(f"results: {out / RESULTS_FILE}")
    return 0
