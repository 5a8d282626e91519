"""Which operation a node runs next: the one rule the simulator and the runtime both follow.

An operation (ops.Op) becomes *arrived* when its input is there (the data batch for F at hop 0,
else a message), stamped with its arrival time. A node runs one operation at a time:
- `planned` (a variant whose dispatch is "planned"): exactly the node's action list, in order,
  waiting for each op's input;
- otherwise first come first served: the earliest arrival first; among ops that arrived at the
  same time, backward before loss before forward (backward frees memory), then the lower
  microbatch, then the lower hop.
A forward needs one of the node's `slots` (TC1): the scenario's memory slots, or the variant's
own limit (schedule.VariantSchedule.memory_slots; None: unlimited); the backward at the same hop
frees it (W when the variant splits the backward). `peak` counts the most activations held.
Operations added to a plan after the start (`add(..., beyond_slots=True)`: a restarted attempt,
a microbatch detoured here by online repair) hold activations beyond the slots: the plan's own
operations keep all their slots, so a detour can never block the plan's forwards and deadlock
the pipeline (a node's memory may exceed m by the detours it serves at once). Online routing,
whose every operation is added as it arrives, keeps to the slots.

Planners may let some kinds *float* (`floating`): in planned mode such an op is not waited for
in the list but runs as soon as it has arrived and the node is free. The schedule families use
it once, in a dry run that places each loss at its origin (planner/families.py); what they
store, and what nodes run, is a strict list.

The simulator stamps arrivals with simulated time, the runtime with its monotonic clock; both
ask `next_op()` whenever the node is free, so a node given the same arrivals picks the same
order in both (tests/test_dispatch.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from .ops import Op, OpKind, frees_slot, takes_slot


def fcfs_key(op: Op, arrived_s: float) -> tuple:
    """First come first served; ties (same instant): B, L, F, then microbatch, then hop."""
    return arrived_s, op.kind.rank, op.microbatch, op.hop


@dataclass
class Dispatcher:
    """One node's operations for one iteration."""

    ops: list[Op]  # the node's action list (its run order when planned)
    slots: int | None  # activations it may hold (TC1); None: unlimited
    planned: bool  # follow `ops` strictly in order
    split: bool = False  # the variant splits the backward: W frees the slot
    floating: frozenset[OpKind] = frozenset()  # planned mode: kinds run as soon as arrived
    arrived: dict[Op, float] = field(default_factory=dict)  # op -> arrival time, until started
    finished: set[Op] = field(default_factory=set)
    running: Op | None = None
    held: list[Op] = field(default_factory=list)  # forwards holding a slot
    peak: int = 0  # most activations held at once so far

    def __post_init__(self) -> None:
        self.ops = [Op(o.kind, o.microbatch, o.hop) for o in self.ops]  # identity only
        self._todo = set(self.ops)
        if len(self._todo) != len(self.ops):
            raise ValueError("a node's action list names an operation twice")
        self._sequence = [op for op in self.ops if op.kind not in self.floating]
        self._cursor = 0  # planned mode: index of the next op in `_sequence`
        self._added: set[Op] = set()  # operations added to the plan: beyond the slots

    @property
    def done(self) -> bool:
        return not self._todo and self.running is None

    @property
    def left(self) -> int:
        """Operations not finished yet, the running one included."""
        return len(self._todo) + (self.running is not None)

    def arrive(self, op: Op, at_s: float) -> None:
        """`op`'s input is here (at time `at_s`); a repeated arrival keeps the first stamp."""
        if op not in self._todo:
            raise KeyError(f"operation {op} is not this node's in this iteration")
        self.arrived.setdefault(op, at_s)

    def next_op(self) -> Op | None:
        """The operation to start now, or None (busy, nothing ready, or memory full)."""
        if self.running is not None:
            return None
        if self.planned:
            floating = [op for op in self.arrived if op.kind in self.floating and self._can_start(op)]
            if floating:
                return min(floating, key=lambda op: fcfs_key(op, self.arrived[op]))
            op = self.next_planned()
            return op if op is not None and self._can_start(op) else None
        ready = [op for op in self.arrived if self._can_start(op)]
        return min(ready, key=lambda op: fcfs_key(op, self.arrived[op]), default=None)

    def next_planned(self) -> Op | None:
        """Planned mode: the op the node waits for (started or not), for messages and stats."""
        if not self.planned or self._cursor >= len(self._sequence):
            return None
        return self._sequence[self._cursor]

    def memory_full(self) -> bool:
        return self.slots is not None and sum(op not in self._added for op in self.held) >= self.slots

    def blocked_on_memory(self) -> bool:
        """True when an arrived forward waits only for a memory slot."""
        return self.memory_full() and any(takes_slot(op) for op in self.arrived)

    def _can_start(self, op: Op) -> bool:
        return op in self.arrived and not (takes_slot(op) and op not in self._added and self.memory_full())

    def start(self, op: Op) -> None:
        assert self.running is None and self._can_start(op), op
        self.running = op
        self._todo.discard(op)
        del self.arrived[op]
        if self.planned and op.kind not in self.floating:
            self._cursor += 1
        if takes_slot(op):
            self.held.append(op)
            self.peak = max(self.peak, len(self.held))

    def finish(self, op: Op) -> None:
        assert self.running == op, (self.running, op)
        self.running = None
        self.finished.add(op)
        freed = frees_slot(op, self.split)
        if freed in self.held:
            self.held.remove(freed)

    def forget(self, microbatch: int) -> None:
        """Drop every operation of `microbatch` (its attempt failed) and free the memory its
        forwards held; the node then runs first come first served."""
        self._todo = {op for op in self._todo if op.microbatch != microbatch}
        self.finished = {op for op in self.finished if op.microbatch != microbatch}
        self.arrived = {op: t for op, t in self.arrived.items() if op.microbatch != microbatch}
        self.held = [op for op in self.held if op.microbatch != microbatch]
        self.planned = False

    def add(self, ops: Iterable[Op], beyond_slots: bool = False) -> None:
        """New operations for this iteration (a restarted microbatch's attempt); ops still to
        run are not added twice. `beyond_slots`: their forwards take no slot."""
        ops = [
            op for op in dict.fromkeys(Op(o.kind, o.microbatch, o.hop) for o in ops) if op not in self._todo
        ]
        if not ops:
            return
        self._todo |= set(ops)
        if beyond_slots:
            self._added |= set(ops)
        self.ops += ops
        self.planned = False

    def pending(self) -> list[Op]:
        return sorted(self._todo, key=lambda op: op.sort_key)
