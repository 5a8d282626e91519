"""Node -> stage allocations and their objective, aware of links and of node speed; the search
for the allocation that minimises it is `allocation_search.py`.

Objective (seconds; lower is better), DT-FM's communication cost plus a compute term:

    score = averaging_s + pipeline_s + compute_s

* averaging_s: the largest `Costs.averaging_s` over the stages (DT-FM's data-parallel cost:
  every stage all-reduces its gradients at once, the slowest one ends the iteration).
* pipeline_s: 2 x the closed tour 0 -> 1 -> ... -> S-1 -> 0 of bottleneck matchings between
  consecutive stages (DT-FM's pipeline cost; x2 because activations go forward and gradients
  come back). The bottleneck of two stages is the smallest t such that every node of the larger
  stage can be paired with a node of the smaller one over a link with `Costs.link_s` <= t,
  with the smaller stage's nodes taking loads that differ by at most 1 (the baseline's rule).
* compute_s: the busiest non-first stage's compute time in one iteration. A stage s >= 1 gets
  TC1's even share of forward visits (`rules.stage_visit_cap`), which a path planner can
  spread over its nodes in proportion to their speed: visits / sum of 1 / (forward + backward).
  Stage 0 is left out: a data node computes only its own microbatches, and that work overlaps
  the waits for their round trips, while every microbatch queues at the later stages.

Why this compute term: with identical GPUs it is the same for every allocation, so the optimum
is exactly DT-FM's; with heterogeneous GPUs it spreads slow nodes so that no stage's aggregate
throughput falls far below the rest, and lets them sit in stage 0. Measured on hetero-gpus with
the greedy ca-partial planner as the judge (8 seeds, median planned iteration): 143.1 s with this
objective, 148.5 s with DT-FM's alone, 154.8 s when stage 0 is also charged its slowest data
node's own work (that variant keeps slow nodes out of stage 0, which does not pay).
Not modelled: memory slots, link queueing between microbatches, links between non-adjacent
stages that skipping paths use (the CP-SAT planner sees all of those).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from ..costs import Costs
from ..rules import stage_visit_cap
from ..scenario import Scenario
from .matching import bottleneck_s
from .model_data import link_matrix
from .paths import PlanningError

Stages = tuple[tuple[int, ...], ...]

PIPELINE_DIRECTIONS = 2  # each stage boundary is crossed by activations and by gradients
TIE_BREAK_WEIGHT = 0.1  # guide: weight of the summed stage costs (not just the worst stage's)
SPREAD_WEIGHT = 3.0  # guide: weight of the mean link time between nodes of one stage
CACHE_MAX_ENTRIES = 200_000  # cost cache is cleared beyond this (~0.5 KB an entry at 120 nodes)


@dataclass(frozen=True)
class Allocation:
    """Stage -> sorted node ids, with the score (seconds) and its parts (seconds)."""

    stages: Stages
    score_s: float
    breakdown: dict[str, float] = field(default_factory=dict)
    seed: int | None = None
    evaluations: int = 0  # moves scored by the search
    wall_s: float = 0.0


def as_stages(allocation: Allocation | Sequence[Sequence[int]]) -> Stages:
    """The stage -> node ids tuple of an Allocation or of a plain nested sequence."""
    raw = allocation.stages if isinstance(allocation, Allocation) else allocation
    return tuple(tuple(int(n) for n in nodes) for nodes in raw)


def check_allocation(scenario: Scenario, stages: Stages) -> None:
    """Raise PlanningError unless stage sizes match the scenario and each node appears once."""
    sizes = tuple(len(nodes) for nodes in stages)
    if sizes != scenario.pipeline.stage_sizes:
        raise PlanningError(
            f"{scenario.source}: allocation stage sizes {list(sizes)} differ "
            f"from pipeline.stage_sizes {list(scenario.pipeline.stage_sizes)}"
        )
    if sorted(n for nodes in stages for n in nodes) != list(range(len(scenario.nodes))):
        raise PlanningError(f"{scenario.source}: allocation must place every node exactly once")


def normalise(groups: Sequence[Sequence[int]]) -> Stages:
    return tuple(tuple(sorted(g)) for g in groups)


def random_allocation(scenario: Scenario, rng: random.Random) -> Stages:
    """A uniformly random allocation with the scenario's stage sizes."""
    nodes = list(range(len(scenario.nodes)))
    rng.shuffle(nodes)
    out, start = [], 0
    for size in scenario.pipeline.stage_sizes:
        out.append(nodes[start : start + size])
        start += size
    return normalise(out)


