"""Timelines: the JSONL event stream shared by the simulator and the runtime, and its renderings.

Events (times in seconds from the iteration's start; one JSON object per line):

    {"t": start_s, "node": n, "event": "op", "kind": "F"|"L"|"B"|"W"|"AVG",
     "microbatch": mb or null, "hop": h or null, "stage": s, "dur": seconds, "iteration": i}
    {"t": send_start_s, "node": src, "event": "send", "dst": d, "microbatch": mb,
     "bytes": b, "arrive": t}

`t` of a send is when the sender hands the message over; the simulator adds an optional
`wire_start` (its serialization start after queueing on the link) and `iteration`. Readers must
accept other event kinds and extra keys. Each node of the runtime writes its own file;
`read_jsonl` merges several. Renderings: Chrome trace (chrome://tracing, Perfetto) and a Gantt PNG
that draws several timelines (e.g. predicted and measured) one above the other.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

from .errors import SkipPipeError

log = logging.getLogger(__name__)

US_PER_S = 1e6  # Chrome trace timestamps are in microseconds
KIND_COLORS = {"F": "#4c72b0", "L": "#dd8452", "B": "#55a868", "W": "#8172b3", "AVG": "#8c8c8c"}
OTHER_COLOR = "#c44e52"
LABEL_MIN_FRACTION = 0.015  # write the microbatch id in bars at least this share of the x range
BAR_HEIGHT = 0.8  # rows are 1 apart
ROW_HEIGHT_IN = 0.32  # figure inches per node row
MIN_PLOT_HEIGHT_IN = 1.6
FIG_WIDTH_IN = 14.0
LEGEND_HEIGHT_IN = 0.3
LABEL_FONT_PT = 6
DPI = 120


class TimelineError(SkipPipeError):
    """A timeline file that cannot be read."""


def write_jsonl(events: Iterable[dict], path: str | Path) -> Path:
    """Write events one JSON object per line (parent folders created). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for e in events:
            f.write(json.dumps(e, separators=(",", ":")) + "\n")
    return path


def read_jsonl(paths: str | Path | Sequence[str | Path]) -> list[dict]:
    """Read and merge event files, sorted by (t, node).

    `paths` is one file, a folder (all its *.jsonl files: one per node) or a list of either.
    Blank lines are skipped; a line that is not a JSON object (e.g. cut off when a node died)
    is skipped with a warning."""
    files = _expand(paths)
    events: list[dict] = []
    for f in files:
        events += _read_one(f)
    return sorted(events, key=lambda e: (e.get("t", 0.0), e.get("node", -1)))


def _expand(paths: str | Path | Sequence[str | Path]) -> list[Path]:
    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    files: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            files += sorted(item.glob("*.jsonl"))
        elif item.is_file():
            files.append(item)
        else:
            raise TimelineError(f"{item}: no such timeline file or folder")
    return files


def _read_one(path: Path) -> list[dict]:
    out, bad = [], 0
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise TimelineError(f"{path}: cannot read: {e.strerror}") from None
    for line in lines:
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            event = None
        if isinstance(event, dict) and "t" in event and "node" in event:
            out.append(event)
        else:
            bad += 1
    if bad:
        log.warning("%s: skipped %d unreadable line(s)", path, bad)
    return out


# ----------------------------------------------------------------------------------------------
# Chrome trace


def chrome_trace(events: Iterable[dict], path: str | Path) -> Path:
    """Write a Chrome trace (JSON object format): one process per node, ops on thread
    'compute', each outgoing link on its own thread 'send->dst' (hand-off to arrival)."""
    events = list(events)
    trace = [_trace_event(e) for e in events if e.get("event") in ("op", "send")]
    trace += _process_names(events)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"traceEvents": trace, "displayTimeUnit": "ms"}))
    return path


def _trace_event(e: dict) -> dict:
    if e["event"] == "op":
        name = e["kind"] if e.get("microbatch") is None else f"{e['kind']} mb{e['microbatch']}"
        if e.get("hop") is not None:
            name += f" h{e['hop']}"
        return {
            "name": name,
            "cat": e["kind"],
            "ph": "X",
            "ts": e["t"] * US_PER_S,
            "dur": e["dur"] * US_PER_S,
            "pid": e["node"],
            "tid": "compute",
            "args": e,
        }
    return {
        "name": f"mb{e['microbatch']} -> {e['dst']}",
        "cat": "send",
        "ph": "X",
        "ts": e["t"] * US_PER_S,
        "dur": max(0.0, e["arrive"] - e["t"]) * US_PER_S,
        "pid": e["node"],
        "tid": f"send->{e['dst']}",
        "args": e,
    }


