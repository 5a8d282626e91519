"""Iteration times for the study's time to target: the paths each variant trained, simulated on
the study's own scenario (its nodes, network and model costs) at the scenario's memory slots,
against the best full-pipeline schedule at that memory.

- `baseline`: every full pipeline trains the same model on the same microbatches (only the
  order of the operations differs, the gradients of an iteration do not), so the baseline's
  learning curve holds for any of them; its time is that of the best full-pipeline variant at
  equal memory as `python -m skippipe compare` picks it (compare_rows: the most full-model
  samples per second) on the study scenario. `python -m skippipe study-times` (commands/
  study_times.py) plans them, adds the times below and writes the file.
- `ca-partial`, `random`: their trained stage sequences, unchanged. Which node of a stage runs a
  hop does not change training, so each gets the fastest node choice a local search finds
  (first-come-first-served dispatch, on the full pipelines' allocation), by the same rule.
- `layerdrop`: its paths change every iteration, so it has no plan of its own: each sampled
  iteration's draws (layerdrop.py, the first seed) thin the baseline's full pipelines (their
  nodes kept, the dropped stages skipped), and its time is the mean over the samples.

The file records the comparator, the scenario and what the times were made from; the report
uses it only when its fingerprint matches the study's settings and paths.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from pathlib import Path

from ..errors import SkipPipeError
from .layerdrop import VARIANT as LAYERDROP
from .layerdrop import keep_probability, layerdrop_paths

TIMES_FILE = "times.json"  # in the study's results folder, beside the runs
LAYERDROP_SAMPLES = 32  # iterations of LayerDrop draws averaged
MAX_PASSES = 4  # local-search passes over every hop (each pass keeps only improvements)
SKIP_VARIANTS = ("ca-partial", "random")


def fingerprint(settings: str, paths: dict, effort: str, seed: int) -> dict:
    from .runs import settings_digest

    return {
        "settings": settings_digest(settings),
        "effort": effort,
        "seed": seed,
        "paths": {v: [list(p) for p in ps] for v, ps in sorted(paths.items())},
        "layerdrop_samples": LAYERDROP_SAMPLES,
    }


def _with_paths(sched, name: str, paths, loss_at: str = "origin"):
    """`sched` holding one more variant `name`: `paths` dispatched first come first served, the
    loss at `loss_at` (a partial path may skip the last stage: at its origin)."""
    from ..schedule import VariantSchedule

    variant = VariantSchedule(name, tuple(paths), loss_at=loss_at)
    return dataclasses.replace(sched, variants={**sched.variants, name: variant})


def _simulated(sched, name: str, paths, scenario, loss_at: str = "origin"):
    """The simulation of `paths` (fcfs); an error if they exceed the memory slots."""
    from ..sim.simulate import simulate

    sim = simulate(_with_paths(sched, name, paths, loss_at), name, scenario)
    over = [s.node for s in sim.per_node if s.peak_activations > scenario.nodes[s.node].memory_slots]
    if over:
        raise SkipPipeError(f"{name}: node {over[0]} holds more activations than its memory slots")
    return sim


def _iteration_s(sched, name: str, paths, scenario) -> float:
    return _simulated(sched, name, paths, scenario).iteration_s


def split_s(sched, scenario, paths, loss_at: str = "origin") -> float:
    """The iteration time of `paths` with the backward split, as ca-partial-zb splits
    ca-partial's (zb_fill.py: the fcfs order replayed, W ops moved into idle gaps), or the
    fused one's when that is faster."""
    from ..planner.zb_fill import zero_bubble_fill
    from ..schedule import VariantSchedule
    from ..sim.simulate import simulate

    fused = _simulated(sched, "ca-partial", paths, scenario, loss_at)
    source = VariantSchedule(
        "ca-partial", tuple(paths), order=fused.order, dispatch="planned", loss_at=loss_at
    )
    split = zero_bubble_fill("ca-partial-zb", source, scenario, sched.allocation)
    filled = dataclasses.replace(sched, variants={**sched.variants, split.name: split})
    return min(fused.iteration_s, simulate(filled, split.name, scenario).iteration_s)


def _dealt(sched, scenario, sequences):
    """The sequences on nodes: each stage's visits dealt round-robin over its nodes."""
    from ..planner.paths import microbatch_ids
    from ..schedule import Hop, MicrobatchPath

    stages = sched.allocation
    ids = microbatch_ids(stages, scenario)
    if len(ids) != len(sequences):
        raise SkipPipeError(
            f"{len(sequences)} trained paths for {len(ids)} microbatches per iteration of {scenario.name}"
        )
    dealt = {s: 0 for s in range(len(stages))}
    paths = []
    for (mb, origin), seq in zip(ids, sequences):
        hops = [Hop(0, origin)]
        for stage in seq[1:]:
            hops.append(Hop(stage, stages[stage][dealt[stage] % len(stages[stage])]))
            dealt[stage] += 1
        paths.append(MicrobatchPath(mb, origin, tuple(hops)))
    return paths


