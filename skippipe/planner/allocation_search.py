"""The search for a node -> stage allocation minimising `allocation.allocation_score`.

A module of its own because the allocation type and its objective (allocation.py: what an
allocation costs) are read by more than the search: planners and benches check and score
allocations they got elsewhere. This module only looks for a good one.

Simulated annealing over two moves, swapping two nodes of different stages or the node
sets of two equal-size stages (stage sizes stay `scenario.pipeline.stage_sizes`), then a
first-improvement descent; several restarts (the first from the round-robin allocation, the
others random). The max() terms are flat almost everywhere, so the search minimises a guide:
the score plus small pulls towards cheaper non-worst stages and towards stages whose nodes sit
on fast links to each other; the best allocation is chosen by the score itself. Deterministic
given the seed unless the wall-clock cap `time_budget_s` is reached (logged as a warning).
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass

from ..scenario import Scenario
from .allocation import (
    Allocation,
    Parts,
    Scorer,
    Stages,
    normalise,
    parts_of,
    random_allocation,
    round_robin_allocation,
    score_breakdown,
    scorer_for,
)

log = logging.getLogger(__name__)

DEFAULT_TIME_BUDGET_S = 25.0  # wall-clock cap; the search normally ends on its move budget first
DEFAULT_RESTARTS = 3  # annealing runs; the first starts from the round-robin allocation
DEFAULT_MOVES = 8000  # proposed moves per annealing run
FIRST_TEMPERATURE_SHARE = 0.04  # first temperature / score of the run's start allocation
FINAL_TEMPERATURE_RATIO = 0.01  # last temperature / first (geometric cooling)
STAGE_MOVE_SHARE = 0.2  # share of annealing moves that exchange two whole stages
TIME_CHECK_EVERY = 64  # moves between wall-clock checks
SCORE_EPS_S = 1e-9  # differences smaller than this are float noise


@dataclass(frozen=True)
class _Move:
    """A proposed allocation: the changed stages' new node sets and the costs after it."""

    groups: dict[int, list[int]]
    parts: Parts


class _State:
    """The allocation being searched and its costs."""

    def __init__(self, scorer: Scorer, stages: Stages):
        self.scorer = scorer
        self.groups = [list(g) for g in stages]
        self.stage_of = {node: s for s, g in enumerate(self.groups) for node in g}
        self.parts = parts_of(scorer, self.groups)
        n = len(self.groups)
        self.stage_pairs = [
            (a, b) for a in range(n) for b in range(a + 1, n) if len(self.groups[a]) == len(self.groups[b])
        ]

    def swap_nodes(self, x: int, y: int) -> _Move:
        """Swap nodes x and y (of different stages); not applied."""
        a, b = self.stage_of[x], self.stage_of[y]
        return self._propose(
            {a: [y if n == x else n for n in self.groups[a]], b: [x if n == y else n for n in self.groups[b]]}
        )

    def swap_stages(self, a: int, b: int) -> _Move:
        """Exchange the node sets of two equal-size stages; not applied."""
        return self._propose({a: list(self.groups[b]), b: list(self.groups[a])})

    def _propose(self, changed: dict[int, list[int]]) -> _Move:
        groups = [changed.get(s, g) for s, g in enumerate(self.groups)]
        return _Move(changed, parts_of(self.scorer, groups, self.parts, list(changed)))

    def apply(self, move: _Move) -> None:
        for s, g in move.groups.items():
            self.groups[s] = g
            self.stage_of.update((node, s) for node in g)
        self.parts = move.parts

    def stages(self) -> Stages:
        return normalise(self.groups)


@dataclass
class _Search:
    """What all runs of one search share: the rng, the wall-clock cap and the best so far."""

    rng: random.Random
    deadline: float
    evaluations: int = 0
    expired: bool = False
    best: Stages | None = None
    best_key: tuple[float, float] = (math.inf, math.inf)

    def spent(self) -> bool:
        self.expired = self.expired or time.monotonic() > self.deadline
        return self.expired

    def offer(self, state: _State) -> None:
        """Keep the state if it has the lowest score so far (ties: the lowest guide)."""
        key = (round(state.parts.score / SCORE_EPS_S), state.parts.guide)
        if key < self.best_key:
            self.best, self.best_key = state.stages(), key


