"""The study's report as markdown: every table reports test perplexity (the learning-rate sweep
and the learning curves: validation, which chose them) with the count-based references of the
same test tokens beside it."""

from __future__ import annotations

from .ngram import KN_ORDERS
from .stats import CONFIDENCE, interval, mean_sd

HOUR_S = 3600.0


def fmt(values: list[float], digits: int = 2) -> str:
    m, s = mean_sd(values)
    return f"{m:.{digits}f} ± {s:.{digits}f}" if len(values) > 1 else f"{m:.{digits}f}"


def fmt_interval(values: list[float], digits: int = 2) -> str:
    if len(values) < 2:
        return "-"
    lo, hi = interval(values)
    return f"[{lo:.{digits}f}, {hi:.{digits}f}]"


def reference_line(refs: dict, split: str) -> str:
    kn = ", ".join(f"{n}-gram {refs[f'kn{n}']:.2f}" for n in KN_ORDERS if f"kn{n}" in refs)
    return (
        f"References on the same {refs['tokens']} {split} tokens: unigram "
        f"{refs['unigram']:.2f}, bigram {refs['bigram']:.2f} (add-{refs['add_k']:g}); "
        f"Kneser-Ney {kn}."
    )


def _table(head: list[str], rows: list[list[str]], rep, split: str = "test") -> list[str]:
    return (
        ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        + ["| " + " | ".join(r) + " |" for r in rows]
        + ["", reference_line(rep.references[split], split)]
    )


def _lr_table(rep) -> list[str]:
    rows = []
    for v in rep.study.variants:
        tried = rep.lr_tried(v)
        cells = ", ".join(
            f"{lr:g}: {ppl:.2f}{' *' if lr == rep.best[v] else ''}" for lr, ppl in tried.items()
        )
        rows.append([v, cells, "yes" if rep.interior(v) else "**no**"])
    return _table(
        ["variant", "lr: validation ppl (first seed; * = chosen)", "best interior"], rows, rep, "validation"
    )


def _final_table(rep) -> list[str]:
    best_kn = rep.refs.get(f"kn{max(KN_ORDERS)}")
    rows = []
    for v in rep.study.variants:
        ppl = rep.test(v)
        versus = fmt([100 * (p / best_kn - 1) for p in ppl], 1) + " %" if best_kn else "-"
        rows.append(
            [
                v,
                f"{rep.best[v]:g}",
                str(len(ppl)),
                fmt(ppl),
                fmt_interval(ppl),
                versus,
                fmt([r["train_cpu_s"] for r in rep.chosen[v]], 0),
            ]
        )
    return _table(
        [
            "variant",
            "lr",
            "seeds",
            "test ppl (full model)",
            f"{round(100 * CONFIDENCE)}% interval",
            f"vs {max(KN_ORDERS)}-gram KN",
            "train CPU s",
        ],
        rows,
        rep,
    )


def _paired_table(rep) -> list[str]:
    rows = []
    for v in rep.study.variants:
        t = rep.versus_baseline(v)
        if t is not None:
            rows.append(
                [
                    v,
                    str(t["pairs"]),
                    f"{t['mean']:+.2f} ({100 * t['relative']:+.1f} %)",
                    f"[{t['low']:+.2f}, {t['high']:+.2f}]",
                    f"{t['p']:.3g}",
                ]
            )
    return _table(
        [
            "variant",
            "seed pairs",
            "test ppl − baseline's",
            f"{round(100 * CONFIDENCE)}% interval",
            "p (paired t-test)",
        ],
        rows,
        rep,
    )


def _kept_table(rep) -> list[str]:
    n = rep.scenario.pipeline.n_stages
    rows = []
    for v in rep.study.variants:
        kept = rep.stages_kept(v)
        rows.append([v] + [fmt(kept[c]) if c in kept else "-" for c in range(1, n + 1)])
    return _table(["model"] + [f"{c} of {n} kept" for c in range(1, n + 1)], rows, rep)


def _order_table(rep) -> list[str]:
    rows = []
    for v in rep.study.variants:
        for path in rep.study.reordered():
            trained, ordered = rep.path_ppl(v, path), rep.path_ppl(v, sorted(path))
            if trained and ordered:
                ratio = [a / b for a, b in zip(trained, ordered)]
                rows.append([v, "-".join(map(str, path)), fmt(trained), fmt(ordered), fmt(ratio, 3)])
    return _table(
        ["model", "trained order", "test ppl in trained order", "test ppl sorted", "trained / sorted"],
        rows,
        rep,
    )


