"""Pictures of runs: the measured timeline of one iteration beside the simulator's prediction."""
from __future__ import annotations

from pathlib import Path

from .emulation import Emulation
from .runconfig import RunConfig, events_dir
from ..scenario import Scenario
from ..schedule import Schedule
from ..sim.simulate import simulate
from ..timeline import gantt_png, read_jsonl

TIMED_EVENTS = ("op", "send")


def measured_iteration(cfg: RunConfig, iteration: int) -> list[dict]:
    """One iteration's op/send events, in scenario seconds from that iteration's first event."""
    events = [e for e in read_jsonl(events_dir(cfg.run_dir))
              if e.get("event") in TIMED_EVENTS and e.get("iteration") == iteration]
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


def measured_vs_predicted_gantt(cfg: RunConfig, sched: Schedule, sc: Scenario, path: str | Path,
                                iteration: int | None = None) -> Path:
    """Gantt PNG: predicted (simulator) on top, measured below, both in scenario seconds.
    The default iteration is the last one (warm-up done)."""
    it = cfg.iterations - 1 if iteration is None else iteration
    predicted = simulate(sched, cfg.variant, sc).events
    return gantt_png([(f"predicted ({cfg.variant})", predicted),
                      (f"measured, iteration {it} (time scale {cfg.time_scale:g})", measured_iteration(cfg, it))],
                     path)
