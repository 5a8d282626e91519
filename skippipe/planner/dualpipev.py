"""DualPipeV (deepseek-ai/DualPipe, `dualpipev.py`): its V paths and its per-node pattern.

Placement (placement.py): the S stages fold into P = S/2 groups, group r holding stage r
(*chunk 0*, on the way down) and stage S-1-r (*chunk 1*, on the way back up); a microbatch's
path goes down its column and back up through the same nodes, and the origin (rank 0) runs the
last stage, then the loss. Microbatches enter at rank 0 only: DualPipeV feeds one end (DualPipe,
on twice the devices, feeds both).

Pattern at rank r (m microbatches, here: rounds, see planner/families.py), the steps of
DualPipeV's `step()`; F0/F1/B0/B1 = forward/backward of the next microbatch of chunk 0/1; a
backward marked zb defers its W into a queue that W pops (oldest first); any other backward
runs its W right after it (the fused backward, split only in name):
  1. 2(P-r-1) F0            2. r+1 times F0 F1          3. P-r-1 times B1(zb) W F1
  4. m-2P+r+1 times F0 B1 F1 B0                         5. P-r-1 times B1 F1 B0
  6. r+1 times B1 B0 (the second half zb)               7. P-r-1 times W B0(zb)
  8. the W left
DualPipe overlaps the forward of one microbatch with the backward of another ("F&B", steps 4
and 5) to hide its expert-parallel all-to-all behind compute. A node here has no such traffic
(its pipeline messages are already sent asynchronously) and runs one op at a time, in the
simulator and the runtime alike, so an F&B pair is its F, then its B: F&B = F + B. With fewer
than 2P - 1 rounds the counts of steps 1-7 are cut where the microbatches run out (the
authors' code needs at least 2P); the planner's dry run checks the result runs.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from ..ops import B, F, Op, W
from ..scenario import Scenario
from ..schedule import Hop, MicrobatchPath
from .paths import PlanningError, microbatch_ids

Wave = list[tuple[int, int]]  # one round's (microbatch, hop) at one node, in microbatch order


def v_paths(scenario: Scenario, allocation: Sequence[Sequence[int]]) -> tuple[MicrobatchPath, ...]:
    """Every microbatch's V path: down its column and back. As the baseline's columns: a group
    as wide as the data nodes gives column i its i-th node, any other serves microbatch m on
    its node m mod (group size), so a group's nodes carry loads within 1."""
    n_stages, width = len(allocation), len(allocation[0])
    out = []
    for microbatch, origin in microbatch_ids(allocation, scenario):
        column = allocation[0].index(origin)
        down = [
            group[column] if len(group) == width else group[microbatch % len(group)]
            for group in allocation[: n_stages // 2]
        ]
        nodes = down + down[::-1]  # a V by construction (rules.py checks it)
        out.append(MicrobatchPath(microbatch, origin, tuple(Hop(s, n) for s, n in enumerate(nodes))))
    return tuple(out)


class _Chunks:
    """The ops one node lists, chunk by chunk, in DualPipeV's step order."""

    def __init__(self, waves: Sequence[Wave], n_stages: int):
        half = n_stages // 2
        self.waves = [[[(mb, h) for mb, h in w if (h >= half) == bool(c)] for w in waves] for c in (0, 1)]
        self.m = len(waves)
        self.n_f, self.n_b = [0, 0], [0, 0]
        self.deferred: deque[Wave] = deque()
        self.out: list[Op] = []

    def forward(self, chunk: int) -> None:
        if self.n_f[chunk] < self.m:
            self.out += [F(mb, h) for mb, h in self.waves[chunk][self.n_f[chunk]]]
            self.n_f[chunk] += 1

    def backward(self, chunk: int, zero_bubble: bool = False) -> None:
        if self.n_b[chunk] < self.n_f[chunk]:
            wave = self.waves[chunk][self.n_b[chunk]]
            self.n_b[chunk] += 1
            self.out += [B(mb, h) for mb, h in wave]
            if zero_bubble:
                self.deferred.append(wave)
            else:
                self.out += [W(mb, h) for mb, h in wave]

    def weight(self) -> None:
        if self.deferred:
            self.out += [W(mb, h) for mb, h in self.deferred.popleft()]


def dualpipev(waves: Sequence[Wave], stage: int, n_stages: int) -> list[Op]:
    """The action list of the node of rank `stage` (its lower stage) holding `waves`."""
    p, r = n_stages // 2, stage
    c = _Chunks(waves, n_stages)
    for _ in range(2 * (p - r - 1)):
        c.forward(0)
    for _ in range(r + 1):
        c.forward(0), c.forward(1)
    for _ in range(p - r - 1):
        c.backward(1, zero_bubble=True), c.weight(), c.forward(1)
    for _ in range(max(0, c.m - 2 * p + r + 1)):
        c.forward(0), c.backward(1), c.forward(1), c.backward(0)
    for _ in range(p - r - 1):
        c.backward(1), c.forward(1), c.backward(0)
    zero_bubble = False
    for i in range(r + 1):
        zero_bubble |= i == (r + 1) // 2 and r % 2 == 1
        c.backward(1, zero_bubble)
        zero_bubble |= i == (r + 1) // 2 and r % 2 == 0
        c.backward(0, zero_bubble)
    for _ in range(p - r - 1):
        c.weight(), c.backward(0, zero_bubble=True)
    while c.deferred:
        c.weight()
    if c.n_f != [c.m, c.m] or c.n_b != [c.m, c.m]:
        raise PlanningError(
            f"dualpipev: rank {r} of {p} lists {c.n_f} forwards and {c.n_b} "
            f"backwards of {c.m} rounds per chunk"
        )
    return c.out
