"""Network-blind random stage sequences: the one generator behind the planner's `random`
variant and the single-process trainer's `random` paths.

Each sequence starts at stage 0 and visits k-1 distinct other stages (CC1, CC2) in an order
CC3 allows (`paths.stage_sequences`); over all sequences no non-first stage gets more than
TC1's even share of visits (`rules.stage_visit_cap`)."""

from __future__ import annotations

import random

import numpy as np

from ..rules import stage_visit_cap
from ..scenario import Scenario
from .paths import PlanningError, stage_sequences

StagePath = tuple[int, ...]  # stage ids of one microbatch's path, stage 0 first


def random_stage_paths(scenario: Scenario, count: int, rng: random.Random | int) -> list[StagePath]:
    """`count` stage sequences under TC1's per-stage cap, each uniform among those that keep
    the rest drawable; `rng` is a Random or a seed.

    With r[s] visits left to stage s and R microbatches still to draw, each needing k-1
    distinct stages, a draw exists (ignoring CC3) iff sum_s min(r[s], R) >= R (k-1): the
    max-flow min-cut bound of microbatches -> stages. Every pick keeps that true; CC3 can
    still rule out what remains in exotic settings, which raises PlanningError."""
    rng = rng if isinstance(rng, random.Random) else random.Random(rng)
    options = stage_sequences(scenario)
    if not options:
        raise PlanningError(
            f"{scenario.source}: no stage sequence of length {scenario.pipeline.path_length} satisfies CC3"
        )
    n_stages, need = scenario.pipeline.n_stages, scenario.pipeline.path_length - 1
    uses = np.zeros((len(options), n_stages), dtype=np.int64)
    for row, seq in enumerate(options):
        uses[row, list(seq[1:])] = 1
    left = np.full(n_stages, stage_visit_cap(scenario, count), dtype=np.int64)
    left[0] = 0  # stage 0 is every path's origin, never a visit
    drawn = []
    for remaining in range(count - 1, -1, -1):  # microbatches still to draw after this one
        after = left[None, :] - uses
        ok = (after >= 0).all(axis=1) & (np.minimum(after, remaining).sum(axis=1) >= remaining * need)
        choices = np.flatnonzero(ok)
        if not len(choices):
            raise PlanningError(
                f"{scenario.source}: cannot spread {count} random paths evenly over the stages under CC3"
            )
        pick = choices[rng.randrange(len(choices))]
        left -= uses[pick]
        drawn.append(options[pick])
    return drawn
