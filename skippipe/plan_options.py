"""What a build is asked for (PlanOptions): the variants, seed, effort, objective, wall-clock
cap, CP-SAT workers and memory and loss choices, with the check of them all before any
planning. Its own module because every command, the launcher and the benchmarks that plan a
schedule make one, while only planning.py builds from it.
"""

from __future__ import annotations

import dataclasses

from .ops import LOSS_AT
from .planner.effort import DEFAULT_EFFORT, DEFAULT_WORKERS, EFFORTS, default_cap_s
from .variants import REGISTRY, VARIANTS

DEFAULT_TIME_LIMIT_S = default_cap_s(DEFAULT_EFFORT)  # wall-clock safety cap at the default effort
OBJECTIVES = ("iteration", "makespan")  # simulator's iteration time (with averaging) / makespan


@dataclasses.dataclass(frozen=True)
class PlanOptions:
    variants: tuple[str, ...] = VARIANTS
    seed: int = 0
    time_limit_s: float | None = None  # wall-clock safety cap of the whole build (None: the effort's)
    workers: int = DEFAULT_WORKERS  # CP-SAT threads: the schedule does not depend on them
    objective: str = "iteration"  # what the partial variants and their allocation minimise
    shared_allocation: bool = False  # one (full-pipeline) allocation for every variant
    family_memory: bool = False  # the classic families under their own memory rules, not the slots
    loss_at: str | None = None  # the full pipelines' loss placement (ops.LOSS_AT); None: each one's default
    effort: str = DEFAULT_EFFORT  # planner/effort.py: quick, default or thorough

    def check(self) -> None:
        from .planner.paths import PlanningError

        if self.objective not in OBJECTIVES:
            raise PlanningError(f"objective {self.objective!r} is not one of {', '.join(OBJECTIVES)}")
        if self.effort not in EFFORTS:
            raise PlanningError(f"effort {self.effort!r} is not one of {', '.join(EFFORTS)}")
        if self.time_limit_s is not None and not 0 < self.time_limit_s < float("inf"):
            raise PlanningError(f"time limit {self.time_limit_s} s must be positive and finite")
        if self.workers < 1:
            raise PlanningError(f"workers {self.workers} must be at least 1")
        if self.loss_at not in (None, *LOSS_AT):
            raise PlanningError(f"loss placement {self.loss_at!r} is not one of {', '.join(LOSS_AT)}")
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown:
            raise PlanningError(f"unknown variant {unknown[0]!r} (known: {', '.join(VARIANTS)})")
        for name in self.variants:
            spec = REGISTRY[name]
            if spec.planner == "backward-split" and spec.built_on not in self.variants:
                raise PlanningError(
                    f"{name} is {spec.built_on} with the backward split: plan {spec.built_on} too"
                )

    @property
    def cap_s(self) -> float:
        return default_cap_s(self.effort) if self.time_limit_s is None else self.time_limit_s

    def loss_at_of(self, variant: str) -> str:
        """Where `variant`'s loss runs: the chosen placement for a full pipeline, else its default
        (a partial path may skip the last stage: its loss stays at the origin)."""
        spec = REGISTRY[variant]
        return self.loss_at if self.loss_at and spec.full_pipeline else spec.loss_at
