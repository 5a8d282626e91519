"""Candidate paths of a data node for the greedy list scheduler (greedy.py) and the allocation
search's scoring greedy (skip_allocation.py): which node paths a microbatch may try.

Kept apart from greedy.py because choosing the paths is a phase of its own, before any timing:
it reads only the model data (CC3-valid stage sequences, the origin's allowed nodes, the idle
round trip of a path) and cuts their product to a size the greedy can place within its budget
(a beam search per sequence, then the cheapest, keeping every stage set and every node). Past
the build's wall-clock cap (effort.WallCap) it gives the least work: one path per stage set of
the TC1-feasible reference plan.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter

from ..ops import chain
from .effort import WallCap
from .model_data import ModelData

CANDIDATES_PER_ORIGIN = 600  # paths a microbatch tries: the paper's setting has 594 in all
PATHS_PER_NODE = 3  # when paths are cut to the cheapest, each allowed node keeps this many
PLACEMENT_BUDGET = 200_000  # op placements in all (~1 s of Python): fewer paths per microbatch
# when there are many microbatches and hops (each path costs 2k+1 timeline look-ups)

StageSet = tuple[int, ...]
PHASE = "the first greedy plan"  # named in the cap's one line when it cuts in (candidates or greedy)


def path_limit(data: ModelData) -> int:
    """Candidate paths per origin: CANDIDATES_PER_ORIGIN within the PLACEMENT_BUDGET."""
    per_path = len(data.microbatches) * len(chain(data.k))
    return max(1, min(CANDIDATES_PER_ORIGIN, PLACEMENT_BUDGET // per_path))


def candidate_paths(
    data: ModelData, origin: int, limit: int | None = None, cap: WallCap | None = None
) -> list[tuple[int, ...]]:
    """Node paths (origin first) over every CC3-valid sequence and the origin's allowed nodes;
    when there are more than `path_limit`, a beam search per sequence (and one per node forced
    into its stage) and then the cheapest (idle round trip) of them, keeping the cheapest of
    every stage set and PATHS_PER_NODE through every allowed node. `limit` lowers path_limit
    (the allocation search scores many allocations with a faster greedy). Past `cap`: the
    `least_work_paths` only."""
    if cap is not None and cap.spent(PHASE):
        return least_work_paths(data, origin)
    allowed = data.allowed[origin]
    total = sum(_product_size(allowed, seq) for seq in data.sequences)
    limit = path_limit(data) if limit is None else min(limit, path_limit(data))
    if total <= limit:
        return [
            (origin,) + rest
            for seq in data.sequences
            for rest in itertools.product(*(allowed[s] for s in seq[1:]))
        ]
    width = max(1, limit // len(data.sequences))
    cost = {p: data.path_ticks(p) for seq in data.sequences for p in _beam(data, origin, seq, width)}
    for stage, nodes in enumerate(allowed[1:], start=1):  # paths through every allowed node
        for n in nodes if len(nodes) > 1 else ():
            forced = allowed[:stage] + ((n,),) + allowed[stage + 1 :]
            cost.update(
                {
                    p: data.path_ticks(p)
                    for seq in data.sequences
                    if stage in seq
                    for p in _beam(data, origin, seq, 1, forced)
                }
            )
    paths = sorted(cost, key=lambda p: (cost[p], p))
    best_per_set, per_node = {}, Counter()
    kept = set()
    for p in paths:  # every stage set keeps its cheapest path (TC1's look-ahead), every node a few
        if best_per_set.setdefault(stage_set(data, p), p) == p or any(
            per_node[n] < PATHS_PER_NODE for n in p[1:]
        ):
            kept.add(p)
            per_node.update(p[1:])
    for p in paths:
        if len(kept) >= limit:
            break
        kept.add(p)
    return sorted(kept, key=lambda p: (cost[p], p))


def least_work_paths(data: ModelData, origin: int) -> list[tuple[int, ...]]:
    """One path per stage set of the reference plan (`data.visit_plan`, TC1-feasible): the
    first sequence with that set, on its cheapest nodes. A microbatch can always take one."""
    wanted, paths = {st for st, _ in data.visit_plan}, {}
    for seq in data.sequences:
        st = tuple(sorted(seq[1:]))
        if st in wanted and st not in paths:
            paths[st] = _beam(data, origin, seq, 1)[0]
    return sorted(paths.values(), key=lambda p: (data.path_ticks(p), p))


def candidate_count(data: ModelData, origin: int) -> int:
    """How many paths the origin has before any limit (CC3-valid sequences x allowed nodes)."""
    return sum(_product_size(data.allowed[origin], seq) for seq in data.sequences)


def _product_size(allowed, seq) -> int:
    size = 1
    for s in seq[1:]:
        size *= len(allowed[s])
    return size


def _beam(
    data: ModelData, origin: int, seq: tuple[int, ...], width: int, allowed=None
) -> list[tuple[int, ...]]:
    """The `width` cheapest paths of `seq` by a beam search on the idle round trip."""
    d, allowed = data, allowed or data.allowed[origin]
    beam = [(d.dur["F"][origin] + d.dur["L"][origin] + d.dur["B"][origin], (origin,))]
    for s in seq[1:]:
        grown = [
            (cost + d.link[p[-1]][n] + d.link[n][p[-1]] + d.dur["F"][n] + d.dur["B"][n], p + (n,))
            for cost, p in beam
            for n in allowed[s]
        ]
        beam = heapq.nsmallest(width, grown)
    return [p for _, p in beam]


def stage_set(data: ModelData, path: tuple[int, ...]) -> StageSet:
    """The stages a path visits after its origin, sorted (what TC1 counts)."""
    return tuple(sorted(data.stage_of[n] for n in path[1:]))