def _random_move(state: _State, rng: random.Random) -> _Move:
    """Exchange two equal-size stages (share STAGE_MOVE_SHARE, when any exist) or two nodes of
    different stages, chosen uniformly."""
    if state.stage_pairs and rng.random() < STAGE_MOVE_SHARE:
        return state.swap_stages(*rng.choice(state.stage_pairs))
    x = rng.randrange(len(state.stage_of))
    others = [n for s, g in enumerate(state.groups) if s != state.stage_of[x] for n in g]
    return state.swap_nodes(x, rng.choice(others))


def _anneal(state: _State, search: _Search, moves: int) -> None:
    """Simulated annealing on the guide, offering every accepted allocation to the search."""
    temp = FIRST_TEMPERATURE_SHARE * state.parts.score
    cooling = FINAL_TEMPERATURE_RATIO ** (1.0 / max(1, moves - 1))
    for step in range(moves):
        if step % TIME_CHECK_EVERY == 0 and search.spent():
            return
        move = _random_move(state, search.rng)
        search.evaluations += 1
        delta = move.parts.guide - state.parts.guide
        if delta <= 0 or (temp > 0 and search.rng.random() < math.exp(-delta / temp)):
            state.apply(move)
            search.offer(state)
        temp *= cooling


def _descend(state: _State, search: _Search) -> None:
    """First-improvement descent over every move (seeded random order) to a local optimum."""
    if search.spent():  # past the cap: not even the move list (2 million pairs at 2,000 nodes)
        search.offer(state)
        return
    nodes = sorted(state.stage_of)
    moves = [("nodes", x, y) for x in nodes for y in nodes if x < y]
    moves += [("stages", a, b) for a, b in state.stage_pairs]
    improved = True
    while improved and not search.spent():
        improved = False
        search.rng.shuffle(moves)
        for kind, i, j in moves:
            if kind == "nodes" and state.stage_of[i] == state.stage_of[j]:
                continue
            move = state.swap_nodes(i, j) if kind == "nodes" else state.swap_stages(i, j)
            search.evaluations += 1
            if move.parts.guide < state.parts.guide - SCORE_EPS_S:
                state.apply(move)
                improved = True
    search.offer(state)


def allocate(
    scenario: Scenario,
    seed: int = 0,
    time_budget_s: float = DEFAULT_TIME_BUDGET_S,
    restarts: int = DEFAULT_RESTARTS,
    moves: int = DEFAULT_MOVES,
) -> Allocation:
    """Search a node -> stage allocation minimising `allocation_score` (module docstring).

    `restarts` runs of `moves` annealing moves then a descent to a local optimum; run 0 starts
    from the round-robin allocation (so the result never scores worse than it), the others from
    random ones drawn from `seed`. `time_budget_s` (seconds) caps the wall time; past it the best
    so far is returned and the result may depend on machine speed (logged as a warning)."""
    started = time.monotonic()
    scorer = scorer_for(scenario)
    search = _Search(random.Random(seed), started + time_budget_s)
    for run in range(max(1, restarts)):
        start = round_robin_allocation(scenario) if run == 0 else random_allocation(scenario, search.rng)
        state = _State(scorer, start)
        search.offer(state)
        _anneal(state, search, moves)
        _descend(state, search)
        log.debug("allocation run %d: score %.3f s", run, state.parts.score)
        if search.expired:
            log.debug(
                "allocation search hit its %.1f s wall-clock cap in run %d of %d; "  # the
                "result depends on machine speed",
                time_budget_s,
                run + 1,
                restarts,
            )  # caller says so
            break
    breakdown = score_breakdown(scenario, search.best)
    wall = time.monotonic() - started
    log.info(
        "allocation for %s: score %.3f s (averaging %.3f, pipeline %.3f, compute %.3f) "
        "after %d moves in %.2f s",
        scenario.name,
        breakdown["score_s"],
        breakdown["averaging_s"],
        breakdown["pipeline_s"],
        breakdown["compute_s"],
        search.evaluations,
        wall,
    )
    return Allocation(search.best, breakdown["score_s"], breakdown, seed, search.evaluations, wall)
