"""Large neighbourhood search over paths (ca-partial's main improver, see partial.plan).

Each step frees the paths of a few microbatches (the last to finish, one data node's, those
sharing nodes with a late one, the last on the stage that sets the iteration time, those on
two nodes of one stage, or random), keeps every other path and that path's op order on
each node (every RESEQUENCE_EVERY steps the order is free too), leaves all start times free,
and lets CP-SAT re-solve that sub-model (cpsat.PathModel with `fixed_paths`) for LNS_STEP_S
work seconds (effort.py), hinted with the best plan and bounded by it. A step that finishes (optimal) grows
the neighbourhood, one that times out shrinks it.

Steps run one after another, each with every CP-SAT worker (measured on geo-distributed: two
steps side by side in threads, one worker each, did worse than one step with two workers).
Their number is fixed by the budget, so a seed reproduces.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from collections.abc import Callable

from .bounds import PathBounds
from .cpsat import PathModel, SolveResult, solve
from .effort import WallCap, unlimited
from .model_data import ModelData, Rules, TimedPlan, plan_values
from .paths import PlanningError

log = logging.getLogger(__name__)

LNS_STEP_S = 1.0  # work seconds of one sub-model (measured on geo-distributed: 1 s steps beat 2 and 4)
LNS_START_FREE = 4  # microbatches freed by the first step
LNS_MIN_FREE = 2
NEIGHBOURHOODS = ("critical", "origin", "shared", "stage", "nodes", "random")  # steps cycle
# through these (stage and nodes: median of 3 seeds on geo-distributed 79.3 s against 79.8 s)
RESEQUENCE_EVERY = 8  # every so many steps the fixed microbatches' order is free too

Progress = Callable[[str], None]


class PathSearch:
    """The search state: best plan, its value, the neighbourhood size, steps taken."""

    def __init__(
        self,
        data: ModelData,
        rules: Rules,
        start: TimedPlan,
        lower: PathBounds,
        seed: int,
        progress: Progress | None,
    ):
        self.data, self.lower, self.seed, self.progress = data, lower, seed, progress
        self.sub_rules = dataclasses.replace(rules, symmetry=False)  # fixed paths break the symmetry
        self.best, self.value = start, plan_values(data, start)[rules.objective]
        self.floor = lower.objective_floor(rules)
        self.rng, self.size, self.steps, self.finished = random.Random(seed), LNS_START_FREE, 0, False
        self.started = time.monotonic()

    def run_step(self, workers: int, cap: WallCap) -> None:
        """Build one sub-model from the best plan, solve it, record the outcome."""
        step, best, value = self.steps, self.best, self.value
        self.steps += 1
        free = _neighbourhood(
            self.data, best, self.size, NEIGHBOURHOODS[step % len(NEIGHBOURHOODS)], self.rng
        )
        fixed = {mb: nodes for mb, nodes in best.nodes.items() if mb not in free}
        model = PathModel(
            self.data,
            self.sub_rules,
            upper_bound=value,
            fixed_paths=fixed,
            lower=self.lower,
            fixed_order=best if step % RESEQUENCE_EVERY else None,
        )
        model.add_hint(best)
        try:
            result = solve(model, LNS_STEP_S, self.seed + step, workers, cap=cap)
        except PlanningError:  # the bounded sub-model has no better plan
            result = None
        self._record(step, free, result)

    def _record(self, step: int, free: set[int], result: SolveResult | None) -> None:
        if result is not None and result.plan is not None and result.objective < self.value:
            self.best, self.value = result.plan, result.objective
            if self.progress is not None:
                self.progress(
                    f"lns    {time.monotonic() - self.started:7.1f} s  best "
                    f"{self.value * self.data.tick_s:9.2f} s  (step {step + 1}, "
                    f"{len(free)} microbatches freed)"
                )
        solved = result is not None and result.status == "OPTIMAL"
        n = len(self.data.microbatches)
        if solved and len(free) == n or self.value <= self.floor:
            self.finished = True  # every path was free and proven optimal, or the bound is met
        self.size = min(n, self.size + 1) if solved else max(LNS_MIN_FREE, self.size - 1)


def improve_paths(
    data: ModelData,
    rules: Rules,
    start: TimedPlan,
    budget_s: float,
    seed: int,
    workers: int,
    lower: PathBounds,
    progress: Progress | None = None,
    cap: WallCap | None = None,
) -> TimedPlan:
    """The best plan the path LNS finds from `start` in `budget_s` work seconds: that many
    steps of LNS_STEP_S each (deterministic, effort.py); `cap` (the build's wall-clock safety
    cap) only stops it early."""
    search = PathSearch(data, rules, start, lower, seed, progress)
    steps, cap = int(budget_s / LNS_STEP_S), cap or unlimited()
    while search.steps < steps and not search.finished and not cap.spent("path LNS"):
        search.run_step(workers, cap)
    log.debug("path LNS: %d of %d steps, objective %d ticks", search.steps, steps, search.value)
    return search.best


def _neighbourhood(data: ModelData, plan_: TimedPlan, size: int, kind: str, rng: random.Random) -> set[int]:
    """`size` microbatches whose paths a step frees."""
    mbs = [mb for mb, _ in data.microbatches]
    size = min(size, len(mbs))
    if kind == "critical":  # the last to finish, and random others
        last = sorted(mbs, key=lambda mb: -plan_.starts["B", mb, 0])[: max(1, size // 2)]
        return set(last) | set(rng.sample([mb for mb in mbs if mb not in last], size - len(last)))
    if kind == "origin":  # a data node's microbatches (re-pair its slot chains), a late one likely
        pivot = max(rng.sample(mbs, min(len(mbs), size)), key=lambda mb: plan_.starts["B", mb, 0])
        origin = dict(data.microbatches)[pivot]
        return {mb for mb, o in data.microbatches if o == origin}
    if kind == "shared":  # microbatches meeting a late one on its nodes
        pivot = max(rng.sample(mbs, min(len(mbs), size)), key=lambda mb: plan_.starts["B", mb, 0])
        nodes = set(plan_.nodes[pivot][1:])
        near = [mb for mb in mbs if mb != pivot and nodes & set(plan_.nodes[mb][1:])]
        return {pivot} | set(rng.sample(near, min(len(near), size - 1)))
    if kind == "stage":  # the microbatches ending last on the stage that sets the objective
        ends: dict[int, list[tuple[int, int]]] = {}
        for mb, nodes in plan_.nodes.items():
            for h, n in enumerate(nodes):
                s = data.stage_of[n]
                ends.setdefault(s, []).append((plan_.starts["B", mb, h] + data.dur["B"][n], mb))
        stage = max(ends, key=lambda s: max(ends[s])[0] + data.avg[s])
        last = [mb for _, mb in sorted(ends[stage], reverse=True)]
        return set(list(dict.fromkeys(last))[:size])
    if kind == "nodes":  # the microbatches on two nodes of one stage (moves visits between them)
        stage = rng.choice([nodes for nodes in data.stages[1:] if len(nodes) > 1] or [data.stages[0]])
        pair = set(rng.sample(stage, min(2, len(stage))))
        on = [mb for mb in mbs if pair & set(plan_.nodes[mb][1:])]
        return set(rng.sample(on, min(len(on), size))) or set(rng.sample(mbs, size))
    return set(rng.sample(mbs, size))
