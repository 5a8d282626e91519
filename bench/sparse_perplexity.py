"""Sparse-pipeline perplexity: does training with skip paths make the model robust to omission?

Trains the same model twice on the built-in corpus for the same number of tokens (same
iterations, microbatches, samples, data order and initial weights):
- `baseline`: every microbatch runs every stage in order;
- skip paths: `ca-partial` paths of `schedules/<scenario>.json` when that file exists (else its
  `random` variant), otherwise the seeded random skip paths of length k (`train.local.local_paths`,
  the planner's random generator: stage 0 first, k-1 distinct stages, CC3, TC1's even visits).
Then evaluates validation perplexity of each with every subset of the non-first stages omitted,
prints a table, writes a PNG plot and a results JSON under runs/<time>-sparse-perplexity-<pid>/.

Targets (from the issue): the skip-trained model's degradation at half omission is at most a
third of the full-trained model's, and its full-model perplexity is within 5% of it.
Degradation at c omitted stages = mean perplexity over the subsets of size c / full perplexity - 1;
"half omission" averages the two counts around (S-1)/2 (2 and 3 of 5 for S=6).

    .venv/bin/python bench/sparse_perplexity.py                  # default, ~10-15 min on 2 cores
    .venv/bin/python bench/sparse_perplexity.py --iterations 1000 # longer run
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from skippipe.train.data import prepare_data, validation_batches  # noqa: E402
from skippipe.train.evaluate import Perplexity, omission_subsets, plot_sweep, summarize, sweep  # noqa: E402
from skippipe.scenario import Scenario, load_scenario  # noqa: E402
from skippipe.train.local import RunInfo, baseline_paths, local_paths, schedule_paths, train  # noqa: E402
from skippipe.train.optim import TrainConfig  # noqa: E402
from skippipe.util.devices import resolve_device  # noqa: E402
from skippipe.util.rundir import new_run_dir  # noqa: E402
from skippipe.util.tables import format_table  # noqa: E402

log = logging.getLogger("bench.sparse_perplexity")

DEFAULT_SETTINGS = ROOT / "settings" / "convergence-6x2.toml"
DEFAULT_WARMUP_FRACTION = 0.05  # share of iterations spent in linear learning-rate warm-up
DEFAULT_EVAL_BATCHES = 16  # validation batches per evaluated path
EVAL_SAMPLES = 8  # sequences per validation batch
TARGET_DEGRADATION_RATIO = 1 / 3  # skip-trained / full-trained degradation at half omission
TARGET_FULL_PPL_GAP = 0.05  # skip-trained full-model perplexity at most 5% above full-trained
SCHEDULE_VARIANTS = ("ca-partial", "random")  # preferred order when a schedule file exists
LOG_EVERY = 25  # iterations between progress lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--settings", default=str(DEFAULT_SETTINGS), help="scenario file")
    p.add_argument("--schedule", help="schedule file (default: schedules/<scenario>.json if present)")
    p.add_argument("--iterations", type=int, help="optimizer steps per model (default: scenario)")
    p.add_argument("--lr", type=float, help="peak learning rate (default: scenario)")
    p.add_argument("--seed", type=int, help="seed of weights, data order, paths (default: scenario)")
    p.add_argument("--eval-batches", type=int, default=DEFAULT_EVAL_BATCHES,
                   help=f"validation batches of {EVAL_SAMPLES} sequences per path")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads per training process (1 stays fast on a busy machine)")
    p.add_argument("--jobs", type=int, default=2,
                   help="models trained at once, one process each (default: both in parallel)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--out", help="output directory (default: runs/sparse-perplexity-<time>)")
    return p.parse_args(argv)


def skip_paths(scenario: Scenario, schedule: str | None, seed: int) -> tuple[str, tuple]:
    """(source description, paths) of the skip-trained model."""
    path = Path(schedule) if schedule else ROOT / "schedules" / f"{scenario.name}.json"
    if path.is_file():
        from skippipe.schedule import load_schedule

        sched, _ = load_schedule(path)
        for variant in SCHEDULE_VARIANTS:
            if variant in sched.variants:
                return f"{path}:{variant}", schedule_paths(sched.variants[variant])
    elif schedule:
        raise SystemExit(f"error: {schedule}: no such schedule file")
    return f"random paths (seed={seed})", local_paths(scenario, "random", seed)


def degradation(results: list[Perplexity], count: int) -> float:
    """Mean perplexity with `count` stages omitted over full perplexity, minus one."""
    by_count = {s.omitted_count: s.mean_perplexity for s in summarize(results)}
    return by_count[count] / by_count[0] - 1


def half_omission(results: list[Perplexity], n_stages: int) -> float:
    """Degradation at half of the non-first stages omitted (mean of the two nearest counts)."""
    half = (n_stages - 1) / 2
    counts = sorted({math.floor(half), math.ceil(half)})
    return sum(degradation(results, c) for c in counts) / len(counts)


@dataclass(frozen=True)
class Job:
    """One model to train and sweep, run in its own process."""
    label: str
    settings: str
    paths: tuple[tuple[int, ...], ...]
    cfg: TrainConfig
    out: Path
    device: str | None
    threads: int
    eval_batches: int


def run_job(job: Job) -> dict:
    """Train one model along `job.paths`, then evaluate every omission subset."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    torch.set_num_threads(job.threads)
    scenario = load_scenario(job.settings)
    data = prepare_data(None, scenario.model.vocab_size)
    batches = validation_batches(data.validation, EVAL_SAMPLES, scenario.model.ctx_tokens, job.eval_batches)
    device = resolve_device(job.device)
    start = time.perf_counter()
    result = train(scenario.model, scenario.pipeline.n_stages, job.paths, data, job.cfg,
                   RunInfo(job.out / job.label, job.label, scenario.name, scenario.content_hash), device)
    train_s = time.perf_counter() - start
    swept = sweep(list(result.stages), batches, omission_subsets(scenario.pipeline.n_stages, job.cfg.seed))
    log.info("%s: trained %d tokens in %.0f s, full perplexity %.3f", job.label,
             result.tokens_seen, train_s, swept[0].perplexity)
    return {"label": job.label, "paths": [list(p) for p in job.paths], "tokens": result.tokens_seen,
            "train_s": train_s, "eval_s": time.perf_counter() - start - train_s,
            "final_train_loss": result.history[-1].loss, "checkpoint": str(result.checkpoint_dir),
            "device": str(device), "results": swept}


