"""Planning around dead nodes: the fallback rule every node applies the same way, and the
quorum rule that says when a run may not go on at all (docs/design.md, runtime/node/quorum.py; the
simulator applies the same rule, sim/session.py).

A path that visits a dead node gets, for that stage, a live node of the same stage (chosen
round-robin by microbatch id among the stage's live nodes, so the extra load spreads evenly); if
the whole stage is dead the path skips it, as long as it keeps stage 0 and at least one more
stage (a run then stops by the quorum rule before its next iteration; inference through the live
nodes uses such paths). A path whose origin died is lost: a
data node's failure loses only its own microbatches. The repaired paths run first come first
served (a planned order assumed the dead node's time slots). This is a quick, deterministic
re-plan: every node computes the same paths from the same set of dead nodes, without a solver.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from .schedule import Hop, MicrobatchPath, VariantSchedule

MIN_PATH_STAGES = 2  # stage 0 and at least one other stage


def quorum_verdict(n_nodes: int, dead: set[int], allocation: Sequence[Sequence[int]]) -> str | None:
    """Why a side whose view has `dead` may not train on `allocation`; None while it may:
    every stage keeps a live node and the live nodes are a strict majority of all `n_nodes`."""
    live = set(range(n_nodes)) - set(dead)
    missing = [s for s, nodes in enumerate(allocation) if not live & set(nodes)]
    why = []
    if missing:
        why.append(
            f"stage{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))} "
            f"{'have' if len(missing) > 1 else 'has'} no live node"
        )
    if 2 * len(live) <= n_nodes:
        why.append(f"this side holds {len(live)} of {n_nodes} nodes, not a majority")
    return "; ".join(why) or None


def repair_path(
    path: MicrobatchPath,
    dead: set[int] | frozenset[int],
    allocation: tuple[tuple[int, ...], ...],
    pick: Callable[[list[int]], int | None] | None = None,
) -> MicrobatchPath | None:
    """The path with dead nodes replaced or their stages skipped; None if it cannot run.
    `pick` chooses among a stage's live nodes instead of the round robin (online repair)."""
    if path.origin in dead:
        return None
    hops = []
    for h in path.hops:
        if h.node not in dead:
            hops.append(h)
            continue
        live = [n for n in allocation[h.stage] if n not in dead]
        if live:
            node = live[path.microbatch % len(live)] if pick is None else pick(live)
            if node is not None:
                hops.append(Hop(h.stage, node))
    if len(hops) < MIN_PATH_STAGES:
        return None
    return dataclasses.replace(path, hops=tuple(hops))


def live_variant(
    variant: VariantSchedule, dead: set[int] | frozenset[int], allocation: tuple[tuple[int, ...], ...]
) -> VariantSchedule:
    """The variant as it runs with `dead` nodes: repaired paths, lost ones left out, and no
    planned order once anything changed."""
    if not dead:
        return variant
    paths = tuple(p for p in (repair_path(p, dead, allocation) for p in variant.paths) if p is not None)
    return dataclasses.replace(variant, paths=paths, order=None, dispatch="fcfs")