def fastest_nodes(sched, scenario, name: str, sequences) -> tuple[list, float]:
    """The sequences on the nodes a first-improvement local search finds fastest (each hop
    after the origin tried on each node of its stage), and their iteration time."""
    from ..schedule import MicrobatchPath

    paths = _dealt(sched, scenario, sequences)
    best = _iteration_s(sched, name, paths, scenario)
    for _ in range(MAX_PASSES):
        improved = False
        for i, path in enumerate(paths):
            for j, hop in enumerate(path.hops[1:], start=1):
                for node in sched.allocation[hop.stage]:
                    if node == path.hops[j].node:
                        continue
                    hops = path.hops[:j] + (dataclasses.replace(hop, node=node),) + path.hops[j + 1 :]
                    trial = paths[:i] + [MicrobatchPath(path.microbatch, path.origin, hops)] + paths[i + 1 :]
                    t = _iteration_s(sched, name, trial, scenario)
                    if t < best - 1e-12:
                        paths, best, path, improved = trial, t, trial[i], True
        if not improved:
            break
    return paths, best


def layerdrop_s(sched, scenario, seed: int, split: bool = False) -> float:
    """Mean iteration time of the baseline's full pipelines thinned by LayerDrop's draws (with
    the backward split: split_s)."""
    from ..schedule import MicrobatchPath

    pipe = scenario.pipeline
    keep = keep_probability(pipe.path_length, pipe.n_stages)
    full = sorted(sched.variants["baseline"].paths, key=lambda p: p.microbatch)
    times = []
    for iteration in range(LAYERDROP_SAMPLES):
        kept = layerdrop_paths(len(full), pipe.n_stages, keep, seed, iteration)
        thinned = [
            MicrobatchPath(p.microbatch, p.origin, tuple(h for h in p.hops if h.stage in ks))
            for p, ks in zip(full, kept)
        ]
        times.append(
            split_s(sched, scenario, thinned) if split else _iteration_s(sched, "random", thinned, scenario)
        )
    return statistics.fmean(times)


def skip_times(sched, scenario, paths: dict, seed: int) -> tuple[dict, dict, dict]:
    """Of the skip variants' trained `paths` and of LayerDrop, on `sched`'s full pipelines
    (their allocation, the baseline's paths): (variant -> simulated iteration time, fused
    backward; variant -> how; variant -> the same with the backward split)."""
    times, how, split = {}, {}, {}
    for name in SKIP_VARIANTS:
        if name in paths:
            # simulated under one partial variant's name: the name only selects the rules
            nodes, times[name] = fastest_nodes(sched, scenario, "random", paths[name])
            split[name] = split_s(sched, scenario, nodes)
            how[name] = "trained stage sequences, fastest nodes found, fcfs"
    times[LAYERDROP] = layerdrop_s(sched, scenario, seed)
    split[LAYERDROP] = layerdrop_s(sched, scenario, seed, split=True)
    how[LAYERDROP] = f"baseline full pipelines thinned, mean of {LAYERDROP_SAMPLES} iterations' draws"
    return times, how, split


def comparator_label(times: dict) -> str:
    """E.g. "vs zb-h1 at 3 slots, the best full pipeline at equal memory (study-6x1)"."""
    slots = "-".join(map(str, times["memory_slots"]))
    return (
        f"vs {times['comparator']} at {slots} slots, the best full pipeline at equal memory "
        f"({times['scenario']})"
    )


def write_times(results: Path, content: dict) -> Path:
    from .runs import write_result

    for v, s in content["iteration_s"].items():
        if not (isinstance(s, float) and math.isfinite(s) and s > 0):
            raise SkipPipeError(f"{v}: simulated iteration time {s!r} is not a positive number")
    path = Path(results) / TIMES_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_result(path, content)
    except OSError as e:
        raise SkipPipeError(f"cannot write {path}: {e.strerror or e}") from None
    return path


def load_times(
    results: Path, settings: str, paths: dict, effort: str | None = None, seed: int | None = None
) -> dict | None:
    """The stored times when they were made for these settings and paths (any effort and seed
    unless given), else None."""
    from .runs import load_result

    stored = load_result(Path(results) / TIMES_FILE, None)
    if not stored or not isinstance(stored.get("fingerprint"), dict):
        return None
    want = fingerprint(
        settings, paths, stored["fingerprint"].get("effort"), stored["fingerprint"].get("seed")
    )
    if (
        stored["fingerprint"] != want
        or effort not in (None, want["effort"])
        or seed not in (None, want["seed"])
    ):
        return None
    return stored