def round_robin_allocation(scenario: Scenario) -> Stages:
    """Deal node ids 0, 1, 2, ... to stages 0, 1, ..., S-1 in turn, skipping full stages."""
    sizes = scenario.pipeline.stage_sizes
    groups: list[list[int]] = [[] for _ in sizes]
    stage = 0
    for node in range(len(scenario.nodes)):
        while len(groups[stage]) == sizes[stage]:
            stage = (stage + 1) % len(sizes)
        groups[stage].append(node)
        stage = (stage + 1) % len(sizes)
    return normalise(groups)


# ----------------------------------------------------------------------------------------------
# Scoring


class Scorer:
    """Per-stage and per-boundary costs of one scenario. Link costs depend only on how many
    nodes of each location a stage holds, so they are computed and cached on those counts."""

    def __init__(self, scenario: Scenario):
        self.costs = c = Costs(scenario)
        n = len(scenario.nodes)
        self.place = _classes([node.location for node in scenario.nodes])
        self.place_link = self._place_link(scenario)
        per_node = scenario.pipeline.microbatches_per_node
        self.visit_work_s = [c.forward_s(i) + c.backward_s(i) for i in range(n)]
        self.stage_visits = stage_visit_cap(scenario, scenario.pipeline.stage_sizes[0] * per_node)
        self._cache: dict[tuple, float] = {}

    def _place_link(self, scenario: Scenario) -> list[list[float]]:
        """Link time between two distinct nodes of locations a and b (0 where there are none):
        the largest of the block, as a node's link to itself is 0 and all others are equal."""
        link, place = link_matrix(scenario, self.costs), np.array(self.place)
        members = [np.flatnonzero(place == a) for a in range(max(self.place) + 1)]
        return [[float(link[np.ix_(ma, mb)].max()) for mb in members] for ma in members]

    def _cached(self, key: tuple, compute: Callable[[], float]) -> float:
        if key not in self._cache:
            if len(self._cache) >= CACHE_MAX_ENTRIES:
                self._cache.clear()
            self._cache[key] = compute()
        return self._cache[key]

    def signature(self, nodes: Sequence[int]) -> tuple[int, ...]:
        """The stage's locations, sorted: every link cost of the stage depends only on this."""
        return tuple(sorted(self.place[n] for n in nodes))

    def _counts(self, signature: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
        """(location, nodes there) pairs of a signature."""
        return self._cached(("counts", signature), lambda: tuple(sorted(Counter(signature).items())))

    def averaging(self, stage: int, nodes: Sequence[int], signature: tuple[int, ...]) -> float:
        """Gradient all-reduce time of the stage, s. It depends only on the stage's locations
        (Costs.averaging_s), so equal signatures share an entry."""
        return self._cached(
            ("avg", stage == 0, signature), lambda: self.costs.averaging_s(stage, tuple(nodes))
        )

    def compute(self, stage: int, nodes: Sequence[int]) -> float:
        """Busy time of a non-first stage's compute in one iteration, s; 0 for stage 0
        (module docstring)."""
        if stage == 0:
            return 0.0
        return self.stage_visits / sum(1.0 / self.visit_work_s[n] for n in nodes)

    def spread(self, signature: tuple[int, ...]) -> float:
        """Mean link time between two nodes of the stage, s (a guide term only)."""
        n = len(signature)
        counts = self._counts(signature)
        return (
            0.0
            if n < 2
            else self._cached(
                ("spread", signature),
                lambda: (
                    sum(ma * (mb - (a == b)) * self.place_link[a][b] for a, ma in counts for b, mb in counts)
                    / (n * (n - 1))
                ),
            )
        )

    def pair(self, a: tuple[int, ...], b: tuple[int, ...]) -> float:
        """Bottleneck balanced matching between two stages given by their signatures, s."""
        big, small = (a, b) if len(a) >= len(b) else (b, a)

        def matching() -> float:
            big_counts, small_counts = self._counts(big), self._counts(small)
            return bottleneck_s(
                [[self.place_link[p][q] for q, _ in small_counts] for p, _ in big_counts],
                [m for _, m in big_counts],
                [m for _, m in small_counts],
            )

        return self._cached(("pair", big, small), matching)


def _classes(values: list) -> list[int]:
    """Index of each value's class: equal values share a class."""
    ids: dict = {}
    return [ids.setdefault(v, len(ids)) for v in values]


@lru_cache(maxsize=4)
def scorer_for(scenario: Scenario) -> Scorer:
    return Scorer(scenario)


@dataclass(frozen=True)
class Parts:
    """Costs of one allocation, seconds: per stage (avg, comp, spread), per boundary (pairs:
    pairs[s] is stage s -> s+1, the last one S-1 -> 0)."""

    avg: tuple[float, ...]
    comp: tuple[float, ...]
    spread: tuple[float, ...]
    pairs: tuple[float, ...]

    @property
    def score(self) -> float:
        return max(self.avg) + PIPELINE_DIRECTIONS * sum(self.pairs) + max(self.comp)

    @property
    def guide(self) -> float:
        """What the search minimises (allocation_search.py's module docstring)."""
        return (
            self.score
            + TIE_BREAK_WEIGHT * (sum(self.avg) + sum(self.comp))
            + SPREAD_WEIGHT * sum(self.spread) / len(self.spread)
        )

    def breakdown(self) -> dict[str, float]:
        return {
            "averaging_s": max(self.avg),
            "pipeline_s": PIPELINE_DIRECTIONS * sum(self.pairs),
            "compute_s": max(self.comp),
            "score_s": self.score,
        }


def parts_of(
    scorer: Scorer,
    groups: Sequence[Sequence[int]],
    old: Parts | None = None,
    changed: Sequence[int] | None = None,
) -> Parts:
    """Costs of `groups`; with `old`, only the `changed` stages and their boundaries are redone."""
    n = len(groups)
    changed = range(n) if old is None else changed
    avg, comp, spread = (
        ([0.0] * n, [0.0] * n, [0.0] * n)
        if old is None
        else (list(old.avg), list(old.comp), list(old.spread))
    )
    pairs = [0.0] * n if old is None else list(old.pairs)
    boundaries = {q for s in changed for q in ((s - 1) % n, s)}
    sig = {s: scorer.signature(groups[s]) for s in boundaries | {(p + 1) % n for p in boundaries}}
    for s in changed:
        avg[s] = scorer.averaging(s, groups[s], sig[s])
        comp[s], spread[s] = scorer.compute(s, groups[s]), scorer.spread(sig[s])
    for p in boundaries:
        pairs[p] = scorer.pair(sig[p], sig[(p + 1) % n])
    return Parts(tuple(avg), tuple(comp), tuple(spread), tuple(pairs))


def score_breakdown(scenario: Scenario, stages: Sequence[Sequence[int]]) -> dict[str, float]:
    """The objective's parts for any valid allocation, seconds: averaging_s, pipeline_s,
    compute_s and their sum score_s (module docstring)."""
    stages = as_stages(stages)
    check_allocation(scenario, stages)
    return parts_of(scorer_for(scenario), stages).breakdown()


def allocation_score(scenario: Scenario, stages: Sequence[Sequence[int]]) -> float:
    """The objective (seconds, lower is better) of any valid allocation."""
    return score_breakdown(scenario, stages)["score_s"]
