"""Lower bounds on the planning objective (ticks of `ModelData`), for start domains and
redundant constraints of the CP-SAT model and for the proven bound a schedule reports.

`PathBounds` holds the bounds from the data alone (round trips, memory slot chains at the data
nodes, data-node and stage work) and the data-node relaxation (`Relaxation`): a small CP-SAT
model that keeps every rule at the data nodes and TC1's visit share but replaces the rest of
each path by the least no-wait times of its stage set (`SetTimes`). It is solved to optimality
in seconds on the paper's setting, and its stage sets guide a second greedy plan.
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass

from ortools.sat.python import cp_model

from ..ops import chain
from .effort import WallCap, set_cpsat_limits, unlimited
from .model_data import ROUNDING_SLACK, ModelData, Rules

log = logging.getLogger(__name__)

RELAX_MAX_CHOICES = 3_000  # (microbatch, stage set) pairs beyond which the relaxation is skipped:
# the paper's setting has 300 (optimal in ~3 s on 2 cores), scale-40 600 (~2 s); scale-80's 5,376
# did not reach the plain bounds in 9 s


class PathBounds:
    """Lower bounds (ticks) from the data alone, for start domains and redundant constraints."""

    def __init__(self, data: ModelData, sequences):
        self.data, self.sequences, self.ops = data, sequences, chain(data.k)
        self._steps: dict[int, tuple[int, ...]] = {}
        self._round_trip: dict[int, int] = {}
        self._relaxed: dict[tuple, Relaxation | None] = {}

    def _nodes(self, origin: int, kind: str, hop: int) -> tuple[int, ...]:
        return (origin,) if kind == "L" else self.data.hop_nodes(origin, hop, self.sequences)

    def steps(self, origin: int) -> tuple[int, ...]:
        """Per op position: least duration plus link to the next op, over the allowed nodes."""
        if origin not in self._steps:
            d, out = self.data, []
            for (k0, h0), (k1, h1) in zip(self.ops, self.ops[1:]):
                out.append(
                    min(
                        d.dur[k0][a] + d.link[a][b]
                        for a in self._nodes(origin, k0, h0)
                        for b in self._nodes(origin, k1, h1)
                        if d.stage_of[a] != d.stage_of[b]
                    )
                )
            self._steps[origin] = tuple(out)
        return self._steps[origin]

    def earliest(self, origin: int) -> list[int]:
        """Earliest start tick of each op position of a microbatch from `origin`."""
        return [0] + list(itertools.accumulate(self.steps(origin)))

    def hold(self, origin: int, hop: int) -> int:
        """Least ticks from F start to B start at `hop` (the memory hold minus the B)."""
        pos = {op: p for p, op in enumerate(self.ops)}
        return sum(self.steps(origin)[pos["F", hop] : pos["B", hop]])

    def round_trip(self, origin: int) -> int:
        """Exact least round trip (ticks, F start at hop 0 to B end at hop 0)."""
        if origin not in self._round_trip:
            self._round_trip[origin] = self.data.min_round_trip(origin, self.sequences)
        return self._round_trip[origin]

    def slot_chains(self, origin: int, no_overlap: bool) -> int:
        """Memory slot chains at a data node. Its n microbatches each hold one of its m slots for
        a whole round trip; intervals with at most m overlapping split into m chains of disjoint
        ones (interval graphs are perfect), so some chain has q = ceil(n/m) of them, or one has
        q+1. With q at most, r = n - m(q-1) chains have exactly q; with TC2 their first F (and
        last B) at hop 0 are distinct ops on the data node, so the latest ends at least (r-1)
        F (or B) durations after q round trips."""
        d = self.data
        n = sum(1 for _, o in d.microbatches if o == origin)
        m, rt = d.slots[origin], self.round_trip(origin)
        q = math.ceil(n / m)
        if not no_overlap:
            return q * rt
        r = n - m * (q - 1)
        spread = (r - 1) * max(d.dur["F"][origin], d.dur["B"][origin])
        return min((q + 1) * rt, q * rt + spread)

    def data_node_work(self, origin: int) -> int:
        """With TC2: every L and B at hop 0 runs on the data node after the earliest L."""
        d = self.data
        n = sum(1 for _, o in d.microbatches if o == origin)
        earliest_l = self.earliest(origin)[d.k]
        ends = d.dur["L"][origin] + d.dur["B"][origin]
        return max(earliest_l + n * ends, n * (ends + d.dur["F"][origin]))

    def stage_work(self, stage: int) -> tuple[int, int] | None:
        """(least done tick, least ticks from there to the makespan) for a stage that must get
        visits: TC1's cap on the other reachable stages leaves it at least V_min; its nodes run
        the F and B of each visit from the earliest possible hop-1 F on."""
        d = self.data
        used = {s for seq in self.sequences for s in seq[1:]}
        v_min = len(d.microbatches) * (d.k - 1) - d.visit_cap * (len(used) - 1)
        if stage not in used or v_min <= 0:
            return None
        nodes = sorted({n for o in d.origins() for n in d.allowed[o][stage]})
        work = [d.dur["F"][n] + d.dur["B"][n] for n in nodes]
        lo, hi = 0, v_min * max(work)
        while lo < hi:  # least T with sum over nodes of floor(T / work) >= v_min
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if sum(mid // w for w in work) >= v_min else (mid + 1, hi)
        first = min(self.earliest(o)[1] for o in d.origins())
        tail = min(d.link[n][o] + d.dur["B"][o] for o in d.origins() for n in d.allowed[o][stage])
        return first + lo, tail

    def makespan_floor(self, rules: Rules) -> int:
        """The largest of the makespan bounds that `rules` keep valid (ticks)."""
        d, floors = self.data, [0]
        if rules.tc1_memory:
            floors += [self.slot_chains(o, rules.tc2) for o in d.origins()]
        if rules.objective == "makespan":
            floors.append(self.relaxed_floor(rules))
        if rules.tc2:
            floors += [self.data_node_work(o) for o in d.origins()]
        if rules.tc2 and rules.tc1_load:
            floors += [sum(w) for s in range(1, len(d.stages)) if (w := self.stage_work(s))]
        return max(floors)

    def done_floors(self, rules: Rules) -> dict[int, int]:
        """Stage -> least tick its last op can end (stage work; needs TC2 and the visit share)."""
        if not (rules.tc2 and rules.tc1_load):
            return {}
        return {s: w[0] for s in range(1, len(self.data.stages)) if (w := self.stage_work(s))}

    def objective_floor(self, rules: Rules) -> int:
        """A proven lower bound (ticks) on `rules.objective` from the bounds above and the
        relaxation (when `relax` has run for these rules)."""
        d, makespan = self.data, self.makespan_floor(rules)
        if rules.objective == "makespan":
            return makespan
        done = self.done_floors(rules)
        return max(
            [makespan + d.avg[0], self.relaxed_floor(rules)]
            + [done.get(s, 0) + d.avg[s] for s in range(1, len(d.stages))]
        )

    def relax(
        self, rules: Rules, work_s: float, workers: int = 1, cap: WallCap | None = None
    ) -> Relaxation | None:
        """Solve the data-node relaxation (see `Relaxation`) for `work_s` work seconds of
        deterministic time (effort.py: a seed reproduces; `cap` only stops it early); cached
        per rule set. None when the model is too large (RELAX_MAX_CHOICES)."""
        key = _rules_key(rules)
        if key not in self._relaxed:
            self._relaxed[key] = Relaxation.solve(
                self.data, self.sequences, rules, work_s, workers, cap or unlimited()
            )
        return self._relaxed[key]

    def relaxed_floor(self, rules: Rules) -> int:
        """The relaxation's proven bound, 0 when it has not run for these rules."""
        found = self._relaxed.get(_rules_key(rules))
        return found.bound if found is not None else 0


