"""The sparse-pipeline study (issue 12): does training on skip paths cost perplexity, and does it
make the model robust to missing stages? One command, resumable:

    .venv/bin/python bench/study.py --figures docs     # ~90 min on 2 cores at the defaults

Steps (each run's result is saved under --out; a rerun skips what is done):
1. learning-rate sweep: every variant (`baseline` full pipelines, `ca-partial` SkipPipe paths,
   `random` network-blind skip paths; bench/study_inputs.json) at every --lrs, first seed;
2. the best learning rate of each variant (lowest final validation perplexity) with the other
   seeds;
3. at the best learning rates, the sparse pipelines of every trained model: every subset of the
   non-first stages kept (sorted order), and the reordered paths the skip variants trained on.
Every validation token is scored. The report (stdout, <out>/report.md, <out>/study.json, PNGs)
gives mean +- sd over seeds and the count-based unigram and bigram perplexities of the same
tokens; see study_report.py.
"""
from __future__ import annotations

import argparse
import logging
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import study_run  # noqa: E402
from bench.study_inputs import INPUTS_FILE, load_inputs, reordered_paths, write_inputs  # noqa: E402
from skippipe.errors import SkipPipeError  # noqa: E402

log = logging.getLogger("bench.study")

DEFAULT_SETTINGS = ROOT / "settings" / "study-6x2.toml"
DEFAULT_OUT = ROOT / "runs" / "study"
DEFAULT_VARIANTS = ("baseline", "ca-partial", "random")
DEFAULT_LRS = (1e-3, 2e-3, 3e-3)
DEFAULT_SEEDS = (0, 1, 2)
DEFAULT_ITERATIONS = 800  # 4.1 M tokens per run at 5,120 tokens per iteration (see README)
DEFAULT_EVALS = 10  # full-model validation scores per run, evenly spaced, the last at the end


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(DEFAULT_OUT), help="results directory (resumed if present)")
    p.add_argument("--settings", default=str(DEFAULT_SETTINGS), help="scenario: model and stages")
    p.add_argument("--inputs", default=str(INPUTS_FILE), help="paths and iteration times JSON")
    p.add_argument("--data", default="web", help="corpus (default: web, the World English Bible)")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help="comma-separated")
    p.add_argument("--lrs", default=",".join(f"{x:g}" for x in DEFAULT_LRS),
                   help="peak learning rates of the sweep, comma-separated")
    p.add_argument("--seeds", default=",".join(map(str, DEFAULT_SEEDS)),
                   help="seeds; the sweep uses the first")
    p.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS, help="optimizer steps per run")
    p.add_argument("--evals", type=int, default=DEFAULT_EVALS, help="validation scores per run")
    p.add_argument("--max-eval-windows", type=int,
                   help="score only the first N validation windows (smoke tests; default: all)")
    p.add_argument("--target-ppl", type=float, help="time-to-target perplexity (default: the "
                   "highest final perplexity of any run at its variant's best rate, so every run reaches it)")
    p.add_argument("--jobs", type=int, default=2, help="runs at once, one process each")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--figures", help="directory for the PNGs (default: --out)")
    p.add_argument("--write-inputs", nargs=2, metavar=("PATHS_SCHEDULE", "TIMES_SCHEDULE"),
                   help="write --inputs from two schedule files and stop")
    return p.parse_args(argv)


