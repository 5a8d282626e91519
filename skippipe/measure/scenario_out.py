"""From measurements to a scenario file: one location per node, links and compute speeds from the
figures, [model]/[costs]/[training] and (fitted to the node count) [pipeline] from a template,
and a header comment with the raw figures (`summary_lines`) and memory warnings."""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

from ..util.tables import format_table
from .figures import GIB, MIB, MeasureError, Measurements, Settings, median, significant
from .toml_writer import dump_toml


def proportional(weights: Sequence[int], total: int) -> list[int]:
    """`total` split into len(weights) integers >= 1, proportional to `weights` (largest
    remainder; ties go to the lower index)."""
    n = len(weights)
    if total < n:
        raise MeasureError(f"{total} nodes cannot fill {n} stages")
    exact = [total * w / sum(weights) for w in weights]
    sizes = [max(1, math.floor(e)) for e in exact]
    while sum(sizes) < total:
        sizes[min(range(n), key=lambda i: (sizes[i] - exact[i], i))] += 1
    while sum(sizes) > total:
        sizes[min((i for i in range(n) if sizes[i] > 1), key=lambda i: (exact[i] - sizes[i], i))] -= 1
    return sizes


def fit_pipeline(
    pipeline: dict, n_layers: int, n_nodes: int, stage_sizes: Sequence[int] | None = None
) -> tuple[dict, list[str]]:
    """The template's [pipeline] table for `n_nodes` nodes: `stage_sizes` when given, else the
    template's when they sum to n_nodes, else the template's proportions over as many stages
    as the nodes allow (fewer only when there are fewer nodes than stages: the most that
    divide the layers); path_length capped at the stage count. Returns the table and notes."""
    sizes = [int(s) for s in pipeline["stage_sizes"]]
    if stage_sizes is not None:
        new = [int(s) for s in stage_sizes]
    elif sum(sizes) == n_nodes:
        new = sizes
    else:
        s = len(sizes)
        if n_nodes < s:
            s = next((c for c in range(n_nodes, 1, -1) if n_layers % c == 0), 0)
            if not s:
                raise MeasureError(f"{n_nodes} nodes cannot hold {n_layers} layers in 2 or more stages")
        new = proportional(sizes[:s], n_nodes)
    out, notes = {**pipeline, "stage_sizes": new}, []
    if new != sizes:
        notes.append(f"pipeline.stage_sizes {sizes} -> {new} for {n_nodes} nodes")
    if out["path_length"] > len(new):
        notes.append(f"pipeline.path_length {out['path_length']} -> {len(new)} (stages)")
        out["path_length"] = len(new)
    return out, notes


def location(node: int) -> str:
    return f"node-{node}"


def render_scenario(
    template,
    meas: Measurements,
    settings: Settings,
    name: str,
    command: str,
    stage_sizes: Sequence[int] | None = None,
    when: str | None = None,
) -> str:
    """Scenario TOML text for the measured cluster; [model]/[costs]/[training] and (fitted to
    the node count) [pipeline] come from `template`, a loaded Scenario."""
    n = len(meas.nodes)
    pipeline, notes = fit_pipeline(
        dataclasses.asdict(template.pipeline), template.model.n_layers, n, stage_sizes
    )
    when = when or time.strftime("%Y-%m-%d %H:%M:%S %Z")
    locs = [location(f.node) for f in meas.nodes]
    links = [
        {
            "a": location(ln.a),
            "b": location(ln.b),
            "latency_ms": significant(ln.latency_s * 1e3),
            "bandwidth_gib_s": significant(ln.bandwidth_bytes_per_s / GIB),
        }
        for ln in meas.links
    ]
    doc = {
        "name": name,
        "description": f"{n} nodes measured {when}; model and training from {template.name}",
        "model": dataclasses.asdict(template.model),
        "pipeline": pipeline,
        "costs": dataclasses.asdict(template.costs),
        "training": dataclasses.asdict(template.training),
        "network": {
            "name": f"{name}-links",
            "locations": locs,
            "compute_s_per_sample_per_layer": {
                loc: significant(f.forward_median_s) for loc, f in zip(locs, meas.nodes)
            },
            "same_location_link": {
                "latency_ms": min(ln["latency_ms"] for ln in links),
                "bandwidth_gib_s": max(ln["bandwidth_gib_s"] for ln in links),
            },
            "links": links,
        },
        "nodes": [{"location": loc, "memory_slots": pipeline["memory_slots"]} for loc in locs],
    }
    header = [
        f"Measured by: {command}",
        f"Date: {when}; {n} nodes, {meas.wall_s:.1f} s of measuring.",
        f"Template: {template.source} ({template.name}): [model] [pipeline] [costs] [training] copied",
        *notes,
        "Locations node-<i> are the nodes; same_location_link (unused: one node per location) "
        "holds the fastest measured figures.",
        "compute_s_per_sample_per_layer = measured forward; backward is costs.backward_factor "
        "x forward (measured ratio below).",
        "",
        *summary_lines(meas, settings),
        *memory_warnings(meas, pipeline["memory_slots"]),
    ]
    return dump_toml(doc, header)


