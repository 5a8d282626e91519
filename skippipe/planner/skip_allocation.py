"""Skip-aware allocation: node -> stage allocations searched for the partial variants' own
objective (the iteration time including every stage's averaging, or the makespan), where
`allocation_search.allocate` minimises DT-FM's full-pipeline cost.

Why: on geo-distributed DT-FM's objective puts all five data nodes in Belgium, NL and London
(cheap stage-0 averaging, short full-pipeline tour); every microbatch then competes for the same
few nodes near Europe, and the greedy ca-partial plan on it (92.9 s makespan) is slower than on
most random allocations (73-85 s), whose spread stage 0 averages for 50-80 s instead. Which of
the two wins depends on the objective, so the allocation is searched for it.

Score of an allocation: the objective (seconds) of a fast greedy ca-partial plan on it
(`greedy.GreedyScheduler`, its first setting, SEARCH_PATHS_PER_ORIGIN candidate paths per data
node). Before planning, the plain lower bounds (`bounds.PathBounds.objective_floor`, a few ms)
are checked: an allocation whose proven floor is not below the best score so far cannot beat
it and is not planned (for the iteration objective this prunes every spread stage 0 at once).

Search: starting allocations (the full-pipeline one; "cluster": stage 0 is one node and its
nearest nodes, so its averaging stays cheap, as the iteration objective wants; "keep": the
full-pipeline stage 0; "random"; the other stages dealt at random) are scored and the best is
kept; then a first-improvement local search with random moves (two nodes of different stages,
one of them often from the stage that sets the objective, or the node sets of two equal-size
stages, exchanged). The number of evaluations comes from the budget in work seconds
(effort.py) and the greedy's size (op placements / greedy.PLACEMENTS_PER_S), not from the
clock, so a seed gives one allocation; the build's wall-clock safety cap only stops it early.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..ops import chain
from ..scenario import Scenario
from .allocation import Stages, as_stages, random_allocation
from .bounds import PathBounds
from .candidates import candidate_count, candidate_paths, path_limit
from .effort import WallCap, unlimited
from .greedy import PLACEMENTS_PER_S, GreedyScheduler
from .model_data import Rules, build_data, link_matrix, plan_values
from .paths import PlanningError

log = logging.getLogger(__name__)

SEARCH_PATHS_PER_ORIGIN = 300  # candidate paths of the scoring greedy (the planner's uses up to
# 600): on geo-distributed half the time, objective within ~3% of the full greedy's
START_SHARE = 0.3  # of the evaluations for starting allocations, the rest for local search
START_KINDS = ("cluster", "keep", "random")  # starts cycle through these (module docstring)
STAGE_MOVE_SHARE = 0.2  # of the local moves exchange two whole equal-size stages
CRITICAL_SHARE = 0.5  # of the node exchanges move a node of the stage that sets the objective
PROPOSALS_PER_EVALUATION = 20  # proposals pruned by the floor, per evaluation, before giving up
STALE_PROPOSALS = 200  # proposals in a row already scored or pruned: the neighbourhood is exhausted
MIN_EVALUATIONS = 2  # the full-pipeline allocation and at least one other

Progress = Callable[[str], None]


@dataclass(frozen=True)
class SkipAllocation:
    """The allocation found, its greedy score and the full-pipeline start's (seconds)."""

    stages: Stages
    objective: str
    score_s: float
    start_score_s: float  # the full-pipeline allocation's greedy score
    evaluations: int  # allocations planned by the greedy
    pruned: int  # allocations skipped because their floor could not beat the best
    wall_s: float