def _numbers(text: str, kind, what: str) -> tuple:
    try:
        values = tuple(kind(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise SkipPipeError(f"--{what} {text!r}: expected comma-separated numbers") from None
    if not values or len(set(values)) != len(values):
        raise SkipPipeError(f"--{what} {text!r}: give at least one value, each once")
    return values


def eval_points(iterations: int, evals: int) -> tuple[int, ...]:
    """`evals` iterations spread evenly over the run, the last one at its end."""
    return tuple(sorted({max(1, round(iterations * (i + 1) / evals)) for i in range(evals)}))


class Study:
    """The plan: which runs exist, from a base spec per variant."""

    def __init__(self, args: argparse.Namespace):
        for name in ("iterations", "evals", "jobs", "threads"):
            if getattr(args, name) < 1:
                raise SkipPipeError(f"--{name} must be positive")
        self.args = args
        self.out = Path(args.out)
        self.inputs = load_inputs(Path(args.inputs))
        self.variants = tuple(v for v in args.variants.split(",") if v)
        missing = [v for v in self.variants if v not in self.inputs.paths]
        if missing:
            raise SkipPipeError(f"--variants: {missing[0]!r} has no paths in {args.inputs} "
                                f"(has {', '.join(self.inputs.paths)})")
        self.lrs = _numbers(args.lrs, float, "lrs")
        self.seeds = _numbers(args.seeds, int, "seeds")
        self.eval_at = eval_points(args.iterations, min(args.evals, args.iterations))

    def spec(self, variant: str, lr: float, seed: int) -> study_run.RunSpec:
        from skippipe.train.recipe import WARMUP_FRACTION
        from skippipe.scenario import load_scenario

        scenario = load_scenario(self.args.settings)
        return study_run.RunSpec(
            variant, lr, seed, self.inputs.paths[variant], str(self.args.settings), self.args.data,
            self.args.iterations, scenario.pipeline.samples_per_microbatch,
            round(WARMUP_FRACTION * self.args.iterations), self.eval_at, self.args.threads,
            self.args.max_eval_windows)

    def sweep_specs(self) -> list[study_run.RunSpec]:
        return [self.spec(v, lr, self.seeds[0]) for v in self.variants for lr in self.lrs]

    def seed_specs(self, best: dict[str, float]) -> list[study_run.RunSpec]:
        return [self.spec(v, best[v], s) for v in self.variants for s in self.seeds[1:]]


def best_learning_rates(results: list[dict]) -> dict[str, float]:
    """Per variant, the learning rate with the lowest final validation NLL (ties: the lower lr)."""
    best: dict[str, tuple[float, float]] = {}
    for r in results:
        score = (r["curve"][-1]["mean_nll"], r["learning_rate"])
        if r["variant"] not in best or score < best[r["variant"]]:
            best[r["variant"]] = score
    return {v: lr for v, (_, lr) in best.items()}


def _call(task):
    function, args = task
    return function(*args)


def run_all(tasks: list, jobs: int) -> list:
    """Run (function, args) tasks, `jobs` at a time in fresh processes (1: in this process)."""
    if jobs <= 1 or len(tasks) <= 1:
        return [_call(t) for t in tasks]
    context = multiprocessing.get_context("spawn")  # no fork after torch started threads
    with ProcessPoolExecutor(max_workers=min(jobs, len(tasks)), mp_context=context) as pool:
        return list(pool.map(_call, tasks))


def _train_tasks(study: Study, specs: list[study_run.RunSpec]) -> list:
    return [(study_run.train_run, (s, study.out)) for s in specs]


def _sweep_tasks(study: Study, specs: list[study_run.RunSpec]) -> list:
    return [(study_run.sweep_run, (s, study.out, reordered_paths(study.inputs))) for s in specs]


def execute(study: Study) -> tuple[list[dict], list[dict], dict[str, float]]:
    """All runs and sweeps of the plan (stored ones are reused); returns (every training result,
    the sweeps of the best-learning-rate runs, best learning rate per variant)."""
    from skippipe.scenario import load_scenario
    from skippipe.train.data import prepare_data

    prepare_data(study.args.data, load_scenario(study.args.settings).model.vocab_size)  # caches once
    jobs = study.args.jobs
    swept = run_all(_train_tasks(study, study.sweep_specs()), jobs)
    best = best_learning_rates(swept)
    first = [s for s in study.sweep_specs() if s.learning_rate == best[s.variant]]
    later = study.seed_specs(best)
    # the first seed's sparse pipelines need no wait: run them beside the other seeds' training
    mixed = run_all(_sweep_tasks(study, first) + _train_tasks(study, later), jobs)
    sweeps = mixed[:len(first)] + run_all(_sweep_tasks(study, later), jobs)
    return swept + mixed[len(first):], sweeps, best


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        if args.write_inputs:
            paths_schedule, times_schedule = map(Path, args.write_inputs)
            print(f"wrote {write_inputs(paths_schedule, times_schedule, Path(args.inputs))}")
            return 0
        study = Study(args)
        results, sweeps, best = execute(study)
    except SkipPipeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from bench.study_report import write_report

    write_report(study, results, sweeps, best)
    return 0


if __name__ == "__main__":
    sys.exit(main())