def _rules_key(rules: Rules) -> tuple:
    return rules.tc1_memory, rules.tc1_load, rules.tc2, rules.cc3, rules.objective


StageSet = tuple[int, ...]


@dataclass(frozen=True)
class SetTimes:
    """Least no-wait times (ticks) of one origin's microbatch over every path visiting a stage
    set (every CC3-valid order, every allowed node): F0 start to L start (`fwd`), L end to B0
    end (`bwd`), the round trip (`round_trip`, exact: the same nodes both ways) and `tail`:
    max over the set's stages s of (least L end to B end at s, plus s's averaging), which the
    iteration time cannot beat once the L has ended."""

    fwd: int
    bwd: int
    round_trip: int
    tail: int


def set_times(data: ModelData, origin: int, sequences) -> dict[StageSet, SetTimes]:
    """Per stage set its SetTimes: shortest-path passes over the hops of each sequence. The
    minima are taken separately (a path fast forward need not be fast backward), which keeps
    them lower bounds."""
    d, parts = data, {}
    for seq in sequences:
        fwd, bwd, tails = _sequence_times(d, origin, seq)
        st = tuple(sorted(seq[1:]))
        rt = d.best_for_sequence(origin, seq)
        old = parts.get(st)
        if old is None:
            parts[st] = [fwd, bwd, rt, dict(tails)]
            continue
        old[0], old[1], old[2] = min(old[0], fwd), min(old[1], bwd), min(old[2], rt)
        for s, t in tails.items():
            old[3][s] = min(old[3][s], t)
    return {
        st: SetTimes(f, b, rt, max(t + d.avg[s] for s, t in tails.items()))
        for st, (f, b, rt, tails) in parts.items()
    }


