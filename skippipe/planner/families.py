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
- Memory is the scenario's `memory_slots` per node by default (the budget every variant
  shares): each node's limit is the smaller of its slots and its family's own rule, and the
  family runs its capped form (below). With `family_memory` the family's own rule alone
  (memory.family_limits) is the limit: GPipe holds every microbatch it serves, 1F1B p - i
  rounds at stage i, ZB-H1 p rounds (W frees the slot), naive one round.

Patterns (rounds k = 0..n-1 at one node of stage i; F(k)/B(k)/W(k): that round's ops there):
- naive: F(k) B(k) for each k (stop and wait: one round in flight).
- gpipe: every F(k), then every B(k) in reverse (fill, then drain).
- 1f1b: warm-up F(0..p-i-2), then F(k+p-i-1) B(k) for each k (PipeDream-flush), then the drain.
- zb-h1: 1f1b's F and B, the backward split; stage i runs W(k-i) after B(k) and the last i W's
  at the end (Qi et al. 2024: W deferred into the bubbles, in-flight rounds p at every stage).
- dualpipev: the node of rank r holds stages r and p-1-r; planner/dualpipev.py has its steps.

Capped forms (R: the rounds a node's slots hold, memory.rounds_within; a stage never runs more
rounds ahead than the stage before it lets it, else the two would wait on each other):
- naive: unchanged (one round); gpipe: rounds of at most R (one R for every node).
- 1f1b: warm-up min(p-i-1, R-1); zb-h1 the same, its W lag cut to what R leaves (0: W after B).
- dualpipev: its forwards deferred while the node is full (memory.hold_within); where that
  leaves no order that runs, the family is refused with one line.
- A node serving many columns may not hold one whole round: each form is also tried on
  sub-rounds of g columns (g = every width down to 1) and the fastest in the dry run is kept.
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from collections.abc import Callable, Sequence

from ..memory import family_limits, hold_within, rounds, rounds_within
from ..ops import B, F, L, Op, OpKind, W, node_of
from ..placement import stages_of
from ..scenario import Scenario
from ..schedule import MicrobatchPath, Provenance, Schedule, VariantSchedule
from ..variants import REGISTRY, variant
from .baselines import AllocationLike, baseline_variant
from .dualpipev import Wave, dualpipev, v_paths
from .paths import PlanningError


def _ops(kind: Callable[[int, int], Op], wave: Wave) -> list[Op]:
    return [kind(mb, hop) for mb, hop in wave]


def naive(waves: Sequence[Wave], stage: int, n_stages: int, held: int | None = None) -> list[Op]:
    return [op for wave in waves for op in _ops(F, wave) + _ops(B, wave)]


def gpipe(waves: Sequence[Wave], stage: int, n_stages: int, held: int | None = None) -> list[Op]:
    """Fill, then drain; with `held`, in groups of that many rounds."""
    width = held or len(waves) or 1
    return [op for g in range(0, len(waves), width) for op in _fill_drain(waves[g : g + width])]


def _fill_drain(waves: Sequence[Wave]) -> list[Op]:
    return [op for wave in waves for op in _ops(F, wave)] + [
        op for wave in reversed(waves) for op in reversed(_ops(B, wave))
    ]


def one_f_one_b(
    waves: Sequence[Wave], stage: int, n_stages: int, held: int | None = None, w_lag: int | None = None
) -> list[Op]:
    """1F1B, at most `held` rounds in flight (None: p - stage); with `w_lag`, the split
    backward's W of round k - w_lag follows B of round k."""
    n, warm = len(waves), n_stages - stage - 1 if held is None else min(n_stages - stage, held) - 1
    out = [op for wave in waves[:warm] for op in _ops(F, wave)]
    for k in range(n):
        if k + warm < n:
            out += _ops(F, waves[k + warm])
        out += _ops(B, waves[k])
        if w_lag is not None and k >= w_lag:
            out += _ops(W, waves[k - w_lag])
    if w_lag is not None:
        out += [op for wave in waves[max(0, n - w_lag) :] for op in _ops(W, wave)]
    return out


def zb_h1(waves: Sequence[Wave], stage: int, n_stages: int, held: int | None = None) -> list[Op]:
    """ZB-H1: p rounds in flight; with `held`, 1F1B's warm-up first, then what is left as W lag."""
    if held is None:
        return one_f_one_b(waves, stage, n_stages, w_lag=stage)
    warm = min(n_stages - stage, held) - 1
    return one_f_one_b(waves, stage, n_stages, held, w_lag=max(0, min(stage, held - 1 - warm)))


def dualpipev_held(waves: Sequence[Wave], stage: int, n_stages: int, held: int | None = None) -> list[Op]:
    return dualpipev(waves, stage, n_stages)  # capped later, by activations (hold_within)


Pattern = Callable[[Sequence[Wave], int, int, "int | None"], list[Op]]
PATTERNS: dict[str, Pattern] = {f.__name__: f for f in (naive, gpipe, one_f_one_b, zb_h1, dualpipev_held)}
assert {v.pattern for v in REGISTRY.values() if v.family} <= set(PATTERNS)  # each family's generator


def family_variant(
    name: str,
    scenario: Scenario,
    allocation: AllocationLike,
    family_memory: bool = False,
    loss_at: str | None = None,
) -> VariantSchedule:
    """Variant `name` (a family of the registry) on the baseline's paths, its order placed by a
    dry run of the simulator (see the module docstring): in its capped form within the
    scenario's memory slots, or with `family_memory` under its family's own rule; its loss at
    `loss_at` (default: the family's). Raises PlanningError when no order of the family fits
    the slots or the dry run cannot finish."""
    from ..sim.simulate import SimulationError, simulate

    spec = REGISTRY.get(name)
    if spec is None or not spec.family:
        known = ", ".join(v.name for v in REGISTRY.values() if v.family)
        raise PlanningError(f"unknown schedule family {name!r} (known: {known})")
    started = time.monotonic()
    stages = tuple(tuple(nodes) for nodes in allocation)
    paths = v_paths(scenario, stages) if spec.v_placed else baseline_variant(scenario, stages).paths
    stage_of = {n: held[0] for n, held in stages_of(stages).items()}  # a V node: its lower stage
    n_stages, rnd = len(stages), rounds(paths)
    limits = family_limits(name, paths, stage_of, n_stages)
    if family_memory:
        patterns = [
            {
                node: PATTERNS[spec.pattern](w, stage_of[node], n_stages)
                for node, w in _waves(paths, rnd).items()
            }
        ]
    else:
        limits = {n: min(own, scenario.nodes[n].memory_slots) for n, own in limits.items()}
        patterns = _capped_patterns(name, paths, stages, limits)
    loss_at = loss_at or spec.loss_at
    best, why = None, ""
    for pattern in patterns:  # capped: one per round width that fits; the fastest is the family's
        for p in paths:  # the losses float in the dry run: where they sit here does not matter
            pattern[node_of(L(p.microbatch), p.nodes, loss_at)].append(L(p.microbatch))
        draft = VariantSchedule(
            name,
            paths,
            {n: tuple(ops) for n, ops in pattern.items()},
            dispatch="planned",
            activation_limits=limits,
            split_backward=spec.split_backward,
            memory="family" if family_memory else "slots",
            loss_at=loss_at,
        )
        sched = Schedule(scenario.name, scenario.content_hash, scenario.source, stages, {name: draft})
        try:
            run = simulate(sched, name, scenario, floating=frozenset({OpKind.L}))
        except SimulationError as e:
            why = why or str(e)
            continue
        if best is None or run.iteration_s < best[1].iteration_s:
            best = draft, run
    if best is None:
        within = "" if family_memory else f" within the memory slots ({_slots_text(limits)})"
        raise PlanningError(f"{name}: no pattern runs{within}: {why}")
    draft, run = best
    provenance = Provenance(
        name, status="n/a", objective=round(run.iteration_s, 6), wall_s=time.monotonic() - started
    )
    return dataclasses.replace(draft, order=run.order, provenance=provenance)


def _waves(paths: Sequence[MicrobatchPath], rnd: dict[int, int]) -> dict[int, list[Wave]]:
    """node -> its waves: per round (`rnd`: microbatch -> round), the (microbatch, hop) pairs
    that visit it there."""
    n_rounds = max(rnd.values(), default=-1) + 1
    out: dict[int, list[Wave]] = defaultdict(lambda: [[] for _ in range(n_rounds)])
    for p in sorted(paths, key=lambda p: p.microbatch):
        for hop, node in enumerate(p.nodes):
            out[node][rnd[p.microbatch]].append((p.microbatch, hop))
    return dict(out)


def _capped_patterns(
    name: str, paths: Sequence[MicrobatchPath], stages: Sequence[Sequence[int]], limits: dict[int, int]
) -> list[dict[int, list[Op]]]:
    """The family's capped forms within `limits`, one per sub-round width that fits (widest
    first). A sub-round is `g` columns of one round: a node serving many columns may not hold a
    whole round in its slots. Raises PlanningError when no width fits."""
    rnd, columns = rounds(paths), list(stages[0])
    n_groups = {g: -(-len(columns) // g) for g in range(1, len(columns) + 1)}
    out, why = [], ""
    for g in sorted(n_groups, reverse=True):
        sub = {p.microbatch: rnd[p.microbatch] * n_groups[g] + columns.index(p.origin) // g for p in paths}
        try:
            out.append(_capped(name, _waves(paths, sub), stages, limits))
        except PlanningError as e:
            why = why or str(e)
    if not out:
        raise PlanningError(why)
    return out


def _capped(
    name: str, waves: dict[int, list[Wave]], stages: Sequence[Sequence[int]], limits: dict[int, int]
) -> dict[int, list[Op]]:
    """Each node's pattern in the family's capped form (module docstring), within `limits`."""
    stage_of = {n: held[0] for n, held in stages_of(stages).items()}
    held = _rounds_held(waves, stages, limits)
    pattern = PATTERNS[variant(name).pattern]
    if pattern is gpipe:  # one group width for all: a node filling more rounds would wait forever
        held = dict.fromkeys(held, min(held.values()))
    short = [n for n, r in held.items() if r < 1 and pattern is not dualpipev_held]
    if short:
        n = short[0]
        raise PlanningError(
            f"{name}: one round of {max(map(len, waves[n]))} microbatches at node "
            f"{n} does not fit its {limits[n]} memory slots"
        )
    out = {}
    for node, w in waves.items():
        ops = pattern(w, stage_of[node], len(stages), held[node])
        if pattern is dualpipev_held:  # capped by activations, not rounds
            ops = hold_within(ops, limits[node], split=True)
            if ops is None:
                raise PlanningError(
                    f"{name}: its V order does not fit {limits[node]} memory slots "
                    f"at node {node} (stage {stage_of[node]}); plan it with family memory"
                )
        out[node] = ops
    return out


def _rounds_held(
    waves: dict[int, list[Wave]], stages: Sequence[Sequence[int]], limits: dict[int, int]
) -> dict[int, int]:
    """node -> the rounds it may hold: what its slots fit, and never more than the stage before
    it lets it (a later stage running further ahead would wait on it for ever)."""
    out, before = {}, None
    for nodes in stages:
        for n in nodes:
            out[n] = rounds_within([len(w) for w in waves.get(n, [])], limits.get(n, 0))
            if before is not None:
                out[n] = min(out[n], before)
        before = min((out[n] for n in nodes), default=before)
    return out


def _slots_text(limits: dict[int, int]) -> str:
    return ", ".join(f"node {n}: {lim}" for n, lim in sorted(limits.items()))
