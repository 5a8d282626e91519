"""The study's plan: which runs exist and in what order they run.

1. Learning-rate sweep, first seed, every variant: the preset's rates; while a variant's best
   (lowest final validation NLL) is the highest or lowest rate tried, one more rate beyond it
   (x or / LR_STEP), up to --max-lr-extensions per variant, so the best is interior;
2. each variant's best rate with the other seeds;
3. sparse-pipeline sweeps (test split) of every chosen run.
Every schedule is sized to its run: warm-up over WARMUP_FRACTION of the run's iterations, then
cosine decay to its last iteration.
"""

from __future__ import annotations

import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from ..errors import SkipPipeError
from . import runs
from .inputs import load_inputs, reordered_paths
from .layerdrop import VARIANT as LAYERDROP
from .layerdrop import keep_probability

log = logging.getLogger("skippipe.study")

LR_STEP = 2.0  # ratio between neighbouring rates of an extended sweep


def eval_points(iterations: int, evals: int) -> tuple[int, ...]:
    """`evals` iterations spread evenly over the run, the last one at its end."""
    return tuple(sorted({max(1, round(iterations * (i + 1) / evals)) for i in range(evals)}))


class Study:
    """The plan of one study, from its options (cli.py)."""

    def __init__(self, args):
        for name in ("iterations", "evals", "jobs", "threads"):
            if getattr(args, name) < 1:
                raise SkipPipeError(f"--{name} must be positive")
        from ..scenario import load_scenario

        self.args = args
        self.results, self.work = Path(args.results), Path(args.work)
        self.inputs = load_inputs(Path(args.inputs))
        self.scenario = load_scenario(args.settings)
        self.variants = args.variants
        missing = [v for v in self.variants if v != LAYERDROP and v not in self.inputs.paths]
        if missing:
            raise SkipPipeError(
                f"--variants: {missing[0]!r} has no paths in {args.inputs} "
                f"(has {', '.join(self.inputs.paths)}, and {LAYERDROP})"
            )
        if LAYERDROP in self.variants and "baseline" not in self.inputs.paths:
            raise SkipPipeError(f"{args.inputs}: {LAYERDROP} thins the baseline's paths; none")
        self.lrs, self.seeds = args.lrs, args.seeds
        self.eval_at = eval_points(args.iterations, min(args.evals, args.iterations))

    def spec(self, variant: str, lr: float, seed: int) -> runs.RunSpec:
        from ..train.recipe import WARMUP_FRACTION

        pipe = self.scenario.pipeline
        keep = keep_probability(pipe.path_length, pipe.n_stages) if variant == LAYERDROP else 0.0
        paths = self.inputs.paths["baseline" if variant == LAYERDROP else variant]
        return runs.RunSpec(
            variant,
            lr,
            seed,
            paths,
            keep,
            str(self.args.settings),
            self.args.data,
            self.args.iterations,
            pipe.samples_per_microbatch,
            round(WARMUP_FRACTION * self.args.iterations),
            self.eval_at,
            self.args.threads,
            self.args.device,
            self.args.max_eval_windows,
        )

    def reordered(self) -> tuple[tuple[int, ...], ...]:
        return reordered_paths(self.inputs)


def best_learning_rates(results: list[dict]) -> dict[str, float]:
    """Per variant, the learning rate with the lowest final validation NLL (ties: the lower lr)."""
    best: dict[str, tuple[float, float]] = {}
    for r in results:
        score = (r["curve"][-1]["mean_nll"], r["learning_rate"])
        if r["variant"] not in best or score < best[r["variant"]]:
            best[r["variant"]] = score
    return {v: lr for v, (_, lr) in best.items()}


def next_rate(tried: list[float], best: float) -> float | None:
    """The rate beyond an edge best (None when the best is interior)."""
    if best == max(tried):
        return best * LR_STEP
    if best == min(tried):
        return best / LR_STEP
    return None


def stored(study: Study, variant: str, lr: float, seed: int, suffix: str = "") -> dict | None:
    """The stored result (suffix ".sweep": sweep) of a run, when made with the plan's settings."""
    spec = study.spec(variant, lr, seed)
    fingerprint = spec.fingerprint()
    if suffix:
        fingerprint = {**fingerprint, "reordered": study.reordered()}
    return runs.load_result(runs.result_path(study.results, spec.key, suffix), fingerprint)


def stored_sweep(study: Study) -> list[dict]:
    """Every stored first-seed run of the plan's variants whose settings match: the sweep as
    far as it got, whichever rates it tried."""
    found, seed = [], study.seeds[0]
    for v in study.variants:
        for path in sorted((study.results / "runs").glob(f"{v}-lr*-seed{seed}.json")):
            raw = runs.load_result(path, None)  # its rate exactly, not as the name rounds it
            r = raw and raw.get("variant") == v and stored(study, v, raw["learning_rate"], seed)
            if r:
                found.append(r)
    return found


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


def _train(study: Study, specs) -> list:
    return [(runs.train_run, (s, study.results, study.work)) for s in specs]


def _sweep(study: Study, specs) -> list:
    return [(runs.sweep_run, (s, study.results, study.work, study.reordered())) for s in specs]


def sweep_learning_rates(study: Study) -> list[dict]:
    """The first seed at the preset's rates and any stored ones, extended per variant until its
    best is interior."""
    seed, jobs = study.seeds[0], study.args.jobs
    earlier = {(r["variant"], r["learning_rate"]): r for r in stored_sweep(study)}
    tried = {v: sorted(set(study.lrs) | {lr for w, lr in earlier if w == v}) for v in study.variants}
    new = [study.spec(v, lr, seed) for v in study.variants for lr in tried[v] if (v, lr) not in earlier]
    done = list(earlier.values()) + run_all(_train(study, new), jobs)
    for _ in range(study.args.max_lr_extensions):
        best = best_learning_rates(done)
        more = {v: next_rate(tried[v], best[v]) for v in study.variants}
        more = {v: lr for v, lr in more.items() if lr is not None}
        if not more:
            break
        log.info("learning rates at the edge of the sweep; trying %s", more)
        for v, lr in more.items():
            tried[v].append(lr)
        done += run_all(_train(study, [study.spec(v, lr, seed) for v, lr in more.items()]), jobs)
    return done


def execute(study: Study) -> tuple[list[dict], list[dict], dict[str, float]]:
    """All runs and sweeps of the plan (stored ones are reused); returns (every training result,
    the sweeps of the chosen runs, best learning rate per variant)."""
    from ..train.data import prepare_data

    prepare_data(study.args.data, study.scenario.model.vocab_size, test_split=True)  # cache once
    swept = sweep_learning_rates(study)
    best = best_learning_rates(swept)
    first = [study.spec(v, best[v], study.seeds[0]) for v in study.variants]
    later = [study.spec(v, best[v], s) for v in study.variants for s in study.seeds[1:]]
    # the first seed's sparse pipelines need no wait: run them beside the other seeds' training
    mixed = run_all(_sweep(study, first) + _train(study, later), study.args.jobs)
    sweeps = mixed[: len(first)] + run_all(_sweep(study, later), study.args.jobs)
    return swept + mixed[len(first) :], sweeps, best