def _sequence_times(d: ModelData, origin: int, seq) -> tuple[int, int, dict[int, int]]:
    """(fwd, bwd, stage -> least L end to B end) of one stage sequence over the allowed nodes."""
    hops = [d.allowed[origin][s] for s in seq[1:]]
    arrive = {n: d.dur["F"][origin] + d.link[origin][n] + d.dur["F"][n] for n in hops[0]}
    for nodes in hops[1:]:
        arrive = {n: min(t + d.link[a][n] for a, t in arrive.items()) + d.dur["F"][n] for n in nodes}
    fwd = min(t + d.link[n][origin] for n, t in arrive.items())
    back = {n: d.link[origin][n] + d.dur["B"][n] for n in hops[-1]}
    tails = {seq[-1]: min(back.values())}
    for stage, nodes in zip(reversed(seq[1:-1]), reversed(hops[:-1])):
        back = {n: min(t + d.link[a][n] for a, t in back.items()) + d.dur["B"][n] for n in nodes}
        tails[stage] = min(back.values())
    bwd = min(t + d.link[n][origin] for n, t in back.items()) + d.dur["B"][origin]
    return fwd, bwd, tails


@dataclass(frozen=True)
class Relaxation:
    """The data-node relaxation: every rule at the data nodes is kept (TC2: their F0, L and B0
    do not overlap; TC1: at most m microbatches between F0 start and B0 end) and TC1's visit
    share, but the rest of each path is replaced by the least no-wait times of its stage set
    (`SetTimes`): the other nodes and the links are never busy. Any schedule is a solution of
    it with the same objective, so its optimum, and CP-SAT's proven bound on it, bound the
    planning objective from below. Its solution (a stage set and a start per microbatch) is
    also a guide for the greedy (greedy.py)."""

    bound: int  # ticks of the objective
    status: str
    stage_set: dict[int, StageSet]  # microbatch -> its stage set in the relaxed optimum (or {})
    start: dict[int, int]  # microbatch -> F0 start tick there

    @staticmethod
    def solve(
        data: ModelData, sequences, rules: Rules, work_s: float, workers: int, cap: WallCap
    ) -> Relaxation | None:
        if len(data.microbatches) * len({frozenset(seq) for seq in sequences}) > RELAX_MAX_CHOICES:
            return None
        times = {o: set_times(data, o, sequences) for o in data.origins()}
        m = cp_model.CpModel()
        build = _RelaxationModel(m, data, times, rules)
        solver = cp_model.CpSolver()
        set_cpsat_limits(solver.parameters, work_s, cap, workers, seed=0)
        status = solver.Solve(m)
        name = solver.StatusName(status)
        if status == cp_model.INFEASIBLE:  # the visit share itself (check_feasible said so too)
            return None
        bound = math.ceil(solver.BestObjectiveBound() - ROUNDING_SLACK)
        log.debug("relaxation %s after %.1f s: bound %d ticks", name, solver.WallTime(), bound)
        if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            return Relaxation(bound, name, {}, {})
        sets = {mb: next(st for st, v in z.items() if solver.Value(v)) for mb, z in build.z.items()}
        return Relaxation(bound, name, sets, {mb: solver.Value(s) for mb, s in build.start.items()})


