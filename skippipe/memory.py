"""Activation memory: what a node holds along its action list, and each schedule family's rule.

A forward holds one activation from its start until the op that frees it ends (ops.frees_slot:
B, or W when the backward is split). Because a node runs one op at a time, what it holds depends
only on the order of its action list, never on timing: `peak_along` counts it.

The classic schedule families bound memory by *rounds*. Round r of an iteration is every
column's r-th microbatch (microbatches of one data node, by id); with one column a round is one
microbatch and the rules are the published ones (GPipe, PipeDream-flush, Qi et al. 2024,
DeepSeek's DualPipe):

| family | rule at a node of stage i (p stages)                      | one column        |
|--------|-----------------------------------------------------------|-------------------|
| naive  | the microbatches of one round                             | 1                 |
| gpipe  | every microbatch it serves                                | m                 |
| 1f1b   | the microbatches of p - i consecutive rounds              | p - i             |
| zb-h1  | the microbatches of p consecutive rounds (W frees them)   | p (1F1B's peak)   |
| dualpipev | both chunks of P = p/2 consecutive rounds, plus one more  | 2P + 1 = p + 1    |
|        | chunk of a round (a V node holds stages i and p-1-i)      | (its authors')    |

Those rules are each family's published memory. By default every variant shares one budget
instead, the scenario's `memory_slots` per node, and the families run capped forms
(planner/families.py): `hold_within` defers the forwards that would exceed the cap, and
`rounds_within` says how many consecutive rounds fit in it.
"""

from __future__ import annotations

from collections import Counter, defaultdict, deque
from collections.abc import Iterable, Sequence

from .ops import Op, OpKind, PathLike, frees_slot, node_of, op_chain, takes_slot
from .variants import variant


def peak_along(ops: Iterable[Op], split: bool = False) -> int:
    """The most activations held at once by a node running `ops` in this order."""
    held, peak = set(), 0
    for op in ops:
        if takes_slot(op):
            held.add(op)
            peak = max(peak, len(held))
        held.discard(frees_slot(op, split))
    return peak


def rounds(paths: Iterable[PathLike]) -> dict[int, int]:
    """microbatch -> its round: its rank among its data node's microbatches (by id)."""
    by_origin: dict[int, list[int]] = defaultdict(list)
    for p in paths:
        by_origin[p.nodes[0]].append(p.microbatch)
    return {mb: r for mbs in by_origin.values() for r, mb in enumerate(sorted(mbs))}


def rounds_within(sizes: Sequence[int], cap: int) -> int:
    """The most consecutive rounds (of these sizes) whose microbatches fit in `cap` slots."""
    width = 0
    while width < len(sizes) and _window(sizes, width + 1) <= cap:
        width += 1
    return width


def hold_within(ops: Sequence[Op], cap: int, split: bool = False) -> list[Op] | None:
    """`ops` (one node's pattern, no loss) reordered so that the node holds at most `cap`
    activations: a forward that would exceed the cap waits, and the backward-side ops listed
    after it (B, W) move ahead of it, each kind keeping its order. For 1F1B this is the
    shortened warm-up. None when the next backward-side op needs a forward that waits."""
    queue, out, held, listed = deque(ops), [], 0, set()
    while queue:
        op = queue[0]
        if takes_slot(op) and held >= cap:
            op = next((o for o in queue if not takes_slot(o)), None)
            if op is None or _needs(op, split) not in listed:
                return None
        queue.remove(op)
        out.append(op)
        listed.add(op)
        held += takes_slot(op) - (frees_slot(op, split) is not None)
    return out


def _needs(op: Op, split: bool) -> Op:
    """The op of the same node that must be listed before backward-side `op` can run."""
    return Op(OpKind.B if op.kind is OpKind.W else OpKind.F, op.microbatch, op.hop)


def _window(sizes: Sequence[int], width: int) -> int:
    """The most microbatches in `width` consecutive rounds."""
    width = max(1, min(width, len(sizes)))
    return max(sum(sizes[i : i + width]) for i in range(len(sizes) - width + 1))


def family_limits(
    family: str, paths: Sequence[PathLike], stage_of: dict[int, int], n_stages: int
) -> dict[int, int]:
    """node -> the most activations `family`'s rule lets it hold (see the module table; the
    registry's `rounds_held`)."""
    spec = variant(family)
    rnd = rounds(paths)
    n_rounds = max(rnd.values(), default=-1) + 1
    visits: dict[int, Counter] = defaultdict(Counter)
    for p in paths:
        for op in op_chain(p.microbatch, len(p.nodes)):
            if takes_slot(op):
                visits[node_of(op, p.nodes)][rnd[p.microbatch]] += 1
    out = {}
    for node, per_round in visits.items():
        sizes = [per_round.get(r, 0) for r in range(n_rounds)]
        width = spec.rounds_held(stage_of[node], n_stages)
        out[node] = sum(sizes) if width is None else _window(sizes, width)
        if spec.v_placed:  # a round's sizes count both chunks: one more chunk's worth
            out[node] += -(-max(sizes) // 2)
    return out


def fullest(peaks: dict[int, int], slots: dict[int, int]) -> tuple[int, int]:
    """(peak, slots) of the node whose peak activations come closest to (or most over) its
    memory slots: a variant stays within the shared budget when peak <= slots there."""
    node = max(sorted(peaks), key=lambda n: (peaks[n] / slots[n], peaks[n]))
    return peaks[node], slots[node]