class _Scorer:
    """Greedy objective (seconds) of allocations, cached; floors first."""

    def __init__(self, scenario: Scenario, objective: str):
        self.scenario, self.objective = scenario, objective
        self.rules = Rules(objective=objective)
        self.scores: dict[Stages, float] = {}
        self.critical: dict[Stages, int] = {}  # the stage that sets the greedy plan's objective
        self.evaluations = self.pruned = 0

    def score(self, stages: Stages, beat: float = math.inf) -> float:
        """The greedy's objective on `stages`, s; inf when its floor is not below `beat`."""
        if stages in self.scores:
            return self.scores[stages]
        data = build_data(self.scenario, stages)
        if PathBounds(data, data.sequences).objective_floor(self.rules) * data.tick_s >= beat:
            self.pruned += 1  # the best only improves: pruned for good
            self.scores[stages] = math.inf
            return math.inf
        self.evaluations += 1
        try:
            limit = SEARCH_PATHS_PER_ORIGIN
            plan = GreedyScheduler(
                data, 0, candidates={o: candidate_paths(data, o, limit) for o in data.origins()}
            ).run()
            values = plan_values(data, plan)
            value = values[self.objective] * data.tick_s
            self.critical[stages] = _critical_stage(data, values, self.objective)
        except PlanningError:  # TC1 unreachable for the greedy on this allocation
            value = math.inf
        self.scores[stages] = value
        return value


def evaluation_cost_s(scenario: Scenario, stages: Stages) -> float:
    """Estimated seconds of one scoring greedy (its op placements / PLACEMENTS_PER_S)."""
    data = build_data(scenario, stages)
    paths = min(
        SEARCH_PATHS_PER_ORIGIN, path_limit(data), max(candidate_count(data, o) for o in data.origins())
    )
    return len(data.microbatches) * paths * len(chain(data.k)) / PLACEMENTS_PER_S


def skip_aware_allocation(
    scenario: Scenario,
    start: Stages,
    objective: str = "iteration",
    budget_s: float = 15.0,
    seed: int = 0,
    progress: Progress | None = None,
    cap: WallCap | None = None,
) -> SkipAllocation:
    """Search an allocation for the partial variants' `objective` ('iteration' or 'makespan')
    from `start` (the full-pipeline allocation) in `budget_s` work seconds (module docstring):
    the evaluation count follows from them and the greedy's size, so a seed gives one
    allocation; `cap` (the build's wall-clock safety cap) only stops the search early."""
    started, cap = time.monotonic(), cap or unlimited()
    start = as_stages(start)
    say = progress or (lambda line: None)
    scorer, rng = _Scorer(scenario, objective), random.Random(seed)
    cost_s = evaluation_cost_s(scenario, start)
    evaluations = int(budget_s / cost_s)
    if evaluations < MIN_EVALUATIONS:  # not even the start and one other fit: keep the start
        say(
            f"allocation search skipped: a greedy evaluation (~{cost_s:.1f} s) does not fit "
            f"{MIN_EVALUATIONS} times in {budget_s:.1f} s"
        )
        return SkipAllocation(
            start, objective, math.nan, math.nan, 0, 0, round(time.monotonic() - started, 3)
        )
    search = _Budget(scorer, evaluations, cap)
    best, best_score = start, scorer.score(start)
    first = best_score
    say(
        f"allocation search: full-pipeline allocation scores {best_score:.2f} s ({objective}, "
        f"greedy), {evaluations} evaluations planned"
    )
    clusters = _clusters(scenario, rng)
    while not search.spent() and scorer.evaluations < max(MIN_EVALUATIONS, START_SHARE * evaluations):
        kind = START_KINDS[search.proposals % len(START_KINDS)]
        search.proposals += 1
        if kind == "random" or (kind == "cluster" and not clusters):
            cand = random_allocation(scenario, rng)
        else:
            cand = _redeal_rest(scenario, clusters.pop() if kind == "cluster" else start[0], rng)
        value = search.score(cand, best_score)
        if value < best_score:
            best, best_score = cand, value
            say(
                f"allocation search {time.monotonic() - started:6.1f} s  best {best_score:.2f} s "
                f"(start {scorer.evaluations})"
            )
    while not search.spent():
        search.proposals += 1
        value = search.score(cand := _neighbour(best, rng, scorer.critical.get(best)), best_score)
        if value < best_score:
            best, best_score = cand, value
            say(
                f"allocation search {time.monotonic() - started:6.1f} s  best {best_score:.2f} s "
                f"(move {scorer.evaluations})"
            )
    wall = time.monotonic() - started
    log.info(
        "skip-aware allocation for %s (%s): %.2f s against the full-pipeline one's %.2f s, "
        "%d evaluations, %d pruned, %.1f s",
        scenario.name,
        objective,
        best_score,
        first,
        scorer.evaluations,
        scorer.pruned,
        wall,
    )
    return SkipAllocation(
        best, objective, best_score, first, scorer.evaluations, scorer.pruned, round(wall, 3)
    )


