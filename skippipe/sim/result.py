"""What one simulated iteration reports: per-node time accounting (NodeStats), the iteration's
result (SimResult), and the interval arithmetic that splits a node's time into busy, averaging,
waiting and idle.

A module of its own because the result is read by more than the event loop that fills it
(simulate.py): the online-routing simulation (online.py), multi-iteration sessions (session.py)
and the `simulate` command's tables all take a SimResult, and none of them needs the loop's
internals to do so.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..ops import Op


@dataclass(frozen=True)
class NodeStats:
    """Where one node's time went over [0, iteration_s], in seconds.

    busy_s + averaging_s + waiting_s + idle_s == iteration_s. waiting_s is time not running
    while an arrived operation could not start (memory full, or not next in the planned order).
    """

    node: int
    stage: int
    busy_s: float  # running F, L, B
    averaging_s: float  # gradient averaging of its stage
    waiting_s: float
    idle_s: float
    n_ops: int
    peak_activations: int = 0  # most activations held at once

    def fractions(self, total_s: float) -> dict[str, float]:
        """busy/averaging/waiting/idle as fractions of `total_s` (0 when total_s is 0)."""
        scale = 1.0 / total_s if total_s > 0 else 0.0
        return {
            "busy": self.busy_s * scale,
            "averaging": self.averaging_s * scale,
            "waiting": self.waiting_s * scale,
            "idle": self.idle_s * scale,
        }


@dataclass(frozen=True)
class SimResult:
    """One simulated iteration. Times in seconds from the iteration's start."""

    variant: str
    used_order: bool  # True when the planned per-node order was followed
    iteration_s: float  # max over stages of (stage done + averaging)
    makespan_s: float  # end of the last B at hop 0
    per_node: tuple[NodeStats, ...]  # indexed by node id
    events: tuple[dict, ...]  # timeline events (see skippipe/timeline.py), sorted by t
    averaging_s: tuple[float, ...]  # per stage: duration of its gradient averaging
    stage_done_s: tuple[float, ...]  # per stage: when its last operation ended
    # node -> its operations in the order they ran, start_s set: a replayable planned order
    order: dict[int, tuple[Op, ...]] = field(default_factory=dict)

    @property
    def compute_s(self) -> float:
        """From the start until the last operation ends (the iteration without averaging)."""
        return max(self.stage_done_s, default=0.0)

    @property
    def bubble_share(self) -> float:
        """Share of node time in [0, compute_s] not spent computing (the pipeline bubble):
        1 - sum of busy / (nodes x compute_s)."""
        if not self.per_node or self.compute_s <= 0:
            return 0.0
        return 1.0 - sum(s.busy_s for s in self.per_node) / (len(self.per_node) * self.compute_s)

    def mean_fraction(self, kind: str) -> float:
        """Mean over nodes of one NodeStats fraction ('busy', 'averaging', 'waiting', 'idle')."""
        if not self.per_node:
            return 0.0
        return sum(s.fractions(self.iteration_s)[kind] for s in self.per_node) / len(self.per_node)


def _union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Sorted, disjoint union of [start, end) intervals; empty ones are dropped."""
    out: list[list[float]] = []
    for s, e in sorted(i for i in intervals if i[1] > i[0]):
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return [(s, e) for s, e in out]


def waiting_time(pending: list[tuple[float, float]], busy: list[tuple[float, float]]) -> float:
    """Length of (union of pending intervals) minus its overlap with the sorted busy intervals."""
    merged = _union(pending)
    total = sum(e - s for s, e in merged)
    overlap, j = 0.0, 0
    for s, e in merged:
        while j < len(busy) and busy[j][1] <= s:
            j += 1
        k = j
        while k < len(busy) and busy[k][0] < e:
            overlap += max(0.0, min(e, busy[k][1]) - max(s, busy[k][0]))
            k += 1
    return max(0.0, total - overlap)
