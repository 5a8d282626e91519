"""How a comparison is shown, from compare_rows' rows: the memory setting and the verdict in
words, the table for the terminal and as Markdown, and the throughput bar chart. Kept apart from
compare.py, which plans or loads the variants and simulates them into rows, so that module holds
the command's steps and this one everything it prints and draws (a --condition session's table
cells come from compare_conditions.cells).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..scenario import Scenario
from ..util.tables import format_table
from . import compare_conditions as conditions

HEADER = (
    "variant",
    "memory",
    "loss",
    "iteration s",
    "makespan s",
    "bubble",
    "peak/slots",
    "work/it",
    "samples/s",
    "x best full",
    "it speedup",
)
EMULATE_HEADER = ("measured s", "measured/predicted")


def memory_text(scenario: Scenario, family_memory: bool) -> str:
    counts = sorted({n.memory_slots for n in scenario.nodes})
    slots = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    if family_memory:
        return f"the classic families under their own memory rules, the rest at {slots} slots"
    return f"every variant at the same memory: {slots} slots per node"


def verdict(rows: list[dict], memory: str) -> str:
    """One line: SkipPipe's best variant against the best full pipeline, throughput and time."""
    best = next((r for r in rows if r["variant"] == (rows[0]["best_full"] if rows else None)), None)
    if best is None:
        return "no full-pipeline variant compared: no verdict"
    others = [r for r in rows if not r["full_pipeline"]]
    if not others:
        return (
            f"the best full pipeline is {best['variant']} ({best['iteration_s']:.4g} s per "
            f"iteration; {memory})"
        )
    r = max(others, key=lambda r: r["samples_per_s"])
    per_mb = f"{r['stages_per_path']}/{r['n_stages']}"
    return (
        f"{r['variant']} is {r['vs_best_full']:.2f}x the best full pipeline ({best['variant']}) "
        f"in full-model samples per second ({memory}); its iterations are "
        f"{r['it_speedup']:.2f}x as fast and it does {per_mb} of the work per microbatch"
    )


def format_rows(rows: list[dict]) -> str:
    return format_table(*_cells(rows))


def _cells(rows: list[dict]) -> tuple[tuple[str, ...], list[list[str]]]:
    """The table's header and cells (the measured columns when a row was emulated)."""

    def ratio(x):
        return "-" if x is None else f"{x:.2f}"

    if any("condition" in r for r in rows):
        return conditions.cells(rows, ratio)
    emulated = any("measured_s" in r for r in rows)
    table = []
    for r in rows:
        line = [
            r["variant"],
            r["memory"],
            r["loss"],
            f"{r['iteration_s']:.4g}",
            f"{r['makespan_s']:.4g}",
            f"{r['bubble']:.1%}",
            f"{r['peak']}/{r['slots']}",
            f"{r['work']:.4g}/{r['microbatches']}",
            f"{r['samples_per_s']:.4g}",
            ratio(r["vs_best_full"]),
            ratio(r["it_speedup"]),
        ]
        if emulated:
            m = r.get("measured_s")
            line += ["-" if m is None else f"{m:.4g}", "-" if m is None else f"{m / r['iteration_s']:.2f}"]
        table.append(line)
    return HEADER + (EMULATE_HEADER if emulated else ()), table


def markdown(rows: list[dict], verdict_line: str, command: str) -> str:
    """The table as Markdown, the command that made it above and the verdict below."""
    header, cells = _cells(rows)
    out = [f"`{command}`", ""] if command else []
    out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(c) + " |" for c in cells]
    return "\n".join(out + ["", verdict_line, ""])


def bar_chart(rows: list[dict], path: Path, title: str) -> None:
    """Throughput per variant, full pipelines in one colour, the best of them marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(rows) + 2), 4.0))
    colours = ["tab:gray" if r["full_pipeline"] else "tab:blue" for r in rows]
    bars = ax.bar([r["variant"] for r in rows], [r["samples_per_s"] for r in rows], color=colours)
    for bar, r in zip(bars, rows):
        label = "best full" if r["variant"] == r["best_full"] else ratio_label(r)
        ax.annotate(
            label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=8
        )
    ax.set_ylabel("full-model-equivalent samples / s")
    ax.set_title(title, fontsize=10)
    ax.tick_params(axis="x", labelrotation=45)
    fig.tight_layout()
    tmp = path.with_suffix(f".{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def ratio_label(r: dict) -> str:
    return "" if r["vs_best_full"] is None else f"{r['vs_best_full']:.2f}x"
