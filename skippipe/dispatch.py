"""Which operation a node runs next: the runtime's scheduling rule, without sockets or tensors.

An operation is `(kind, microbatch, hop)` as in schedule.py. It becomes *arrived* when its input
is there (the data batch for F at hop 0, else a message). A node runs one operation at a time:
- with a planned order (ca-partial) it runs exactly that order, waiting for each op's input;
- without one it runs first come first served, preferring B, then L, then F (backward frees
  memory), then arrival order.
A forward needs one of the node's `slots`; the backward of the same (microbatch, hop) frees it.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from .schedule import MicrobatchPath, VariantSchedule

OpKey = tuple[str, int, int]  # (kind, microbatch, hop)
_PRIORITY = {"B": 0, "L": 1, "F": 2}  # FCFS tie-break: free memory first


def node_ops(variant: VariantSchedule, node: int) -> list[OpKey]:
    """The operations `node` runs in one iteration: the planned order if any, else any order."""
    if variant.order is not None:
        return [(o.kind, o.microbatch, o.hop) for o in variant.order.get(node, ())]
    ops = []
    for p in variant.paths:
        for i, h in enumerate(p.hops):
            if h.node == node:
                ops += [("F", p.microbatch, i), ("B", p.microbatch, i)]
        if p.origin == node:
            ops.append(("L", p.microbatch, 0))
    return ops


def next_hop_op(path: MicrobatchPath, op: OpKey) -> tuple[OpKey, int] | None:
    """The operation after `op` on its microbatch and the node that runs it (None after B0)."""
    kind, mb, hop = op
    k = len(path.hops)
    if kind == "F":
        return (("F", mb, hop + 1), path.hops[hop + 1].node) if hop + 1 < k else (("L", mb, 0), path.origin)
    if kind == "L":
        return ("B", mb, k - 1), path.hops[k - 1].node
    return (("B", mb, hop - 1), path.hops[hop - 1].node) if hop > 0 else None


@dataclass
class Dispatcher:
    """Tracks one node's operations for one iteration."""

    ops: list[OpKey]
    slots: int
    planned: bool  # follow `ops` strictly in order
    arrived: dict[OpKey, int] = field(default_factory=dict)  # op -> arrival sequence number
    finished: set[OpKey] = field(default_factory=set)
    running: OpKey | None = None
    held: int = 0  # memory slots in use
    _seq: itertools.count = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        self.ops = list(self.ops)
        self._todo = set(self.ops)
        self._cursor = 0  # planned mode: index of the next op in `ops`

    @property
    def done(self) -> bool:
        return not self._todo and self.running is None

    def expects(self, op: OpKey) -> bool:
        return op in self._todo and op not in self.arrived

    def arrive(self, op: OpKey) -> None:
        if op not in self._todo:
            raise KeyError(f"operation {op} is not this node's in this iteration")
        self.arrived.setdefault(op, next(self._seq))

    def next_op(self) -> OpKey | None:
        """An operation that may start now, or None (nothing ready, busy, or memory full)."""
        if self.running is not None:
            return None
        if self.planned:
            op = self.ops[self._cursor] if self._cursor < len(self.ops) else None
            return op if op is not None and self._can_start(op) else None
        ready = [op for op in self.arrived if op in self._todo and self._can_start(op)]
        return min(ready, key=lambda op: (_PRIORITY[op[0]], self.arrived[op], op[1]), default=None)

    def blocked_on_memory(self) -> bool:
        """True when an arrived forward waits only for a memory slot."""
        return any(op[0] == "F" and op in self._todo for op in self.arrived) and self.held >= self.slots

    def _can_start(self, op: OpKey) -> bool:
        return op in self.arrived and (op[0] != "F" or self.held < self.slots)

    def start(self, op: OpKey) -> None:
        assert self.running is None and self._can_start(op), op
        self.running = op
        self._todo.discard(op)
        if self.planned:
            self._cursor += 1
        if op[0] == "F":
            self.held += 1

    def finish(self, op: OpKey) -> None:
        assert self.running == op, (self.running, op)
        self.running = None
        self.finished.add(op)
        if op[0] == "B":
            self.held -= 1

    def forget(self, microbatch: int) -> None:
        """Drop every operation of `microbatch` (its attempt failed) and free the memory its
        forwards held; the node then runs first come first served."""
        for op in [op for op in self._todo | self.finished if op[1] == microbatch]:
            if op[0] == "F" and op in self.finished and ("B", op[1], op[2]) not in self.finished:
                self.held -= 1
            self._todo.discard(op)
            self.finished.discard(op)
            self.arrived.pop(op, None)
        self.planned = False

    def add(self, ops: list[OpKey]) -> None:
        """New operations for this iteration (a restarted microbatch's attempt)."""
        self._todo |= set(ops)
        self.ops += ops
        self.planned = False

    def pending(self) -> list[OpKey]:
        return sorted(self._todo)
