"""Greedy list scheduler for ca-partial: a fast feasible timed plan, CP-SAT's hint and fallback.

Microbatches are taken round-robin over the data nodes (each data node's in id order). Each one
tries every candidate path of its origin (candidates.py: CC3-valid stage sequences x allowed
nodes) and is inserted whole into the node timelines: every op at the earliest time its node is
free for its duration and its input has arrived over an idle link (gaps between placed ops are
used). Memory: when a hop's hold [F start, B end) would overflow its node's slots, that F is
delayed until the saturation ends and the path is placed again (the upstream hops keep their
times and hold their activations longer). The earliest finish wins (ties: the shorter idle round
trip).

TC1's visit cap is kept by looking ahead: a microbatch may only take a stage set after which
the remaining microbatches can still be given stage sets within every stage's share (the plan
so far minus one set, else the exact count model `model_data.stage_set_counts`, cached).
Optionally the visits are also paced (after j of N microbatches a stage may hold only about j/N
of its share, so the slow stages are not all left to the last microbatches) and spread over a
stage's nodes in proportion to their speed (so early microbatches do not take every fast node);
paths within those limits go first. `greedy_plan` runs each setting of GREEDY_VARIANTS and
keeps the best plan; guided by the data-node relaxation (bounds.Relaxation) it runs once, each
microbatch on its relaxed stage set, in the order of its relaxed start. Everything is in the
model's ticks (model_data.ModelData), so the plan is a feasible CP-SAT hint as it is.

Past the build's wall-clock cap (effort.WallCap) the greedy does the least work that still
completes: origins not yet given candidates get one path per stage set of the TC1-feasible
reference plan (`candidates.least_work_paths`), each microbatch takes the cheapest path the
reference still allows (one placement), and no further setting runs. Before the cap nothing
changes.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..ops import chain
from .candidates import PHASE, StageSet, candidate_paths, path_limit, stage_set
from .effort import WallCap, unlimited
from .model_data import ModelData, TimedPlan, plan_values, stage_set_counts
from .paths import PlanningError

if TYPE_CHECKING:
    from .bounds import Relaxation

log = logging.getLogger(__name__)

GREEDY_VARIANTS = ((0, None), (0, 1), (None, None))  # (stage pacing, node slack) per greedy run:
# visits a stage may run ahead of its paced share, a node beyond its share (None: unlimited)
EXACT_CHECKS = 3  # stage sets per microbatch checked with the exact count model (a few ms each)
PLACEMENTS_PER_S = 120_000  # op placements per second on the shared 2-core dev box (80k-350k)


@dataclass
class _State:
    """Mutable placement state (internal): busy intervals and activation holds per node."""

    busy_start: dict[int, list[int]] = field(default_factory=dict)
    busy_end: dict[int, list[int]] = field(default_factory=dict)
    holds: dict[int, list[tuple[int, int]]] = field(default_factory=dict)

    def fit(self, node: int, ready: int, dur: int) -> int:
        """Earliest t >= ready with [t, t + dur) free on `node`."""
        starts, ends = self.busy_start.setdefault(node, []), self.busy_end.setdefault(node, [])
        i = bisect.bisect_right(ends, ready)
        t = ready
        while i < len(starts) and starts[i] < t + dur:
            t = max(t, ends[i])
            i += 1
        return t

    def occupy(self, node: int, start: int, end: int) -> None:
        i = bisect.bisect_left(self.busy_start.setdefault(node, []), start)
        self.busy_start[node].insert(i, start)
        self.busy_end.setdefault(node, []).insert(i, end)

    def saturated_until(self, node: int, start: int, end: int, slots: int) -> int | None:
        """None when one more hold over [start, end) fits `slots`; else when the first
        saturation inside the window ends (a hold starting then may fit)."""
        inside = [(s, e) for s, e in self.holds.get(node, ()) if s < end and e > start]
        if len(inside) < slots:
            return None
        events = sorted([(max(s, start), 1) for s, _ in inside] + [(e, -1) for _, e in inside])
        held, saturated = 0, False
        for t, group in itertools.groupby(events, key=lambda ev: ev[0]):
            held += sum(delta for _, delta in group)
            if held >= slots and t < end:
                saturated = True
            elif saturated and held < slots:
                return t
        return None


class GreedyScheduler:
    """Builds one TimedPlan for the model data (see the module docstring)."""

    def __init__(
        self,
        data: ModelData,
        pacing: int | None = None,
        fixed_paths: dict[int, tuple[int, ...]] | None = None,
        node_slack: int | None = None,
        candidates: dict[int, list[tuple[int, ...]]] | None = None,
        guide: Relaxation | None = None,
        cap: WallCap | None = None,
    ):
        self.data, self.ops, self.pacing = data, chain(data.k), pacing
        self.cap = cap or unlimited()
        self.fixed = fixed_paths or {}
        self.guide = guide if guide is not None and guide.stage_set else None
        self.node_share = {} if node_slack is None else _node_shares(data, node_slack)
        self.node_visits: Counter = Counter()
        self.state = _State()
        self.candidates = candidates or {o: candidate_paths(data, o, cap=self.cap) for o in data.origins()}
        self.round_trip = {p: data.path_ticks(p) for paths in self.candidates.values() for p in paths}
        self.round_trip.update({p: data.path_ticks(p) for p in self.fixed.values()})
        self.caps = {s: data.visit_cap for s in range(1, len(data.stages))}
        self.reference = Counter(
            dict(data.visit_plan)
            if self.guide is None  # a TC1-feasible
            else self.guide.stage_set.values()
        )  # completion
        self.all_sets = sorted({stage_set(data, p) for paths in self.candidates.values() for p in paths})
        self._completions: dict[tuple, Counter | None] = {}
        self.nodes: dict[int, tuple[int, ...]] = {}
        self.starts: dict[tuple[str, int, int], int] = {}

    def run(self) -> TimedPlan:
        order = _round_robin(self.data.microbatches)
        if self.guide is not None:  # the relaxation's start order
            order.sort(key=lambda item: (self.guide.start[item[0]], item[0]))
        for mb, origin in order:
            self._schedule(mb, origin)
        return relabel_by_start(self.data, TimedPlan(self.nodes, self.starts))

    def _schedule(self, mb: int, origin: int) -> None:
        """Place `mb` on its earliest-finishing path whose stage set keeps TC1 completable: the
        best one the reference plan allows directly, unless one of the few better ones passes
        the exact check."""
        if mb in self.fixed:
            options = [self.fixed[mb]]
        elif self.cap.spent(PHASE):
            options = self._least_work(self.candidates[origin])
        else:
            options = self._guided(mb, self.candidates[origin])
        placed = sorted((self._place(p) + (p,) for p in options), key=lambda r: r[:2])
        paced = [
            r
            for r in placed
            if self._within_pace(stage_set(self.data, r[3]))
            and all(self.node_visits[n] < self.node_share.get(n, math.inf) for n in r[3][1:])
        ]
        exact_sets: set[StageSet] = set()
        for _, _, starts, path in paced + placed:
            st = stage_set(self.data, path)
            rest = self._rest_after(st)
            if rest is None and st not in exact_sets and len(exact_sets) < EXACT_CHECKS:
                exact_sets.add(st)
                rest = self._exact_rest_after(st)
            if rest is not None:
                self._commit(mb, path, starts, rest)
                return
        raise PlanningError(f"TC1: microbatch {mb} has no path within the stages' visit share")

    def _least_work(self, paths: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
        """Past the cap: the cheapest path whose stage set the reference plan still holds (all
        paths when none does)."""
        allowed = [p for p in paths if self.reference.get(stage_set(self.data, p), 0) > 0]
        return [min(allowed, key=lambda p: (self.round_trip[p], p))] if allowed else paths

    def _guided(self, mb: int, paths: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
        """With a guide: the paths of the stage set the relaxation gave `mb` (all when none)."""
        if self.guide is None:
            return paths
        want = self.guide.stage_set[mb]
        return [p for p in paths if stage_set(self.data, p) == want] or paths

    def _within_pace(self, st: StageSet) -> bool:
        """TC1's even share spread over the microbatches in placement order: after j of N, a
        stage has at most ceil(share x j / N) + pacing visits (so slow stages are not all left
        to the last microbatches). Always true without pacing."""
        if self.pacing is None:
            return True
        d = self.data
        pace = math.ceil(d.visit_cap * (len(self.nodes) + 1) / len(d.microbatches)) + self.pacing
        return all(d.visit_cap - self.caps[s] + 1 <= pace for s in st)

    def _rest_after(self, st: StageSet) -> Counter | None:
        """A TC1-feasible plan of stage sets for the microbatches after one taking `st`, cheaply:
        the reference plan minus `st`, or minus a set that `st` can replace. None: not found."""
        if self.reference.get(st, 0) > 0:
            return self.reference - Counter({st: 1})
        caps = {s: c - (s in st) for s, c in self.caps.items()}
        if min(caps.values()) < 0:
            return None
        used = Counter(s for t, n in self.reference.items() for s in t for _ in range(n))
        for t in sorted(self.reference):  # the reference covers this microbatch too: drop one set
            if all(used[s] - (s in t) <= caps[s] for s in caps):
                return self.reference - Counter({t: 1})
        return None

    def _exact_rest_after(self, st: StageSet) -> Counter | None:
        caps = {s: c - (s in st) for s, c in self.caps.items()}
        if min(caps.values()) < 0:
            return None
        return self._complete(caps, sum(self.reference.values()) - 1)

    def _complete(self, caps: dict[int, int], left: int) -> Counter | None:
        """Stage sets for `left` microbatches within `caps` (the exact count model, cached)."""
        key = (tuple(sorted(caps.items())), left)
        if key not in self._completions:
            exact = stage_set_counts(self.all_sets, caps, left)
            self._completions[key] = None if exact is None else Counter(exact)
        return self._completions[key]

    def _place(self, path: tuple[int, ...]) -> tuple[int, int, dict]:
        """(finish tick, idle round trip, op -> start) for `path` inserted into the timelines."""
        d, not_before = self.data, {}
        while True:
            starts, ready, prev = {}, 0, None
            for kind, hop in self.ops:
                node = d.op_node(path, kind, hop)
                if prev is not None:
                    ready += d.link[prev][node]
                ready = max(ready, not_before.get((kind, hop), 0))
                starts[kind, hop] = self.state.fit(node, ready, d.dur[kind][node])
                ready, prev = starts[kind, hop] + d.dur[kind][node], node
            late = self._memory_delay(path, starts)
            if late is None:
                return ready, self.round_trip[path], starts
            not_before[late[0]] = late[1]

    def _memory_delay(self, path, starts) -> tuple[tuple[str, int], int] | None:
        """None when every hop's hold fits its node's slots, else (its F, the earliest start)."""
        d = self.data
        for h, node in enumerate(path):
            s, e = starts["F", h], starts["B", h] + d.dur["B"][node]
            free_at = self.state.saturated_until(node, s, e, d.slots[node])
            if free_at is not None:
                return ("F", h), free_at
        return None

    def _commit(self, mb: int, path: tuple[int, ...], starts: dict, rest: Counter) -> None:
        d = self.data
        for (kind, hop), t in starts.items():
            node = d.op_node(path, kind, hop)
            self.state.occupy(node, t, t + d.dur[kind][node])
            self.starts[kind, mb, hop] = t
        for h, node in enumerate(path):
            self.state.holds.setdefault(node, []).append((starts["F", h], starts["B", h] + d.dur["B"][node]))
        for n in path[1:]:
            self.caps[d.stage_of[n]] -= 1
            self.node_visits[n] += 1
        self.nodes[mb] = path
        self.reference = rest


def _node_shares(data: ModelData, slack: int) -> dict[int, int]:
    """Node -> forward visits it should take at most: its stage's share split in proportion to
    node speed (1 / (F + B)), rounded up, plus `slack` (TC1: nodes of a stage share its visits)."""
    out = {}
    for nodes in data.stages[1:]:
        speed = {n: 1.0 / (data.dur["F"][n] + data.dur["B"][n]) for n in nodes}
        total = sum(speed.values())
        out.update({n: math.ceil(data.visit_cap * v / total) + slack for n, v in speed.items()})
    return out


def _round_robin(microbatches) -> list[tuple[int, int]]:
    """One microbatch of each data node in turn, each data node's in id order."""
    by_origin: dict[int, list[tuple[int, int]]] = {}
    for mb, origin in microbatches:
        by_origin.setdefault(origin, []).append((mb, origin))
    columns = itertools.zip_longest(*by_origin.values())
    return [item for column in columns for item in column if item is not None]