def _hours(rep, v: str, iterations: float) -> str:
    s = rep.iteration_s(v)
    return f"{iterations * s / HOUR_S:.2f}" if s else "-"


def _curve_table(rep) -> list[str]:
    rows = []
    for v in rep.study.variants:
        for it, ppl in rep.curve(v):
            rows.append([v, str(it), f"{it * rep.flops(v) / 1e12:.2f}", _hours(rep, v, it), fmt(ppl)])
    return _table(
        ["variant", "iteration", "layer-TFLOPs", f"simulated h ({rep.wallclock})", "validation ppl"],
        rows,
        rep,
        "validation",
    )


def _times_line(rep) -> list[str]:
    """The iteration times behind the speed-ups, one line."""
    shown = [v for v in rep.study.variants if rep.iteration_s(v)]
    if not shown:
        return []
    line = (
        "Simulated seconds per iteration: " + ", ".join(f"{v} {rep.iteration_s(v):.4g}" for v in shown) + "."
    )
    split = (rep.times or {}).get("split_backward_s", {})
    if split.get("baseline") and any(v in split for v in shown if v != "baseline"):
        line += (
            " With the backward split on both sides (W ops in idle gaps), per-iteration "
            "speed-ups would be "
            + ", ".join(
                f"{v} {split['baseline'] / split[v]:.2f}×" for v in shown if v in split and v != "baseline"
            )
            + " (not drawn)."
        )
    return [line, ""]


def _speedup_table(rep) -> list[str]:
    others = [v for v in rep.study.variants if v != "baseline" and rep.iteration_s(v)]
    rows = []
    for target in rep.targets:
        cells = []
        for v in others:
            s = rep.speedup(v, target)
            cells.append("-" if s is None else f"{s:.2f}×")
        hits = rep.time_to_target("baseline", target)
        reached = [h for h in hits if h is not None]
        seeds = "" if len(reached) == len(hits) else f" ({len(reached)}/{len(hits)} seeds)"
        name = next((f" ({n}-gram KN)" for n in KN_ORDERS if rep.valid_refs.get(f"kn{n}") == target), "")
        rows.append([f"{target:.2f}{name}", fmt(reached, 0) + seeds if reached else "not reached"] + cells)
    return _table(
        ["validation ppl target", "baseline iterations"] + [f"{v} speed-up" for v in others],
        rows,
        rep,
        "validation",
    )


def markdown(rep) -> str:
    a = rep.study.args
    scored = (
        "every window scored"
        if a.max_eval_windows is None
        else f"the first {a.max_eval_windows} windows of each split only (a smoke test, not a result)"
    )
    lines = [
        f"# Sparse-pipeline study ({rep.scenario.name}, corpus {a.data}, preset {a.preset})",
        "",
        f"{a.iterations} iterations per run, seeds {', '.join(map(str, rep.study.seeds))}, "
        f"{a.threads} thread(s) per run on {a.device}, {scored}. Learning rates are chosen on "
        "validation; every other table reports the test split.",
        "",
        "## Learning-rate sweep",
        *_lr_table(rep),
        "",
        "## Full model at the chosen learning rate (mean ± sd over seeds)",
        *_final_table(rep),
        "",
        "## Skip variants vs the full pipeline (paired by seed)",
        *_paired_table(rep),
        "",
        "## Test perplexity vs stages kept (stage 0 + the others in increasing order; mean "
        "over the subsets of each count, then mean ± sd over seeds)",
        *_kept_table(rep),
        "",
        "## Trained (reordered) path orders vs the same stages sorted",
        *_order_table(rep),
        "",
        "## Validation perplexity vs iteration, layer-FLOPs and simulated wall-clock",
        *_curve_table(rep),
        "",
        (
            "## Speed-up to a target perplexity (simulated time to the target of the full "
            "pipeline / the variant's)"
        ),
        "",
        f"Comparator: {rep.comparator}.",
        *_times_line(rep),
        *_speedup_table(rep),
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in rep.versions.items()),
    ]
    return "\n".join(lines) + "\n"