def run_jobs(jobs: list[Job], parallel: int) -> list[dict]:
    """Run the jobs, `parallel` at a time in separate processes (1: in this process)."""
    if parallel <= 1:
        return [run_job(job) for job in jobs]
    context = multiprocessing.get_context("spawn")  # no fork after torch started threads
    with ProcessPoolExecutor(max_workers=parallel, mp_context=context) as pool:
        return list(pool.map(run_job, jobs))


def report_rows(runs: list[dict], n_stages: int) -> list[dict]:
    """Per model: perplexity and degradation per omitted count, half-omission degradation."""
    rows = []
    for run in runs:
        summary = [s.mean_perplexity for s in summarize(run["results"])]  # index: omitted count
        rows.append({"model": run["label"], "tokens": run["tokens"], "train_s": run["train_s"],
                     "ppl_by_omitted": summary,
                     "degradation_by_omitted": [p / summary[0] - 1 for p in summary],
                     "half_omission_degradation": half_omission(run["results"], n_stages)})
    return rows


def format_report(rows: list[dict], n_stages: int) -> str:
    """A plain-text table: one line per model, mean perplexity per omitted count."""
    counts = list(range(n_stages))
    header = ["model", "tokens", "train s", *(f"ppl-{c}" for c in counts)]
    table = format_table(header, [[r["model"], r["tokens"], r["train_s"], *r["ppl_by_omitted"][:n_stages]]
                                  for r in rows], ["", "d", ".0f", *[".2f"] * n_stages])
    return (table + "\n(ppl-c: mean validation perplexity over subsets with c of the "
            f"{n_stages - 1} non-first stages omitted)")


