"""The study's figures: perplexity vs stages kept (error bars: sd over seeds), and validation
perplexity vs iteration, layer-FLOPs and simulated wall-clock (line: mean over seeds, band:
mean +- sd). Each carries the versions it was made with in a footer."""
from __future__ import annotations

from pathlib import Path

PLOT_DPI = 120  # dots per inch of the PNGs
KEPT_SIZE_IN = (6.4, 4.4)  # width, height in inches
CURVES_SIZE_IN = (14.0, 4.4)
BAND_ALPHA = 0.2  # opacity of the seed band
FOOTER_FONT = 7  # points
FOOTER_HEIGHT = 0.07  # share of the figure height kept free for the two footer lines


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _references(ax, rep) -> None:
    for name, style in (("bigram", "--"), ("unigram", ":")):
        ax.axhline(rep.refs[name], color="grey", linestyle=style, linewidth=1,
                   label=f"{name} (add-{rep.refs['add_k']:g}) {rep.refs[name]:.1f}")


def _save(fig, path: Path, rep) -> Path:
    footer = ", ".join(f"{k} {v}" for k, v in rep.versions.items())
    fig.text(0.01, 0.01, f"{rep.scenario.name}, corpus {rep.study.args.data}\n{footer}",
             fontsize=FOOTER_FONT, color="dimgrey")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout(rect=(0, FOOTER_HEIGHT, 1, 1))
    fig.savefig(path, dpi=PLOT_DPI)
    _pyplot().close(fig)
    return path


def _mean_sd(values):
    from bench.study_report import mean_sd

    return mean_sd(values)


def plot_stages_kept(rep, path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=KEPT_SIZE_IN)
    for variant in rep.study.variants:
        kept = rep.stages_kept(variant)
        stats = [_mean_sd(kept[c]) for c in kept]
        ax.errorbar(list(kept), [m for m, _ in stats], yerr=[s for _, s in stats], marker="o",
                    capsize=3, label=f"{variant} (lr {rep.best[variant]:g})")
    _references(ax, rep)
    n = rep.scenario.pipeline.n_stages
    ax.set_xticks(range(1, n + 1))
    ax.set_xlabel(f"stages kept of {n} (stage 0 + the others in order; mean over subsets)")
    ax.set_ylabel("validation perplexity")
    ax.set_yscale("log")
    ax.set_title("Sparse pipelines: perplexity vs stages kept")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path, rep)


def plot_curves(rep, path: Path) -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=CURVES_SIZE_IN, sharey=True)
    scales = (("iteration", lambda v: 1.0),
              ("layer-TFLOPs", lambda v: rep.flops(v) / 1e12),
              (f"simulated hours ({rep.study.inputs.wallclock_scenario})",
               lambda v: rep.iteration_s(v) / 3600.0))
    for ax, (label, per_iteration) in zip(axes, scales):
        for variant in rep.study.variants:
            points = rep.curve(variant)
            x = [it * per_iteration(variant) for it, _ in points]
            stats = [_mean_sd(ppl) for _, ppl in points]
            mean = [m for m, _ in stats]
            line, = ax.plot(x, mean, marker="o", markersize=3, label=variant)
            ax.fill_between(x, [m - s for m, s in stats], [m + s for m, s in stats],
                            color=line.get_color(), alpha=BAND_ALPHA)
        _references(ax, rep)
        ax.axhline(rep.target, color="black", linewidth=0.8, label=f"target {rep.target:.1f}")
        ax.set_xlabel(label)
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("validation perplexity (full model)")
    axes[0].legend(fontsize=8)
    fig.suptitle("Validation perplexity during training (mean ± sd over seeds)")
    return _save(fig, path, rep)
