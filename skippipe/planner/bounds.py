"""Lower bounds on the planning objective from the data alone (ticks of `ModelData`): round
trips, memory slot chains at the data nodes, data-node and stage work (`PathBounds`, used for
start domains and redundant constraints of the CP-SAT model and for the proven bound it
reports).
"""
from __future__ import annotations

import itertools
import logging
import math
from typing import TYPE_CHECKING

from ortools.sat.python import cp_model

from .model_data import DTIME_PER_WALL_S, ROUNDING_SLACK, ModelData, chain

if TYPE_CHECKING:
    from .cpsat import Rules

log = logging.getLogger(__name__)

VISIT_CHAIN_TIME_S = 2.0  # budget of the small visit-chain bound model (its proven bound is valid early)
VISIT_CHAIN_MAX_CHOICES = 3_000  # (microbatch, stage set) pairs beyond which that bound model is skipped


class PathBounds:
    """Lower bounds (ticks) from the data alone, for start domains and redundant constraints."""

    def __init__(self, data: ModelData, sequences):
        self.data, self.sequences, self.ops = data, sequences, chain(data.k)
        self._steps: dict[int, tuple[int, ...]] = {}
        self._round_trip: dict[int, int] = {}
        self._visit_chains: dict[bool, int] = {}

    def _nodes(self, origin: int, kind: str, hop: int) -> tuple[int, ...]:
        return (origin,) if kind == "L" else self.data.hop_nodes(origin, hop, self.sequences)

    def steps(self, origin: int) -> tuple[int, ...]:
        """Per op position: least duration plus link to the next op, over the allowed nodes."""
        if origin not in self._steps:
            d, out = self.data, []
            for (k0, h0), (k1, h1) in zip(self.ops, self.ops[1:]):
                out.append(min(d.dur[k0][a] + d.link[a][b] for a in self._nodes(origin, k0, h0)
                               for b in self._nodes(origin, k1, h1) if d.stage_of[a] != d.stage_of[b]))
            self._steps[origin] = tuple(out)
        return self._steps[origin]

    def earliest(self, origin: int) -> list[int]:
        """Earliest start tick of each op position of a microbatch from `origin`."""
        return [0] + list(itertools.accumulate(self.steps(origin)))

    def hold(self, origin: int, hop: int) -> int:
        """Least ticks from F start to B start at `hop` (the memory hold minus the B)."""
        pos = {op: p for p, op in enumerate(self.ops)}
        return sum(self.steps(origin)[pos["F", hop]:pos["B", hop]])

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
            floors.append(self.visit_chains(VISIT_CHAIN_TIME_S, visit_cap=rules.tc1_load))
            floors += [self.slot_chains(o, rules.tc2) for o in d.origins()]
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
        """A proven lower bound (ticks) on `rules.objective` from the bounds above alone."""
        d, makespan = self.data, self.makespan_floor(rules)
        if rules.objective == "makespan":
            return makespan
        done = self.done_floors(rules)
        return max([makespan + d.avg[0]] + [done.get(s, 0) + d.avg[s] for s in range(1, len(d.stages))])

    def set_round_trips(self, origin: int) -> dict[tuple[int, ...], int]:
        """Least round trip (ticks) of `origin` per visited stage set."""
        out: dict[tuple[int, ...], int] = {}
        for seq in self.sequences:
            st = tuple(sorted(seq[1:]))
            out[st] = min(out.get(st, math.inf), self.data.best_for_sequence(origin, seq))
        return out

    def visit_chains(self, time_limit_s: float, visit_cap: bool = True) -> int:
        """Memory slot chains under TC1's visit share. Each microbatch's slot at its data node is
        held at least the least round trip of its stage set; the shares force some microbatches
        onto slow stage sets. A small model picks every microbatch's stage set (within the shares)
        to minimise the largest chain bound over data nodes: with round trips r1 >= r2 >= ... and
        m slots, the top jm+1 microbatches put j+1 on one chain, so a chain holds at least the
        j+1 smallest of them; and at least the mean r / m. Its proven bound is valid."""
        if visit_cap not in self._visit_chains:
            self._visit_chains[visit_cap] = self._solve_visit_chains(time_limit_s, visit_cap)
        return self._visit_chains[visit_cap]

    def _solve_visit_chains(self, time_limit_s: float, visit_cap: bool) -> int:
        d, m = self.data, cp_model.CpModel()
        n_sets = len({tuple(sorted(seq[1:])) for seq in self.sequences})
        if len(d.microbatches) * n_sets > VISIT_CHAIN_MAX_CHOICES:
            return 0  # too large to pay off within its budget: the plain slot chains stand
        longest = sum(max(self.set_round_trips(o).values()) for o in d.origins())
        bound, visits = m.NewIntVar(0, longest, "bound"), {}
        for origin in d.origins():
            rts = self.set_round_trips(origin)
            n, slots = sum(1 for _, o in d.microbatches if o == origin), d.slots[origin]
            r = [m.NewIntVar(min(rts.values()), max(rts.values()), f"r_{origin}_{i}") for i in range(n)]
            for i in range(n):
                z = {st: m.NewBoolVar(f"z_{origin}_{i}_{st}") for st in rts}
                m.AddExactlyOne(z.values())
                m.Add(r[i] == sum(rts[st] * v for st, v in z.items()))
                for st, v in z.items():
                    for s in st:
                        visits.setdefault(s, []).append(v)
            for i in range(n - 1):
                m.Add(r[i] >= r[i + 1])
            m.Add(bound >= r[0])
            m.Add(slots * bound >= sum(r))
            for j in range(1, (n - 1) // slots + 1):
                m.Add(bound >= sum(r[j * slots - j: j * slots + 1]))
        if visit_cap:
            for vs in visits.values():
                m.Add(sum(vs) <= d.visit_cap)
        m.Minimize(bound)
        solver = cp_model.CpSolver()
        solver.parameters.max_deterministic_time = time_limit_s * DTIME_PER_WALL_S
        solver.parameters.num_workers = 1  # deterministic; the model is small
        status = solver.Solve(m)
        if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            return 0
        log.debug("visit-chain bound %s: %d ticks", solver.StatusName(status), solver.BestObjectiveBound())
        return math.ceil(solver.BestObjectiveBound() - ROUNDING_SLACK)

