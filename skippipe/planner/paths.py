"""Helpers every planner shares: the CC3-valid stage sequences and the microbatch numbering.

A stage sequence is the order of stages one microbatch visits, stage 0 (its data node) first;
the return to stage 0 for the loss is implicit, as in `schedule.MicrobatchPath`.
"""

from __future__ import annotations

from ..errors import SkipPipeError
from ..rules import cc3_problem
from ..scenario import Scenario


class PlanningError(SkipPipeError):
    """The planner cannot satisfy the scenario's rules (e.g. no CC3-valid path of length k)."""


def stage_sequences(scenario: Scenario) -> list[tuple[int, ...]]:
    """Every stage sequence a non-baseline path may take, in lexicographic order.

    Each starts with stage 0, visits `path_length` distinct stages (CC1, CC2) and passes
    `rules.cc3_problem` (CC3). Built depth-first; a prefix that already breaks CC3 is
    dropped with all its extensions (every CC3 limit only tightens as a path grows)."""
    n_stages, k = scenario.pipeline.n_stages, scenario.pipeline.path_length
    out: list[tuple[int, ...]] = []

    def extend(prefix: tuple[int, ...]) -> None:
        if len(prefix) == k:
            out.append(prefix)
            return
        for stage in range(1, n_stages):
            if stage not in prefix and cc3_problem(prefix + (stage,), scenario) is None:
                extend(prefix + (stage,))

    extend((0,))
    return out


def microbatch_ids(
    allocation: tuple[tuple[int, ...], ...] | list, scenario: Scenario
) -> list[tuple[int, int]]:
    """(microbatch, origin) for every microbatch of one iteration.

    Microbatches are numbered origin-major: data node allocation[0][i] owns microbatches
    i*M .. i*M+M-1, with M = `microbatches_per_node`."""
    per_node = scenario.pipeline.microbatches_per_node
    return [(i * per_node + j, origin) for i, origin in enumerate(allocation[0]) for j in range(per_node)]