def _process_names(events: list[dict]) -> list[dict]:
    stages = _stages(events)
    return [
        {
            "name": "process_name",
            "ph": "M",
            "pid": n,
            "tid": "compute",
            "args": {"name": _row_label(n, stages.get(n))},
        }
        for n in sorted(_nodes(events))
    ]


# ----------------------------------------------------------------------------------------------
# Gantt


def gantt_png(timelines: Sequence[tuple[str, Iterable[dict]]], path: str | Path, columns: int = 1) -> Path:
    """One subplot per (title, events), `columns` side by side (filled row by row), all sharing
    the x axis (seconds) so their lengths compare; rows are nodes labelled with id and stage,
    bars coloured by kind (F, L, B, W, AVG), microbatch ids in wide bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    timelines = [(title, [e for e in events if e.get("event") == "op"]) for title, events in timelines]
    if not timelines:
        raise TimelineError("gantt_png needs at least one timeline")
    if columns < 1:
        raise TimelineError(f"gantt_png needs at least one column, not {columns}")
    columns = min(columns, len(timelines))
    grid = [timelines[i : i + columns] for i in range(0, len(timelines), columns)]
    heights = [
        max(MIN_PLOT_HEIGHT_IN, ROW_HEIGHT_IN * (max(len(_nodes(ev)) for _, ev in row) + 1)) for row in grid
    ]
    fig, axes = plt.subplots(
        len(grid),
        columns,
        sharex=True,
        squeeze=False,
        figsize=(FIG_WIDTH_IN, sum(heights)),
        gridspec_kw={"height_ratios": heights},
    )
    span = max((e["t"] + e["dur"] for _, ev in timelines for e in ev), default=1.0) or 1.0
    for i, ax in enumerate(axes.flat):
        if i < len(timelines):
            _draw(ax, *timelines[i], span)
        else:
            ax.set_axis_off()  # a last row with fewer panels than columns: the panel
            axes.flat[i - columns].xaxis.set_tick_params(labelbottom=True)  # above shows the axis
    for ax in axes[-1, :]:
        ax.set_xlabel("time (s)")
        ax.xaxis.set_tick_params(labelbottom=True)
    handles = [Patch(color=c, label=k) for k, c in KIND_COLORS.items()]
    height = sum(heights) + LEGEND_HEIGHT_IN  # the legend gets its own strip above the panels
    fig.set_figheight(height)
    fig.legend(handles=handles, loc="upper right", ncol=len(handles), fontsize="small", frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - LEGEND_HEIGHT_IN / height))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _draw(ax, title: str, ops: list[dict], span_s: float) -> None:
    stages = _stages(ops)
    nodes = sorted(_nodes(ops))
    row = {n: i for i, n in enumerate(nodes)}
    for e in ops:
        y = row[e["node"]]
        color = KIND_COLORS.get(e["kind"], OTHER_COLOR)
        ax.barh(y, e["dur"], left=e["t"], height=BAR_HEIGHT, color=color, edgecolor="white", linewidth=0.3)
        if e.get("microbatch") is not None and e["dur"] >= LABEL_MIN_FRACTION * span_s:
            ax.text(
                e["t"] + e["dur"] / 2,
                y,
                str(e["microbatch"]),
                ha="center",
                va="center",
                fontsize=LABEL_FONT_PT,
                color="white",
            )
    ax.set_yticks(range(len(nodes)), [_row_label(n, stages.get(n)) for n in nodes])
    ax.set_ylim(len(nodes) - 0.5 + (1 - BAR_HEIGHT), -0.5 - (1 - BAR_HEIGHT))
    ax.set_xlim(0, span_s)
    ax.set_title(title, fontsize="medium", loc="left")
    ax.grid(axis="x", alpha=0.3)


def _nodes(events: Iterable[dict]) -> set[int]:
    return {e["node"] for e in events if "node" in e}


def _stages(events: Iterable[dict]) -> dict[int, tuple[int, ...]]:
    """node -> the stages its events name (two under DualPipeV's V placement)."""
    out: dict[int, set[int]] = {}
    for e in events:
        if e.get("stage") is not None:
            out.setdefault(e["node"], set()).add(e["stage"])
    return {n: tuple(sorted(s)) for n, s in out.items()}


def _row_label(node: int, stages: tuple[int, ...] | None) -> str:
    if not stages:
        return f"node {node}"
    return f"node {node} (stage{'s' if len(stages) > 1 else ''} {'+'.join(map(str, stages))})"
