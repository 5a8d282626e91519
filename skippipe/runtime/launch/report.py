"""Pictures of runs: the measured timeline of one iteration beside the simulator's prediction,
and each stage's measured gradient averaging beside the cost model's (Costs.averaging_s)."""

from __future__ import annotations

import statistics
from pathlib import Path

from ...costs import Costs
from ...scenario import Scenario
from ...schedule import Schedule
from ...sim.simulate import simulate
from ...timeline import gantt_png, read_jsonl
from ...variants import variant
from ..node.emulation import Emulation
from ..node.runconfig import RunConfig, events_dir

TIMED_EVENTS = ("op", "send")


def measured_iteration(cfg: RunConfig, iteration: int) -> list[dict]:
    """One iteration's op/send events, in scenario seconds from that iteration's first event."""
    events = [
        e
        for e in read_jsonl(events_dir(cfg.run_dir))
        if e.get("event") in TIMED_EVENTS and e.get("iteration") == iteration
    ]
    if not events:
        return []
    t0 = min(e["t"] for e in events)
    to_scenario = Emulation.from_config(cfg).scenario_s
    out = []
    for e in events:
        e = dict(e, t=to_scenario(e["t"] - t0))
        if "dur" in e:
            e["dur"] = to_scenario(e["dur"])
        if "arrive" in e:
            e["arrive"] = to_scenario(e["arrive"] - t0)
        out.append(e)
    return out


def measured_vs_predicted_gantt(
    cfg: RunConfig, sched: Schedule, sc: Scenario, path: str | Path, iteration: int | None = None
) -> Path:
    """Gantt PNG: predicted (simulator) on top, measured below, both in scenario seconds.
    The default iteration is the last one (warm-up done)."""
    it = cfg.iterations - 1 if iteration is None else iteration
    predicted = simulate(sched, cfg.variant, sc).events
    return gantt_png(
        [
            (f"predicted ({cfg.variant})", predicted),
            (f"measured, iteration {it} (time scale {cfg.time_scale:g})", measured_iteration(cfg, it)),
        ],
        path,
    )


def averaging_windows(cfg: RunConfig, sc: Scenario) -> list[dict]:
    """One row per (iteration, stage) that averaged among two or more nodes, in scenario
    seconds. As in the simulator, a stage's averaging starts when its last node starts it;
    `measured_s` runs until the last node is done, `earliest_s` until the first one is (a node
    done before the modelled time would start its next iteration too early)."""
    groups: dict[tuple[int, int], list[dict]] = {}
    for e in read_jsonl(events_dir(cfg.run_dir)):
        if e.get("event") == "op" and e.get("kind") == "AVG":
            groups.setdefault((e["iteration"], e["stage"]), []).append(e)
    to_scenario, costs = Emulation.from_config(cfg).scenario_s, Costs(sc)
    rows, n_stages = [], sc.pipeline.n_stages
    v_placed = variant(cfg.variant).v_placed
    for (it, stage), evs in sorted(groups.items()):
        nodes = sorted(e["node"] for e in evs)
        if len(nodes) < 2:
            continue
        start, ends = max(e["t"] for e in evs), [e["t"] + e["dur"] for e in evs]
        rows.append(
            {
                "iteration": it,
                "stage": stage,
                "nodes": nodes,
                "measured_s": to_scenario(max(ends) - start),
                "earliest_s": to_scenario(min(ends) - start),
                # a V-placed node averages its stage and the mirror one in turn
                "modelled_s": sum(
                    costs.averaging_s(s, nodes)
                    for s in ({stage, n_stages - 1 - stage} if v_placed else {stage})
                ),
            }
        )
    return rows


def averaging_by_stage(windows: list[dict]) -> list[dict]:
    """Per stage: medians over the iterations after the first (its averaging opens the
    connections inside the stage), and measured / modelled."""
    steady = [w for w in windows if w["iteration"] > 0] or windows
    out = []
    for stage in sorted({w["stage"] for w in steady}):
        ws = [w for w in steady if w["stage"] == stage]
        med = {k: statistics.median(w[k] for w in ws) for k in ("measured_s", "earliest_s", "modelled_s")}
        out.append(
            {
                "stage": stage,
                "nodes": len(ws[-1]["nodes"]),
                "iterations": len(ws),
                **med,
                "ratio": med["measured_s"] / med["modelled_s"],  # > 0: two or more nodes
                "earliest_ratio": med["earliest_s"] / med["modelled_s"],
            }
        )
    return out


def averaging_lines(cfg: RunConfig, sc: Scenario) -> list[str]:
    """The launcher's per-stage averaging lines (none when no stage averaged)."""
    return [
        f"averaging stage {r['stage']} ({r['nodes']} nodes): measured {r['measured_s']:.3f} s, "
        f"modelled {r['modelled_s']:.3f} s, measured/modelled {r['ratio']:.2f} "
        f"(first node done at {r['earliest_ratio']:.2f})"
        for r in averaging_by_stage(averaging_windows(cfg, sc))
    ]
