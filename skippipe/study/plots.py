"""The study's figures, each with the count-based reference lines (unigram, bigram, Kneser-Ney
3/4/5-gram of the split it plots) and the versions it was made with in a footer:

- test perplexity vs stages kept (error bars: sd over seeds);
- validation perplexity vs iteration, layer-FLOPs and simulated wall-clock (line: mean over
  seeds, band: mean +- sd);
- speed-up to a target validation perplexity, over a range of targets.
"""

from __future__ import annotations

from pathlib import Path

from .ngram import KN_ORDERS
from .stats import mean_sd

PLOT_DPI = 120  # dots per inch of the PNGs
KEPT_SIZE_IN = (6.4, 4.4)  # width, height in inches
CURVES_SIZE_IN = (14.0, 4.4)
BAND_ALPHA = 0.2  # opacity of the seed band
FOOTER_FONT = 7  # points
FOOTER_HEIGHT = 0.07  # share of the figure height kept free for the two footer lines
REFERENCE_STYLES = {"unigram": ":", "bigram": "--", "kn3": "-.", "kn4": (0, (5, 1)), "kn5": (0, (1, 1))}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(name: str, refs: dict) -> str:
    if name.startswith("kn"):
        return f"{name[2:]}-gram Kneser-Ney {refs[name]:.1f}"
    return f"{name} (add-{refs['add_k']:g}) {refs[name]:.1f}"


def _references(ax, refs: dict, names=None) -> None:
    """Horizontal reference lines: every one, or those named."""
    names = names or ["unigram", "bigram"] + [f"kn{n}" for n in KN_ORDERS]
    for name in names:
        if name in refs:
            ax.axhline(
                refs[name],
                color="grey",
                linestyle=REFERENCE_STYLES.get(name, "--"),
                linewidth=1,
                label=_label(name, refs),
            )


def _save(fig, path: Path, rep) -> Path:
    footer = ", ".join(f"{k} {v}" for k, v in rep.versions.items())
    fig.text(
        0.01,
        0.01,
        f"{rep.scenario.name}, corpus {rep.study.args.data}, preset {rep.study.args.preset}\n{footer}",
        fontsize=FOOTER_FONT,
        color="dimgrey",
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout(rect=(0, FOOTER_HEIGHT, 1, 1))
    fig.savefig(path, dpi=PLOT_DPI)
    _pyplot().close(fig)
    return path


def plot_stages_kept(rep, path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=KEPT_SIZE_IN)
    for variant in rep.study.variants:
        kept = rep.stages_kept(variant)
        stats = [mean_sd(kept[c]) for c in kept]
        ax.errorbar(
            list(kept),
            [m for m, _ in stats],
            yerr=[s for _, s in stats],
            marker="o",
            capsize=3,
            label=f"{variant} (lr {rep.best[variant]:g})",
        )
    _references(ax, rep.refs)
    n = rep.scenario.pipeline.n_stages
    ax.set_xticks(range(1, n + 1))
    ax.set_xlabel(f"stages kept of {n} (stage 0 + the others in order; mean over subsets)")
    ax.set_ylabel("test perplexity")
    ax.set_yscale("log")
    ax.set_title("Sparse pipelines: perplexity vs stages kept")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path, rep)


def plot_curves(rep, path: Path) -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=CURVES_SIZE_IN, sharey=True)
    scales = (
        ("iteration", lambda v: 1.0),
        ("layer-TFLOPs", lambda v: rep.flops(v) / 1e12),
        (f"simulated hours ({rep.wallclock})", lambda v: (rep.iteration_s(v) or 0.0) / 3600.0),
    )
    for ax, (label, per_iteration) in zip(axes, scales):
        for variant in rep.study.variants:
            if not per_iteration(variant):
                continue  # no iteration time for this variant
            points = rep.curve(variant)
            x = [it * per_iteration(variant) for it, _ in points]
            stats = [mean_sd(ppl) for _, ppl in points]
            mean = [m for m, _ in stats]
            (line,) = ax.plot(x, mean, marker="o", markersize=3, label=variant)
            ax.fill_between(
                x,
                [m - s for m, s in stats],
                [m + s for m, s in stats],
                color=line.get_color(),
                alpha=BAND_ALPHA,
            )
        _references(ax, rep.valid_refs, ["bigram"] + [f"kn{n}" for n in KN_ORDERS])
        ax.set_xlabel(label)
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("validation perplexity (full model)")
    axes[0].legend(fontsize=7)
    fig.suptitle(
        "Validation perplexity during training (mean ± sd over seeds), with the "
        "references of the validation tokens"
    )
    return _save(fig, path, rep)


def plot_speedup(rep, path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=KEPT_SIZE_IN)
    for variant in rep.study.variants:
        if variant == "baseline" or not rep.iteration_s(variant):
            continue
        points = [(t, rep.speedup(variant, t)) for t in rep.targets]
        points = [(t, s) for t, s in points if s is not None]
        if points:
            ax.plot([t for t, _ in points], [s for _, s in points], marker="o", label=variant)
    ax.axhline(1.0, color="black", linewidth=0.8)
    for name in [f"kn{n}" for n in KN_ORDERS]:
        if name in rep.valid_refs:
            ax.axvline(
                rep.valid_refs[name],
                color="grey",
                linestyle=REFERENCE_STYLES[name],
                linewidth=1,
                label=_label(name, rep.valid_refs),
            )
    ax.invert_xaxis()  # harder targets to the right
    ax.set_xlabel("target validation perplexity")
    ax.set_ylabel(f"speed-up (simulated {rep.wallclock})")
    ax.set_title(f"Time to target, {rep.comparator}", fontsize=8, wrap=True)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path, rep)
