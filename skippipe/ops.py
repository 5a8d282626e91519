"""The operation vocabulary shared by the planner, the simulator and the runtime.

A microbatch whose path has k hops runs the *op chain* F0, F1, ..., F(k-1), L, B(k-1), ..., B0:
forward at every hop, the loss, backward in reverse. Where the loss runs is a variant's choice
(`LOSS_AT`): at the microbatch's `origin` (SkipPipe: the data node holds the embedding and the
LM head, so a partial path may end anywhere) or at the `last` hop (the classic pipelines and
torch pipelining: the last stage holds the head and starts the backward at once). An `Op` names one of them
(kind, microbatch, hop); it prints compactly ("F3.1": forward of microbatch 3 at hop 1, "L3":
its loss) and parses back. A planned start time may ride along (`start_s`) without changing
which op it is: two `Op`s are equal when kind, microbatch and hop are.

The backward may be *split* (zero-bubble pipelining, Qi et al. 2024): B then computes only the
input gradient, which is sent on at once, and W (same microbatch and hop, same node) computes the
weight gradient later from the graph B retained. W is a side branch off the chain: nothing waits
for it but the end of the iteration. A variant's backward is either fused or split throughout.

Memory (rule TC1): a forward takes one of its node's activation slots when it starts; the last
backward op at the same hop frees it when it ends: B when fused, W when split (W still needs
the layer inputs B kept).

This is the only module that defines the chain; everything else asks it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol


class OpKind(str, Enum):
    F = "F"  # forward through the node's stage
    L = "L"  # LM head + loss (origin or last hop: LOSS_AT); its gradient starts the backward
    B = "B"  # backward through the node's stage (input gradient only when the backward is split)
    W = "W"  # weight gradient of the node's stage (split backward only)

    __hash__ = str.__hash__  # C-speed: planners key hot dicts by kind ("F" and OpKind.F alike)

    @property
    def rank(self) -> int:
        """Tie-break when ops arrive together: backward first (it frees memory), then loss;
        the weight gradient last (nothing waits for it)."""
        return _RANK[self]

    def __str__(self) -> str:
        return self.value


LOSS_AT = ("origin", "last")  # where the loss (and the LM head) runs: see the module docstring

_RANK = {OpKind.B: 0, OpKind.L: 1, OpKind.F: 2, OpKind.W: 3}
_TEXT = re.compile(r"^([FLBW])(\d+)(?:\.(\d+))?$")


@dataclass(frozen=True, slots=True, repr=False)
class Op:
    """One operation of one microbatch; `start_s` (seconds from the iteration's start) is a
    planned start where a schedule gives one and takes no part in equality."""

    kind: OpKind
    microbatch: int
    hop: int
    start_s: float | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.kind, OpKind):  # accept "F", "L", "B" from JSON and planners
            object.__setattr__(self, "kind", OpKind(self.kind))

    def __str__(self) -> str:
        return f"{self.kind.value}{self.microbatch}" + ("" if self.kind is OpKind.L else f".{self.hop}")

    __repr__ = __str__  # logs and errors show collections of ops: B0.2, not Op(kind=<OpKind.B: 'B'>, ...)

    @classmethod
    def parse(cls, text: str) -> Op:
        """The inverse of str(): 'F3.1', 'L3', 'B3.0'. Raises ValueError on anything else."""
        m = _TEXT.match(text.strip())
        if m is None or (m[1] == "L") != (m[3] is None):
            raise ValueError(f"not an operation: {text!r} (expected e.g. F3.1, L3, B3.0, W3.0)")
        return cls(OpKind(m[1]), int(m[2]), int(m[3] or 0))

    def at(self, start_s: float | None) -> Op:
        """The same op with a planned start time."""
        return Op(self.kind, self.microbatch, self.hop, start_s)

    @property
    def sort_key(self) -> tuple[int, int, int]:
        """Deterministic order among ops of one instant: microbatch, kind rank, hop."""
        return self.microbatch, self.kind.rank, self.hop


def F(microbatch: int, hop: int) -> Op:
    return Op(OpKind.F, microbatch, hop)


def L(microbatch: int) -> Op:
    return Op(OpKind.L, microbatch, 0)


def B(microbatch: int, hop: int) -> Op:
    return Op(OpKind.B, microbatch, hop)


def W(microbatch: int, hop: int) -> Op:
    return Op(OpKind.W, microbatch, hop)


class PathLike(Protocol):
    """What the chain needs of a path: its microbatch and its hops' nodes (nodes[0] = origin)."""

    microbatch: int

    @property
    def nodes(self) -> tuple[int, ...]: ...


def chain(k: int) -> tuple[tuple[OpKind, int], ...]:
    """The (kind, hop) steps of a k-hop path in run order (microbatch-free, for planners)."""
    return (
        tuple((OpKind.F, h) for h in range(k))
        + ((OpKind.L, 0),)
        + tuple((OpKind.B, h) for h in reversed(range(k)))
    )


def op_chain(microbatch: int, k: int, split: bool = False) -> tuple[Op, ...]:
    """Every op of one microbatch with a k-hop path, in run order (split: W right after B)."""
    out = []
    for kind, hop in chain(k):
        out.append(Op(kind, microbatch, hop))
        if split and kind is OpKind.B:
            out.append(W(microbatch, hop))
    return tuple(out)


def next_op(op: Op, k: int) -> Op | None:
    """The op after `op` on its microbatch's chain (k hops): where its output is sent. None
    after B0 and after W (a side branch)."""
    if op.kind is OpKind.W:
        return None
    if op.kind is OpKind.F:
        return F(op.microbatch, op.hop + 1) if op.hop + 1 < k else L(op.microbatch)
    if op.kind is OpKind.L:
        return B(op.microbatch, k - 1)
    return B(op.microbatch, op.hop - 1) if op.hop > 0 else None


def local_next(op: Op, split: bool) -> Op | None:
    """The op `op` enables on its own node besides the chain: W after B when split."""
    return W(op.microbatch, op.hop) if split and op.kind is OpKind.B else None


def prev_op(op: Op, k: int) -> Op | None:
    """The op whose output `op` needs (k hops), or None for F0; W needs its B."""
    if op.kind is OpKind.W:
        return B(op.microbatch, op.hop)
    if op.kind is OpKind.F:
        return F(op.microbatch, op.hop - 1) if op.hop > 0 else None
    if op.kind is OpKind.L:
        return F(op.microbatch, k - 1)
    return B(op.microbatch, op.hop + 1) if op.hop + 1 < k else L(op.microbatch)


def node_of(op: Op, nodes: Sequence[int], loss_at: str = "origin") -> int:
    """The node that runs `op` on a path through `nodes`; the loss runs at the origin or at the
    last hop (`loss_at`)."""
    if op.kind is OpKind.L:
        return nodes[-1] if loss_at == "last" else nodes[0]
    return nodes[op.hop]


def node_ops(paths: Iterable[PathLike], split: bool = False, loss_at: str = "origin") -> dict[int, list[Op]]:
    """Every op of every path, by the node that runs it, each node's in chain order per path."""
    out: dict[int, list[Op]] = {}
    for p in paths:
        nodes = p.nodes
        for op in op_chain(p.microbatch, len(nodes), split):
            out.setdefault(node_of(op, nodes, loss_at), []).append(op)
    return out


def takes_slot(op: Op) -> bool:
    """TC1: does starting `op` take an activation slot?"""
    return op.kind is OpKind.F


def frees_slot(op: Op, split: bool = False) -> Op | None:
    """TC1: the forward whose slot ends when `op` ends, or None (B when fused, W when split)."""
    return F(op.microbatch, op.hop) if op.kind is (OpKind.W if split else OpKind.B) else None
