"""The classic pipeline schedules beside SkipPipe: naive, GPipe, 1F1B, ZB-H1 and DualPipeV.

Each is a full pipeline over the baseline's paths (DT-FM's columns: the same microbatches per
iteration as every variant; DualPipeV: the V paths of its V placement, planner/dualpipev.py)
and a per-node action list that nodes run exactly (dispatch "planned"). One function per family
turns a node's microbatches into its pattern; the rest is shared.

How the per-stage schedules of the papers map onto SkipPipe's ring:
- Stage i of the classic pipeline is stage i here (p = the scenario's stages). A microbatch runs
  F at stages 0..p-1, then the loss L, then B at stages p-1..0. Where L runs is the variant's
  `loss_at` (variants.default_loss_at): on the last stage by default, as in the papers, where
  the LM head follows the last forward at once; or at the origin (SkipPipe's ring: the data node
  holds the labels and the head, so the last stage's output travels back before any backward).
- The classic last stage computes its loss the moment its forward ends. Here the node holding
  the loss runs each L as soon as its input has arrived and the node is free, ahead of its own
  pattern: a dry run of the simulator with L *floating* (dispatch.Dispatcher) places every L,
  and the run order it produced (start times included) is the variant's action list. On the
  last stage that is the classic schedule; at the origin, when the loss must wait for an op the
  origin is running, the ring pays for it.
- Columns and rounds: round r is every column's r-th microbatch (memory.rounds). A node serving
  several columns (a stage narrower than stage 0) treats one round as one classic microbatch:
  the round's microbatches run back to back, in microbatch order. With one column this is the
  textbook schedule.
- Memory follows each family's own rule (memory.family_limits), declared per node as the
  variant's activation limits: GPipe holds every microbatch it serves, 1F1B p - i rounds at
  stage i, ZB-H1 p rounds (W frees the slot), naive one round.

Patterns (rounds k = 0..n-1 at one node of stage i; F(k)/B(k)/W(k): that round's ops there):
- naive: F(k) B(k) for each k (stop and wait: one round in flight).
- gpipe: every F(k), then every B(k) in reverse (fill, then drain).
- 1f1b: warm-up F(0..p-i-2), then F(k+p-i-1) B(k) for each k (PipeDream-flush), then the drain.
- zb-h1: 1f1b's F and B, the backward split; stage i runs W(k-i) after B(k) and the last i W's
  at the end (Qi et al. 2024: W deferred into the bubbles, in-flight rounds p at every stage).
- dualpipev: the node of rank r holds stages r and p-1-r; planner/dualpipev.py has its steps.
"""
from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from typing import Callable, Sequence

from ..memory import FAMILIES, family_limits, rounds
from ..ops import B, F, L, Op, OpKind, W, node_of
from ..placement import stages_of
from ..scenario import Scenario
from ..schedule import MicrobatchPath, Provenance, Schedule, VariantSchedule
from ..variants import V_PLACED, default_loss_at
from .baselines import AllocationLike, baseline_variant
from .dualpipev import Wave, dualpipev, v_paths
from .paths import PlanningError

SPLIT_BACKWARD = ("zb-h1", "dualpipev")


def _ops(kind: Callable[[int, int], Op], wave: Wave) -> list[Op]:
    return [kind(mb, hop) for mb, hop in wave]


def naive(waves: Sequence[Wave], stage: int, n_stages: int) -> list[Op]:
    return [op for wave in waves for op in _ops(F, wave) + _ops(B, wave)]


def gpipe(waves: Sequence[Wave], stage: int, n_stages: int) -> list[Op]:
    return ([op for wave in waves for op in _ops(F, wave)]
            + [op for wave in reversed(waves) for op in reversed(_ops(B, wave))])


def one_f_one_b(waves: Sequence[Wave], stage: int, n_stages: int, w_lag: int | None = None) -> list[Op]:
    """1F1B; with `w_lag`, the split backward's W of round k - w_lag follows B of round k."""
    n, warm = len(waves), n_stages - stage - 1
    out = [op for wave in waves[:warm] for op in _ops(F, wave)]
    for k in range(n):
        if k + warm < n:
            out += _ops(F, waves[k + warm])
        out += _ops(B, waves[k])
        if w_lag is not None and k >= w_lag:
            out += _ops(W, waves[k - w_lag])
    if w_lag is not None:
        out += [op for wave in waves[max(0, n - w_lag):] for op in _ops(W, wave)]
    return out


def zb_h1(waves: Sequence[Wave], stage: int, n_stages: int) -> list[Op]:
    return one_f_one_b(waves, stage, n_stages, w_lag=stage)


PATTERNS: dict[str, Callable[[Sequence[Wave], int, int], list[Op]]] = {
    "naive": naive, "gpipe": gpipe, "1f1b": one_f_one_b, "zb-h1": zb_h1, "dualpipev": dualpipev}
assert tuple(PATTERNS) == FAMILIES


def family_variant(name: str, scenario: Scenario, allocation: AllocationLike,
                   loss_at: str | None = None) -> VariantSchedule:
    """Variant `name` (one of memory.FAMILIES) on the baseline's paths, its order placed by a
    dry run of the simulator (see the module docstring), its loss at `loss_at` (default: the
    family's). Raises PlanningError when the dry run cannot finish (a bug in a pattern)."""
    from ..sim.simulate import SimulationError, simulate

    if name not in PATTERNS:
        raise PlanningError(f"unknown schedule family {name!r} (known: {', '.join(PATTERNS)})")
    started = time.monotonic()
    stages = tuple(tuple(nodes) for nodes in allocation)
    paths = v_paths(scenario, stages) if name in V_PLACED else baseline_variant(scenario, stages).paths
    stage_of = {n: held[0] for n, held in stages_of(stages).items()}  # a V node: its lower stage
    n_stages = len(stages)
    pattern = {node: PATTERNS[name](waves, stage_of[node], n_stages)
               for node, waves in _waves(paths).items()}
    loss_at = loss_at or default_loss_at(name)
    for p in paths:  # the losses float in the dry run: where they sit here does not matter
        pattern[node_of(L(p.microbatch), p.nodes, loss_at)].append(L(p.microbatch))
    draft = VariantSchedule(name, paths, {n: tuple(ops) for n, ops in pattern.items()},
                            dispatch="planned",
                            activation_limits=family_limits(name, paths, stage_of, n_stages),
                            split_backward=name in SPLIT_BACKWARD, loss_at=loss_at)
    sched = Schedule(scenario.name, scenario.content_hash, scenario.source, stages, {name: draft})
    try:
        run = simulate(sched, name, scenario, floating=frozenset({OpKind.L}))
    except SimulationError as e:
        raise PlanningError(f"{name}: the pattern does not run: {e}") from None
    provenance = Provenance(name, status="n/a", objective=round(run.iteration_s, 6),
                            wall_s=time.monotonic() - started)
    return dataclasses.replace(draft, order=run.order, provenance=provenance)


def _waves(paths: Sequence[MicrobatchPath]) -> dict[int, list[Wave]]:
    """node -> its waves: per round, the (microbatch, hop) pairs that visit it there."""
    rnd = rounds(paths)
    n_rounds = max(rnd.values(), default=-1) + 1
    out: dict[int, list[Wave]] = defaultdict(lambda: [[] for _ in range(n_rounds)])
    for p in sorted(paths, key=lambda p: p.microbatch):
        for hop, node in enumerate(p.nodes):
            out[node][rnd[p.microbatch]].append((p.microbatch, hop))
    return dict(out)
