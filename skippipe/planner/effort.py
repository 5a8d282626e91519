"""Planning effort in deterministic work, and the wall clock as a safety cap only.

An effort level (`EFFORTS`) is a budget of *work seconds*: nominal seconds of search on the
2-core reference machine, scaled down for small problems (`work_seconds`). Every phase turns its
share of them into work that does not depend on the clock: annealing moves, greedy
evaluations, path-LNS steps, and CP-SAT's deterministic time (DTIME_PER_WORK_S per work
second). CP-SAT runs with several workers only in its interleaved search, whose result does not
depend on thread timing. So a scenario, seed and effort give the same schedule on any machine,
loaded or idle; a slow machine only takes longer.

The wall clock (`WallCap`) is the safety cap of a whole build: phases stop early when it has
passed, the build says so in one line and records it in the provenance of the variants planned
from then on (their plans then depend on the machine's speed).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

EFFORTS = {"quick": 10.0, "default": 50.0, "thorough": 240.0}  # work seconds of a whole build
DEFAULT_EFFORT = "default"
REFERENCE_SIZE = 1_350  # problem_size of geo-distributed: the full effort from there up
MIN_SCALE = 0.04  # smaller problems get their share of the effort, at least this much
CAP_PER_WORK_S = 5.0  # default wall cap: this many times the effort's work seconds
DTIME_PER_WORK_S = 0.1  # CP-SAT deterministic time per work second (one worker on the 2-core
# reference machine: 0.1-0.15 per wall second, measured loaded)
DEFAULT_WORKERS = 2  # CP-SAT threads; with the interleaved search the result does not depend on it


def problem_size(scenario) -> int:
    """(microbatch, hop, node) choices at most: microbatches x (k - 1) x nodes outside stage 0."""
    p = scenario.pipeline
    return p.stage_sizes[0] * p.microbatches_per_node * (p.path_length - 1) * sum(p.stage_sizes[1:])


def work_seconds(effort: str, size: int) -> float:
    """Work seconds of a build at `effort` for a problem of `size` (`problem_size`): the full
    budget from REFERENCE_SIZE up, a share of it (at least MIN_SCALE) below."""
    if effort not in EFFORTS:
        raise ValueError(f"effort {effort!r} is not one of {', '.join(EFFORTS)}")
    return EFFORTS[effort] * min(1.0, max(MIN_SCALE, size / REFERENCE_SIZE))


def default_cap_s(effort: str) -> float:
    """The wall-clock safety cap of a build at `effort` when none is given (seconds)."""
    return CAP_PER_WORK_S * EFFORTS[effort]


class WallCap:
    """The wall-clock safety cap of a whole build, shared by its phases."""

    def __init__(self, limit_s: float, say: Callable[[str], None] | None = None):
        self.limit_s, self.started = limit_s, time.monotonic()
        self.say = say or log.warning
        self.cut: str | None = None  # the phase in which the cap first cut in

    def left(self) -> float:
        """Wall seconds left before the cap (0 when it has passed)."""
        return max(0.0, self.started + self.limit_s - time.monotonic())

    def spent(self, phase: str) -> bool:
        """Whether the cap has passed; the first time, say so in one line naming `phase`."""
        if self.left() > 0:
            return False
        if self.cut is None:
            self.cut = phase
            self.say(
                f"wall-clock cap of {self.limit_s:g} s cut in during {phase}: what follows "
                f"does the least work, and the schedule depends on this machine's speed"
            )
        return True


def unlimited() -> WallCap:
    """A cap that never cuts in (for callers that budget in work only)."""
    return WallCap(float("inf"))


def set_cpsat_limits(params, work_s: float, cap: WallCap, workers: int, seed: int) -> None:
    """CP-SAT parameters for a deterministic run of `work_s` work seconds: deterministic time
    ends it; the wall cap only stops it early; several workers share the interleaved search."""
    params.max_deterministic_time = max(0.0, work_s) * DTIME_PER_WORK_S
    params.max_time_in_seconds = max(cap.left(), 1e-3) if cap.left() < float("inf") else 1e9
    params.num_workers = workers
    params.interleave_search = workers > 1
    params.random_seed = seed
