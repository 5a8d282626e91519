"""Perplexity of a trained run through its live nodes only (failed nodes are not started),
beside single-process evaluation with the same stages omitted."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..errors import SkipPipeError

HELP = "perplexity of a trained run through its live nodes only, beside single-process evaluation"
DEFAULT_MAX_BATCHES = 8
RUN_TIMEOUT_S = 600.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a finished run directory with a checkpoint (./run.sh ... --checkpoint)")
    p.add_argument("--failed", default="", help="comma-separated node ids that are down, e.g. 4,5")
    p.add_argument("--max-batches", type=int, default=DEFAULT_MAX_BATCHES, help="validation batches (default %(default)s)")
    p.add_argument("--samples", type=int, default=0, help="sequences per batch (default: the scenario's)")


def parse_failed(text: str, n_nodes: int) -> set[int]:
    try:
        failed = {int(x) for x in text.split(",") if x.strip()}
    except ValueError:
        raise SkipPipeError(f"--failed {text!r}: expected comma-separated node ids") from None
    bad = sorted(n for n in failed if not 0 <= n < n_nodes)
    if bad:
        raise SkipPipeError(f"--failed: node {bad[0]} is not in the run (0..{n_nodes - 1})")
    return failed


def distributed_perplexity(run_dir: Path, failed: set[int], max_batches: int, samples: int = 0) -> dict:
    """Start the live nodes of `run_dir` for inference and return the origin's result."""
    from ..runtime import launch
    from ..runtime.infer import plan
    from ..runtime.runconfig import load_config
    from ..schedule import load_schedule
    cfg = load_config(run_dir / "config.json")
    if not (run_dir / "checkpoint" / "checkpoint.json").is_file():
        raise SkipPipeError(f"{run_dir}: no checkpoint (train with --checkpoint)")
    sched, sc = load_schedule(cfg.schedule_path)
    p = plan(sched.allocation, failed, samples or sc.pipeline.samples_per_microbatch, max_batches, len(sc.nodes))
    tag = "-".join(map(str, sorted(failed))) or "none"
    plan_path = run_dir / f"infer-failed-{tag}.json"
    plan_path.write_text(json.dumps(p.__dict__))
    launcher = launch.Launcher(cfg, p.live, command=("infer-node",), extra=(str(plan_path),))
    deadline = time.monotonic() + RUN_TIMEOUT_S
    try:
        launcher.start()
        while launcher.poll() and time.monotonic() < deadline and not launcher.failed():
            time.sleep(launch.POLL_S)
        if launcher.failed() or launcher.poll():
            raise SkipPipeError(f"inference nodes failed or timed out; see {run_dir}/node-N-infer-node.log")
    finally:
        launcher.stop()
    return json.loads(plan_path.with_suffix(".result.json").read_text())


def local_perplexity(run_dir: Path, omitted, max_batches: int, samples: int) -> float:
    from ..train.data import prepare_data, validation_batches
    from ..train.evaluate import perplexity
    from ..train.model import load_checkpoint
    info, stages = load_checkpoint(run_dir / "checkpoint", "cpu")
    data = prepare_data(None, info.model.vocab_size)
    batches = validation_batches(data.validation, samples, info.model.ctx_tokens, max_batches)
    return perplexity(stages, batches, tuple(omitted)).perplexity


def run(args: argparse.Namespace) -> int:
    from ..runtime.runconfig import load_config
    run_dir = Path(args.run_dir)
    cfg = load_config(run_dir / "config.json")
    failed = parse_failed(args.failed, len(cfg.peers))
    result = distributed_perplexity(run_dir, failed, args.max_batches, args.samples)
    local = local_perplexity(run_dir, result["omitted_stages"], args.max_batches, result["samples"])
    print(f"failed nodes {sorted(failed) or 'none'}: path {result['path']}, stages omitted "
          f"{result['omitted_stages'] or 'none'}")
    print(f"perplexity through live nodes {result['perplexity']:.4f} | single process, same stages "
          f"omitted {local:.4f} | relative difference {abs(result['perplexity'] / local - 1):.2e}")
    return 0