class _RelaxationModel:
    """Builds the relaxation into `m` (see Relaxation)."""

    def __init__(self, m: cp_model.CpModel, data: ModelData, times: dict, rules: Rules):
        d = data
        horizon = sum(max(t.round_trip for t in times[o].values()) for _, o in d.microbatches)
        horizon += max(d.avg) + max(t.tail for ts in times.values() for t in ts.values())
        self.objective = m.NewIntVar(0, horizon, "objective")
        self.z, self.start, visits = {}, {}, {}
        by_origin = {o: [mb for mb, o2 in d.microbatches if o2 == o] for o in d.origins()}
        for origin, mbs in by_origin.items():
            ops, holds = [], []
            for mb in mbs:
                z = {st: m.NewBoolVar(f"z_{mb}_{st}") for st in times[origin]}
                m.AddExactlyOne(z.values())
                for st, v in z.items():
                    for s in st:
                        visits.setdefault(s, []).append(v)
                ops_mb, hold = self._microbatch(m, d, mb, origin, z, times[origin], horizon, rules)
                ops += ops_mb
                holds.append(hold)
                self.z[mb] = z
            for prev, nxt in zip(mbs, mbs[1:]):  # identical microbatches: F0 in id order
                gap = d.dur["F"][origin] if rules.tc2 else 0
                m.Add(self.start[nxt] >= self.start[prev] + gap)
            if rules.tc2:
                m.AddNoOverlap(ops)
            if rules.tc1_memory and len(holds) > d.slots[origin]:
                m.AddCumulative(holds, [1] * len(holds), d.slots[origin])
        if rules.tc1_load:
            for vs in visits.values():
                if len(vs) > d.visit_cap:
                    m.Add(sum(vs) <= d.visit_cap)
        self._order_twins(m, d, times, by_origin)
        m.Minimize(self.objective)

    def _order_twins(
        self, m: cp_model.CpModel, d: ModelData, times: dict, by_origin: dict[int, list[int]]
    ) -> None:
        """Data nodes that are interchangeable here (same times, durations, slots, number of
        microbatches: two nodes of one location) start their first microbatch in node order."""
        twins: dict[tuple, list[int]] = {}
        for origin, mbs in by_origin.items():
            key = (
                tuple(sorted(times[origin].items())),
                d.slots[origin],
                tuple(d.dur[kind][origin] for kind in "FLB"),
                len(mbs),
            )
            twins.setdefault(key, []).append(mbs[0])
        for firsts in twins.values():
            for a, b in zip(firsts, firsts[1:]):
                m.Add(self.start[a] <= self.start[b])

    def _microbatch(
        self, m, d: ModelData, mb: int, origin: int, z: dict, times: dict, horizon: int, rules: Rules
    ):
        """One microbatch's F0 start s, L start ls and B0 end e, its ops and its memory hold."""

        def of(field: str):  # the chosen stage set's time
            return sum(getattr(times[st], field) * v for st, v in z.items())

        f, l_, b = d.dur["F"][origin], d.dur["L"][origin], d.dur["B"][origin]
        s, ls, e = (m.NewIntVar(0, horizon, f"{x}_{mb}") for x in "sle")
        m.Add(ls >= s + of("fwd"))
        m.Add(e >= ls + l_ + of("bwd"))
        m.Add(e >= s + of("round_trip"))
        if rules.objective == "makespan":
            m.Add(self.objective >= e)
        else:
            m.Add(self.objective >= e + d.avg[0])
            m.Add(self.objective >= ls + l_ + of("tail"))
        self.start[mb] = s
        ops = [
            m.NewFixedSizeIntervalVar(s, f, f"F0_{mb}"),
            m.NewFixedSizeIntervalVar(ls, l_, f"L_{mb}"),
            m.NewFixedSizeIntervalVar(e - b, b, f"B0_{mb}"),
        ]
        hold = m.NewIntervalVar(s, m.NewIntVar(0, horizon, f"hold_{mb}"), e, f"M_{mb}")
        return ops, hold
