"""What bench/swarm_bench.py makes of its runs: counts from a run's events, losses at equal
iterations, table rows, the markdown table and the plot. Pure functions of their inputs (tested
in tests/test_swarm_bench.py); the bench runs the nodes and writes the files."""

from __future__ import annotations

import statistics
from collections import Counter
from pathlib import Path


def tally(events: list[dict]) -> dict:
    """Counts of what happened to microbatches and nodes in a run's events (a move: the deciding
    data node's `rebalance` event; the moved node's `moved` event is the same move)."""
    names = Counter(e.get("event") for e in events)
    degraded = {e["iteration"] for e in events if e.get("event") == "iteration_end" and e.get("degraded")}
    back = [e["iteration"] for e in events if e.get("event") == "rejoined"]
    return {
        "rerouted": names["microbatch_rerouted"] + names["microbatch_restarted"],
        "lost": names["microbatch_lost"],
        "moves": names["rebalance"],
        "faults": names["fault"],
        "rejoined": names["rejoined"],
        "rejoined_at": min(back, default=None),
        "degraded_iterations": len(degraded),
    }


def losses(events: list[dict], data_nodes) -> list[list]:
    """[iteration, mean training loss] per iteration: sum loss_sum / sum loss_count over the data nodes."""
    sums: dict[int, tuple[float, int]] = {}
    for e in events:
        if e.get("event") == "iteration_end" and e["node"] in data_nodes and e.get("loss_count"):
            s, c = sums.get(e["iteration"], (0.0, 0))
            sums[e["iteration"]] = (s + e["loss_sum"], c + e["loss_count"])
    return [[it, s / c] for it, (s, c) in sorted(sums.items())]


def spread(values: list[float]) -> tuple[float, float, float] | None:
    """(median, min, max) of the iterations after the first (warm-up); None without any."""
    steady = values[1:]
    return (statistics.median(steady), min(steady), max(steady)) if steady else None


def common_iteration(results: list[dict]) -> int | None:
    """The last iteration every run with a loss completed (losses compare at equal iterations)."""
    last = [r["losses"][-1][0] for r in results if r["losses"]]
    return min(last) if last else None


def row_of(result: dict, loss_at: int | None, sim: dict | None = None) -> dict:
    """One table row: the run's numbers, its loss at `loss_at`, the simulation's when given."""
    s = spread(result["iteration_s"])
    loss = dict((it, x) for it, x in result["losses"]).get(loss_at)
    row = {
        k: result[k]
        for k in (
            "scenario",
            "variant",
            "condition",
            "node",
            "time_scale",
            "exit_code",
            "rerouted",
            "lost",
            "moves",
            "wall_s",
        )
    }
    row.update(
        rejoined=result.get("rejoined", 0),
        median_s=s and s[0],
        lo_s=s and s[1],
        hi_s=s and s[2],
        steady_iterations=len(result["iteration_s"][1:]),
        loss_iteration=loss_at,
        loss=loss,
    )
    return {**row, **(sim or {})}


def num(x, fmt: str = ".2f") -> str:
    return "-" if x is None else format(x, fmt)


def table(rows: list[dict]) -> str:
    """A markdown table of one scenario's rows."""
    lines = [
        "| variant | condition | node | median s/iter | min-max s | simulated s | loss | re-sent | lost "
        "| moves | exit |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        span = "-" if r["lo_s"] is None else f"{r['lo_s']:.2f}-{r['hi_s']:.2f}"
        lines.append(
            f"| {r['variant']} | {r['condition']} | {num(r['node'], 'd')} | {num(r['median_s'])} | "
            f"{span} | {num(r.get('sim_median_s'))} | {num(r['loss'], '.4f')} | {r['rerouted']} | "
            f"{r['lost']} | {r['moves']} | {r['exit_code']} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], paths: list[Path]) -> None:
    """Per scenario a panel: median iteration time per variant under each condition (bars,
    min-max whiskers), the simulated median beside each bar (black diamonds) when present."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = list(dict.fromkeys(r["scenario"] for r in rows))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    conditions = list(dict.fromkeys(r["condition"] for r in rows))
    fig, axes = plt.subplots(len(scenarios), 1, figsize=(9, 3.4 * len(scenarios)), squeeze=False)
    width = 0.8 / len(variants)
    for ax, name in zip(axes[:, 0], scenarios):
        for i, v in enumerate(variants):
            got = [
                (j + (i - (len(variants) - 1) / 2) * width, r)
                for j, c in enumerate(conditions)
                for r in rows
                if (r["scenario"], r["variant"], r["condition"]) == (name, v, c) and r["median_s"] is not None
            ]
            if not got:
                continue
            xs, rs = zip(*got)
            ax.bar(
                xs,
                [r["median_s"] for r in rs],
                width * 0.9,
                color=f"C{i}",
                label=v,
                capsize=2,
                yerr=[[r["median_s"] - r["lo_s"] for r in rs], [r["hi_s"] - r["median_s"] for r in rs]],
            )
            sim = [(x + width * 0.3, r) for x, r in got if r.get("sim_median_s") is not None]
            if sim:
                ax.errorbar(
                    [x for x, _ in sim],
                    [r["sim_median_s"] for _, r in sim],
                    fmt="D",
                    ms=3,
                    color="black",
                    yerr=[
                        [r["sim_median_s"] - r["sim_lo_s"] for _, r in sim],
                        [r["sim_hi_s"] - r["sim_median_s"] for _, r in sim],
                    ],
                    label="simulated" if i == 0 else None,
                )
        ax.set_xticks(range(len(conditions)), conditions)
        ax.set_title(name)
        ax.set_ylabel("s / iteration (scenario)")
        ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    for p in paths:
        fig.savefig(p, dpi=120)
    plt.close(fig)