def relabel_by_start(data: ModelData, plan: TimedPlan) -> TimedPlan:
    """Renumber each data node's (identical) microbatches so their F at hop 0 start in id order."""
    by_origin: dict[int, list[int]] = {}
    for mb, origin in data.microbatches:
        by_origin.setdefault(origin, []).append(mb)
    rename = {}
    for mbs in by_origin.values():
        ordered = sorted(mbs, key=lambda mb: (plan.starts["F", mb, 0], mb))
        rename.update(zip(ordered, mbs))
    nodes = {rename[mb]: path for mb, path in plan.nodes.items()}
    starts = {(kind, rename[mb], hop): t for (kind, mb, hop), t in plan.starts.items()}
    return TimedPlan(nodes, starts)


def greedy_seconds(data: ModelData) -> float:
    """Estimated seconds of one greedy run from its size (op placements, PLACEMENTS_PER_S): a
    small budget runs fewer settings, decided from the problem, not the clock."""
    per_path = len(data.microbatches) * len(chain(data.k))
    return per_path * path_limit(data) / PLACEMENTS_PER_S


def greedy_plan(
    data: ModelData,
    objective: str = "iteration",
    fixed_paths: dict[int, tuple[int, ...]] | None = None,
    guide: Relaxation | None = None,
    runs: int | None = None,
    cap: WallCap | None = None,
) -> TimedPlan:
    """The best (by `objective`, see model_data.plan_values) of the greedy plans with each
    setting of GREEDY_VARIANTS: feasible for every rule of the model. With `fixed_paths` (microbatch ->
    node per hop) only the timing is chosen. With `guide` (a solved bounds.Relaxation) each
    microbatch takes its stage set there, in the order of its relaxed start. `runs`: only the
    first so many settings (a small budget; see `greedy_seconds`). Past `cap` the least work
    (module docstring): the settings not yet run are skipped."""
    best, best_value, cap = None, math.inf, cap or unlimited()
    candidates = {o: candidate_paths(data, o, cap=cap) for o in data.origins()}
    settings = GREEDY_VARIANTS if not (fixed_paths or guide) else ((None, None),)
    for pacing, node_slack in settings[: max(1, len(settings) if runs is None else runs)]:
        if best is not None and cap.spent(PHASE):
            break
        plan = GreedyScheduler(data, pacing, fixed_paths, node_slack, candidates, guide, cap).run()
        value = plan_values(data, plan)[objective]
        log.debug("greedy plan (pacing %s, node slack %s): %s %d ticks", pacing, node_slack, objective, value)
        if value < best_value:
            best, best_value = plan, value
    return best
