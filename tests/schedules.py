"""Hand-built schedules on settings/tiny.toml for the validator tests."""

from __future__ import annotations

import dataclasses

from conftest import SETTINGS
from skippipe.costs import Costs
from skippipe.ops import Op, node_of, op_chain, prev_op
from skippipe.scenario import load_scenario
from skippipe.schedule import Hop, MicrobatchPath, Schedule, VariantSchedule

TINY_ALLOCATION = ((0, 1), (2, 3), (4,), (5,))
# k = 3 of S = 4: every non-first stage gets exactly 4 of the 12 forward visits
TINY_PATHS = [  # (origin, [(stage, node), ...])
    (0, [(1, 2), (2, 4)]),
    (0, [(2, 4), (3, 5)]),
    (0, [(1, 3), (3, 5)]),
    (1, [(2, 4), (1, 2)]),
    (1, [(3, 5), (2, 4)]),
    (1, [(1, 3), (3, 5)]),
]


def tiny():
    return load_scenario(SETTINGS / "tiny.toml")


def make_paths(spec=TINY_PATHS) -> tuple[MicrobatchPath, ...]:
    return tuple(
        MicrobatchPath(mb, o, (Hop(0, o),) + tuple(Hop(s, n) for s, n in hops))
        for mb, (o, hops) in enumerate(spec)
    )


def make_schedule(sc, paths, name="random", order=None, allocation=TINY_ALLOCATION) -> Schedule:
    v = VariantSchedule(name, tuple(paths), order)
    return Schedule(sc.name, sc.content_hash, sc.source, allocation, {name: v})


def list_schedule(sc, paths, op_sequence) -> dict[int, tuple[Op, ...]]:
    """Give each op in `op_sequence` the earliest start after its node is free and its input
    arrived on an idle link. No memory check: tests break TC1 with it."""
    costs, by_mb = Costs(sc), {p.microbatch: p for p in paths}
    free, end, order = {}, {}, {}
    for op in op_sequence:
        p = by_mb[op.microbatch]
        node = node_of(op, p.nodes)
        before = prev_op(op, len(p.hops))
        ready = 0.0
        if before is not None:
            ready = end[before] + costs.link_s(node_of(before, p.nodes), node)
        start = max(ready, free.get(node, 0.0))
        end[op] = start + costs.op_s(op.kind, node)
        free[node] = end[op]
        order.setdefault(node, []).append(op.at(start))
    return {n: tuple(ops) for n, ops in order.items()}


def sequential_ops(paths):
    return [op for p in paths for op in op_chain(p.microbatch, len(p.hops))]


def timed_schedule(sc, paths=None, op_sequence=None, name="ca-partial") -> Schedule:
    paths = paths or make_paths()
    order = list_schedule(sc, paths, op_sequence or sequential_ops(paths))
    return make_schedule(sc, paths, name, order)


def replace_path(paths, mb, hops):
    out = list(paths)
    out[mb] = dataclasses.replace(out[mb], hops=tuple(Hop(s, n) for s, n in hops))
    return out