def verdict(rows: list[dict]) -> dict:
    """The issue's two targets, computed from the (baseline, skip) rows."""
    base, skip = rows
    if base["half_omission_degradation"] > 0:
        ratio = skip["half_omission_degradation"] / base["half_omission_degradation"]
    else:  # the full-trained model does not degrade: the ratio is undefined
        ratio = math.nan
    gap = skip["ppl_by_omitted"][0] / base["ppl_by_omitted"][0] - 1
    return {"half_omission_degradation_ratio": ratio, "full_ppl_gap": gap,
            "meets_degradation_target": ratio <= TARGET_DEGRADATION_RATIO,
            "meets_full_ppl_target": gap <= TARGET_FULL_PPL_GAP}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    scenario = load_scenario(args.settings)
    cfg = TrainConfig.from_scenario(scenario, iterations=args.iterations, learning_rate=args.lr,
                                    seed=args.seed, cosine_decay=True, log_every=LOG_EVERY)
    cfg = replace(cfg, warmup_iterations=round(DEFAULT_WARMUP_FRACTION * cfg.iterations))
    source, paths = skip_paths(scenario, args.schedule, cfg.seed)
    prepare_data(None, scenario.model.vocab_size)  # build the caches once, before the workers
    out = Path(args.out) if args.out else new_run_dir("sparse-perplexity")
    base = baseline_paths(scenario.pipeline.n_stages, len(paths))
    jobs = [Job(label, args.settings, p, cfg, out, args.device, args.threads, args.eval_batches)
            for label, p in (("baseline", base), ("skip", tuple(paths)))]
    start = time.perf_counter()
    runs = run_jobs(jobs, args.jobs)
    wall_s = time.perf_counter() - start
    write_report(scenario, args, cfg, source, runs, wall_s, out)
    return 0


def _status(met: bool) -> str:
    return "met" if met else "NOT met"


def write_report(scenario: Scenario, args, cfg: TrainConfig, source: str, runs: list[dict],
                 wall_s: float, out: Path) -> None:
    """Print the table and verdict; write results.json and the PNG into `out`."""
    n_stages = scenario.pipeline.n_stages
    rows = report_rows(runs, n_stages)
    result = verdict(rows)
    png = plot_sweep({r["label"]: r["results"] for r in runs}, out / "sparse-perplexity.png",
                     title=f"{scenario.name}: baseline vs skip-trained "
                           f"(k={scenario.pipeline.path_length} of S={n_stages})")
    eval_tokens = runs[0]["results"][0].tokens
    payload = {"command": " ".join(sys.argv), "scenario": scenario.name, "settings": args.settings,
               "skip_paths": source, "train_config": asdict(cfg), "threads": args.threads,
               "jobs": args.jobs, "wall_s": wall_s, "eval_tokens_per_path": eval_tokens,
               "rows": rows, "verdict": result,
               "runs": [{k: v for k, v in r.items() if k != "results"} for r in runs],
               "subsets": {r["label"]: [{"omitted": list(p.omitted), "perplexity": p.perplexity}
                                        for p in r["results"]] for r in runs}}
    (out / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
    base, skip = rows
    print(format_report(rows, n_stages))
    print(f"skip paths: {source}; {runs[0]['tokens']} training tokens per model; "
          f"{eval_tokens} validation tokens per path; device {runs[0]['device']}")
    print(f"half-omission degradation: baseline {base['half_omission_degradation']:+.1%}, "
          f"skip {skip['half_omission_degradation']:+.1%}, ratio "
          f"{result['half_omission_degradation_ratio']:.3f} (target <= "
          f"{TARGET_DEGRADATION_RATIO:.3f}: {_status(result['meets_degradation_target'])})")
    print(f"full-model perplexity, skip vs baseline: {result['full_ppl_gap']:+.1%} "
          f"(target <= {TARGET_FULL_PPL_GAP:+.0%}: {_status(result['meets_full_ppl_target'])})")
    print(f"wall time {wall_s:.0f} s\nplot: {png}\nresults: {out / 'results.json'}")


if __name__ == "__main__":
    sys.exit(main())