NODE_HEADER = (
    "node",
    "host",
    "device",
    "forward s",
    "(min..max)",
    "backward s",
    "bwd/fwd",
    "peak MiB",
    "act MiB/mb",
)
LINK_HEADER = ("link", "rtt ms", "(min..max)", "transfer ms", "(min..max)", "latency ms", "GiB/s")
HOST_CHARS = 12  # host names are cut to this in the node table


def summary_lines(meas: Measurements, settings: Settings) -> list[str]:
    """The raw figures, one line per node and per link."""
    f0 = meas.nodes[0]
    lines = [
        f"Compute: one stage of {f0.layers} layers, {f0.samples} samples per timing, "
        f"{f0.threads} CPU thread(s), median of {settings.repeat} after {settings.warmup} "
        "warm-up; seconds per sample per layer"
    ]
    rows = [
        (
            f.node,
            f.host[:HOST_CHARS],
            f.device,
            f.forward_median_s,
            _spread(f.forward_s, 1, ".3g"),
            f.backward_median_s,
            f.backward_median_s / f.forward_median_s,
            f.peak_memory_bytes / MIB,
            f.activation_bytes / MIB,
        )
        for f in meas.nodes
    ]
    lines += format_table(
        NODE_HEADER, rows, ["", "", "", ".4g", "", ".4g", ".2f", ".1f", ".2f"], ">" + "<<" + ">" * 6
    ).splitlines()
    names = {f.device_name for f in meas.nodes}
    devices = (
        f"all {names.pop()}"
        if len(names) == 1
        else ", ".join(f"{f.node}: {f.device_name}" for f in meas.nodes)
    )
    kinds = " / ".join(sorted({f.memory_kind for f in meas.nodes}))
    lines.append(f"peak memory: {kinds} (stage, gradients, activations); devices: {devices}")
    lines.append(
        f"Links: RTT = median of {settings.repeat} CONTROL ping-pongs; bandwidth = payload / "
        f"(elapsed - RTT), median of {settings.repeat} transfers of "
        f"{settings.payload_bytes / MIB:g} MiB; latency = RTT / 2"
    )
    rows = [
        (
            f"{ln.a}-{ln.b}",
            ln.rtt_median_s * 1e3,
            _spread(ln.rtt_s, 1e3, ".3f"),
            median(ln.transfer_s) * 1e3,
            _spread(ln.transfer_s, 1e3, ".3f"),
            ln.latency_s * 1e3,
            ln.bandwidth_bytes_per_s / GIB,
        )
        for ln in meas.links
    ]
    lines += format_table(
        LINK_HEADER, rows, ["", ".3f", "", ".3f", "", ".4f", ".3f"], ">" * len(LINK_HEADER)
    ).splitlines()
    return lines


def _spread(values: Sequence[float], scale: float, spec: str) -> str:
    """'(min..max)' of `values` times `scale`."""
    return f"({format(min(values) * scale, spec)}..{format(max(values) * scale, spec)})"


def memory_warnings(meas: Measurements, slots: int) -> list[str]:
    """Nodes whose memory cannot hold `slots` microbatches' activations besides the stage."""
    out = []
    for f in meas.nodes:
        need = f.peak_memory_bytes + (slots - 1) * f.activation_bytes
        if f.capacity_bytes and need > f.capacity_bytes:
            out.append(
                f"WARNING: node {f.node} needs ~{need / GIB:.2f} GiB for {slots} memory slots, "
                f"its device has {f.capacity_bytes / GIB:.2f} GiB"
            )
    return out


def write_scenario(text: str, out: str | Path):
    """Write `text` to `out` atomically once load_scenario accepts it; returns the Scenario."""
    from ..scenario import load_scenario

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        load_scenario(tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return load_scenario(out)
