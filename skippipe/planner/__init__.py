"""Planners: node -> stage allocation, the reference variants, and helpers all planners share.

`allocate` picks the allocation every variant of a schedule uses; `baseline_variant` and
`random_variant` build the two reference variants on it; `paths` holds the CC3-valid stage
sequences and the microbatch numbering the path planners share.
"""

from .allocation import (
    Allocation,
    allocation_score,
    as_stages,
    check_allocation,
    random_allocation,
    round_robin_allocation,
    score_breakdown,
)
from .allocation_search import allocate
from .baselines import baseline_variant, random_variant
from .paths import PlanningError, microbatch_ids, stage_sequences

__all__ = [
    "Allocation",
    "allocate",
    "allocation_score",
    "check_allocation",
    "random_allocation",
    "round_robin_allocation",
    "score_breakdown",
    "as_stages",
    "baseline_variant",
    "random_variant",
    "PlanningError",
    "microbatch_ids",
    "stage_sequences",
]