class _Budget:
    """When the search ends: its evaluations are spent, PROPOSALS_PER_EVALUATION proposals per
    planned evaluation are made, STALE_PROPOSALS proposals in a row were already known (the
    neighbourhood is exhausted), or the wall-clock cap has passed."""

    def __init__(self, scorer: _Scorer, evaluations: int, cap: WallCap):
        self.scorer, self.evaluations, self.cap = scorer, evaluations, cap
        self.proposals = self.stale = 0

    def score(self, stages: Stages, beat: float) -> float:
        self.stale = self.stale + 1 if stages in self.scorer.scores else 0
        return self.scorer.score(stages, beat)

    def spent(self) -> bool:
        return (
            self.scorer.evaluations >= self.evaluations
            or self.proposals > PROPOSALS_PER_EVALUATION * self.evaluations
            or self.stale >= STALE_PROPOSALS
            or self.cap.spent("the skip-aware allocation search")
        )


def _critical_stage(data, values: dict, objective: str) -> int:
    """The stage whose end sets the objective: the largest done + averaging (iteration), or the
    non-first stage that finishes last (makespan: it holds the last microbatches up)."""
    if objective == "iteration":
        return max(values["done"], key=lambda s: (values["done"][s] + data.avg[s], s))
    return max(range(1, len(data.stages)), key=lambda s: (values["done"][s], s))


def _normalise(groups) -> Stages:
    return tuple(tuple(sorted(g)) for g in groups)


def _clusters(scenario: Scenario, rng: random.Random) -> list[tuple[int, ...]]:
    """Distinct stage-0 node sets, one per node: it and its nearest nodes (slower link direction),
    in a seeded random order."""
    link = link_matrix(scenario)
    near = np.argsort(np.maximum(link, link.T), axis=1, kind="stable")  # ties: lower id first
    size = scenario.pipeline.stage_sizes[0]
    found = list(dict.fromkeys(tuple(sorted(int(b) for b in row[:size])) for row in near))
    rng.shuffle(found)
    return found


def _redeal_rest(scenario: Scenario, stage0, rng: random.Random) -> Stages:
    """`stage0` as the data nodes, every other node dealt to stages 1.. at random."""
    rest = [n for n in range(len(scenario.nodes)) if n not in set(stage0)]
    rng.shuffle(rest)
    groups, at = [list(stage0)], 0
    for size in scenario.pipeline.stage_sizes[1:]:
        groups.append(rest[at : at + size])
        at += size
    return _normalise(groups)


def _neighbour(stages: Stages, rng: random.Random, critical: int | None = None) -> Stages:
    """Two nodes of different stages exchanged (one of them, with CRITICAL_SHARE, from the stage
    that sets the objective), or (STAGE_MOVE_SHARE) two equal-size stages."""
    groups = [list(g) for g in stages]
    pairs = [
        (a, b)
        for a in range(len(groups))
        for b in range(a + 1, len(groups))
        if len(groups[a]) == len(groups[b])
    ]
    if pairs and rng.random() < STAGE_MOVE_SHARE:
        a, b = rng.choice(pairs)
        groups[a], groups[b] = groups[b], groups[a]
        return _normalise(groups)
    a, b = rng.sample(range(len(groups)), 2)
    if critical is not None and rng.random() < CRITICAL_SHARE:
        a, b = critical, rng.choice([s for s in range(len(groups)) if s != critical])
    i, j = rng.randrange(len(groups[a])), rng.randrange(len(groups[b]))
    groups[a][i], groups[b][j] = groups[b][j], groups[a][i]
    return _normalise(groups)
