"""Bottleneck balanced matching between two stages (DT-FM's pipeline term of the allocation
objective): the least link time t at which every node of the larger stage can be paired with a
node of the smaller one, computed exactly as a transport problem on node classes (nodes that
share every link), with the allowed pairs grown through the sorted link times.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence


class _Transport:
    """Flow from left classes (each sends <= supply) to right classes (each takes <= capacity)
    over the pairs allowed so far; `fill` may be called again with more pairs allowed."""

    def __init__(self, supply: list[int], capacity: list[int]):
        self.supply, self.capacity = supply, capacity
        self.flow = [[0] * len(capacity) for _ in supply]
        self.sent, self.taken = [0] * len(supply), [0] * len(capacity)

    def fill(self, allowed: list[list[bool]]) -> int:
        """Raise the flow to the maximum over `allowed` pairs; returns the total flow."""
        self._greedy(allowed)
        while (path := self._augmenting_path(allowed)) is not None:
            self._push(path[0::2], path[1::2])
        return sum(self.sent)

    def _greedy(self, allowed: list[list[bool]]) -> None:
        """Direct flow on allowed pairs first: most of it then needs no path search."""
        for i, row in enumerate(allowed):
            spare = self.supply[i] - self.sent[i]
            for j, ok in enumerate(row):
                if spare == 0:
                    break
                room = self.capacity[j] - self.taken[j]
                if ok and room > 0:
                    amount = min(spare, room)
                    self.flow[i][j] += amount
                    self.taken[j] += amount
                    spare -= amount
            self.sent[i] = self.supply[i] - spare

    def _push(self, lefts: list[int], rights: list[int]) -> None:
        """Send flow up along (lefts[i], rights[i]) and back down along (lefts[i+1], rights[i])."""
        back = list(zip(lefts[1:], rights))
        amount = min(
            [self.supply[lefts[0]] - self.sent[lefts[0]], self.capacity[rights[-1]] - self.taken[rights[-1]]]
            + [self.flow[left][r] for left, r in back]
        )
        for left, r in zip(lefts, rights):
            self.flow[left][r] += amount
        for left, r in back:
            self.flow[left][r] -= amount
        self.sent[lefts[0]] += amount
        self.taken[rights[-1]] += amount

    def _augmenting_path(self, allowed: list[list[bool]]) -> list[int] | None:
        """[left, right, left, ..., right], breadth-first: from a left class with supply to
        spare to a right class with room, alternating allowed pairs and pairs carrying flow."""
        left_from = {i: None for i, s in enumerate(self.supply) if self.sent[i] < s}
        right_from: dict[int, int] = {}
        queue = deque(left_from)
        while queue:
            i = queue.popleft()
            for j, ok in enumerate(allowed[i]):
                if ok and j not in right_from:
                    right_from[j] = i
                    if self.taken[j] < self.capacity[j]:
                        return _trace(j, left_from, right_from)
                    for k, row in enumerate(self.flow):
                        if row[j] > 0 and k not in left_from:
                            left_from[k] = j
                            queue.append(k)
        return None


def _trace(right: int | None, left_from: dict, right_from: dict) -> list[int]:
    path = []
    while right is not None:
        left = right_from[right]
        path += [right, left]
        right = left_from[left]
    return path[::-1]


def _smallest_limit(
    supply: list[int], capacity: list[int], link: list[list[float]], limits: list[float]
) -> float:
    """The first of the ascending `limits` at which links <= limit carry all of `supply`."""
    transport = _Transport(supply, capacity)
    for limit in limits:
        if transport.fill([[t <= limit for t in row] for row in link]) == sum(supply):
            return limit
    raise AssertionError("unreachable: the largest limit allows every link")


def bottleneck_s(
    link: Sequence[Sequence[float]], big: Sequence[int] | None = None, small: Sequence[int] | None = None
) -> float:
    """Bottleneck balanced matching between two stages, s: the smallest t such that every node
    of the larger stage can be paired with a node of the smaller one over a link <= t, the
    smaller stage's nodes taking q or q+1 each (q = larger size // smaller size).

    link[a][b] is the link time between class a of the larger stage (big[a] nodes, default 1)
    and class b of the smaller one (small[b] nodes, default 1). By the Mendelsohn-Dulmage
    theorem (on the graph with every node expanded) such a pairing exists iff (a) every
    larger-stage node fits with loads <= ceil(larger / smaller) and (b) every smaller-stage node
    can get q; both only get easier as t grows, so t = max(t_a, t_b)."""
    big = list(big or [1] * len(link))
    small = list(small or [1] * len(link[0]))
    link = [list(row) for row in link]
    q, r = divmod(sum(big), sum(small))
    lower = max(
        max(min(row) for row in link),  # each larger-stage node needs one link,
        max(
            _kth_smallest(col, big, q * m)  # each smaller-stage node q of them
            for col, m in zip(zip(*link), small)
        ),
    )
    limits = sorted({t for row in link for t in row if t >= lower})
    t_a = _smallest_limit(big, [(q + (1 if r else 0)) * m for m in small], link, limits)
    if r == 0:
        return float(t_a)  # (a) with loads <= q already gives every smaller-stage node exactly q
    t_b = _smallest_limit([q * m for m in small], big, [list(c) for c in zip(*link)], limits)
    return float(max(t_a, t_b))


def _kth_smallest(values: Sequence[float], counts: Sequence[int], k: int) -> float:
    """The k-th smallest (k >= 1) of `values` with each repeated `counts` times."""
    for value, count in sorted(zip(values, counts)):
        k -= count
        if k <= 0:
            return value
    raise ValueError("k exceeds the number of values")
