"""CP-SAT model of ca-partial path planning: variables, one add_<rule>() per rule, objective,
solve, extract (docs/design.md). Its data (ticks, candidate nodes, durations) is model_data.ModelData,
its proven lower bounds come from bounds.py; the greedy list scheduler (greedy.py) hints it.

Variables, per microbatch j: x[j,h,n] (hop h >= 1 runs on node n), st[j,h] (its stage),
start[j,p] for the 2k+1 ops of the chain F0..F(k-1), L, B(k-1)..B0, span[j,h] = start(B_h) -
start(F_h); makespan, per stage done[s] and the iteration time.

Rules: CC1/CC2 are structural (hop 0 is the origin, every other hop one node of a non-first
stage, the loss at the origin; CC2's distinctness comes with CC3's table or, with CC3 off, an
AllDifferent). add_cc3: the stage sequence is one of the CC3-valid ones. add_links: consecutive
ops are separated by the op's duration plus the idle-link time of the node pair in use. add_tc1_
memory: per node, a cumulative of [F start, B end) intervals within its memory slots. add_tc1_
load: TC1's even share of forward visits per stage. add_tc2: per node, NoOverlap of its ops.

Objective: the simulator's iteration time, max over stages of (last op end + averaging), or the
makespan (last B at hop 0). Redundant constraints (add_bounds: memory slot chains at the data
nodes, data-node work, stage work) and symmetry breaking (a data node's identical microbatches
start in id order) only tighten the search.

Sub-models (lns.py, the path LNS): `fixed_paths` pins some microbatches' nodes
(their link constraints become plain precedences) and `fixed_order` keeps their op order per node.

Approximated: links are idle in the model (the simulator's FIFO queueing on a directed link is
not modelled); durations are rounded up to ticks.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

from ortools.sat.python import cp_model

from ..ops import chain
from .bounds import PathBounds
from .effort import WallCap, set_cpsat_limits, unlimited
from .model_data import ROUNDING_SLACK, ModelData, Rules, TimedPlan, all_sequences, plan_values
from .paths import PlanningError

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# The model


class PathModel:
    """The CP-SAT model of one planning problem; `upper_bound` (ticks of the objective, e.g. a
    greedy plan's) bounds every start time, else a serial schedule's length does. With
    `fixed_paths` (microbatch -> node per hop) those microbatches keep their paths and only
    their timing is free (sequencing subproblems); with `fixed_order` their ops also keep that
    plan's order on each node; `lower` shares bounds already computed."""

    def __init__(
        self,
        data: ModelData,
        rules: Rules = Rules(),
        upper_bound: int | None = None,
        fixed_paths: dict[int, tuple[int, ...]] | None = None,
        lower: PathBounds | None = None,
        fixed_order: TimedPlan | None = None,
    ):
        self.data, self.rules, self.fixed = data, rules, fixed_paths or {}
        self.model = cp_model.CpModel()
        self.sequences = data.sequences if rules.cc3 else all_sequences(data)
        self.ops = chain(data.k)
        self.pos = {op: p for p, op in enumerate(self.ops)}
        self.lower = lower if lower is not None else PathBounds(data, self.sequences)
        self.horizon = upper_bound if upper_bound is not None else self._serial_horizon()
        self._add_variables()
        self.add_paths()
        self.add_cc3() if rules.cc3 else self.add_cc2()
        self.add_links()
        if rules.tc1_memory:
            self.add_tc1_memory()
        if rules.tc1_load:
            self.add_tc1_load()
        if rules.tc2:
            self.add_tc2()
        self.add_objective()
        if rules.bounds:
            self.add_bounds()
        if rules.symmetry:
            self.add_symmetry_breaking()
        if fixed_order is not None:
            self.keep_order(fixed_order)

    # -- variables ------------------------------------------------------------------------------

    def _serial_horizon(self) -> int:
        """Microbatches one after another, each on its slowest allowed path: always feasible
        for the timing rules (the load cap aside), so the optimum is below it."""
        d = self.data
        worst = sum(max(d.dur[kind]) for kind, _ in self.ops) + (len(self.ops) - 1) * max(map(max, d.link))
        return len(d.microbatches) * worst + max(d.avg)

    def _add_variables(self) -> None:
        d, m, hz = self.data, self.model, self.horizon
        self.x: dict[tuple[int, int], dict[int, cp_model.IntVar]] = {}
        self.st, self.start, self.span = {}, {}, {}
        for mb, origin in d.microbatches:
            for h in range(1, d.k):
                nodes = (self.fixed[mb][h],) if mb in self.fixed else d.hop_nodes(origin, h, self.sequences)
                self.x[mb, h] = {n: m.NewBoolVar(f"x_{mb}_{h}_{n}") for n in nodes}
                self.st[mb, h] = m.NewIntVarFromDomain(
                    cp_model.Domain.FromValues(sorted({d.stage_of[n] for n in nodes})), f"st_{mb}_{h}"
                )
            est = self.lower.earliest(origin)
            for p in range(len(self.ops)):
                self.start[mb, p] = m.NewIntVar(est[p], max(est[p], hz), f"s_{mb}_{p}")
            for h in range(d.k):
                self.span[mb, h] = m.NewIntVar(0, hz, f"span_{mb}_{h}")
                m.Add(self.span[mb, h] == self.start[mb, self.pos["B", h]] - self.start[mb, self.pos["F", h]])
        self.makespan = m.NewIntVar(0, hz, "makespan")
        self.done = {s: m.NewIntVar(0, hz, f"done_{s}") for s in range(1, len(d.stages))}
        self.iteration = m.NewIntVar(0, hz, "iteration")

    def lit(self, mb: int, hop: int, node: int):
        """The literal 'hop `hop` of `mb` runs on `node`' (None at hop 0: always the origin)."""
        return None if hop == 0 else self.x[mb, hop][node]

    def nodes_at(self, mb: int, origin: int, kind: str, hop: int) -> tuple[int, ...]:
        return (origin,) if kind == "L" or hop == 0 else tuple(self.x[mb, hop])

    # -- rules ----------------------------------------------------------------------------------

    def add_paths(self) -> None:
        """CC1/CC2 structure: each non-first hop runs on exactly one node; st is its stage."""
        for (mb, h), choice in self.x.items():
            self.model.AddExactlyOne(choice.values())
            self.model.Add(self.st[mb, h] == sum(self.data.stage_of[n] * v for n, v in choice.items()))

    def add_cc3(self) -> None:
        """CC3 (and CC2): the stage sequence is one of the CC3-valid sequences."""
        tuples = [list(seq[1:]) for seq in self.sequences]
        for mb, _ in self.data.microbatches:
            self.model.AddAllowedAssignments([self.st[mb, h] for h in range(1, self.data.k)], tuples)

    def add_cc2(self) -> None:
        """CC2 alone (CC3 switched off): the visited stages are distinct."""
        for mb, _ in self.data.microbatches:
            self.model.AddAllDifferent([self.st[mb, h] for h in range(1, self.data.k)])

    def add_links(self) -> None:
        """Each op starts after the previous op of its microbatch ends plus the idle-link time
        between their nodes. With the node on one side chosen, the other side's choice picks
        the link: one linear constraint per node (exactly one x of a hop is true)."""
        d = self.data
        self.pairs = {(h, seq[h], seq[h + 1]) for seq in self.sequences for h in range(1, d.k - 1)}
        for mb, origin in d.microbatches:
            for p in range(len(self.ops) - 1):
                (k0, h0), (k1, h1) = self.ops[p], self.ops[p + 1]
                first, second = self.nodes_at(mb, origin, k0, h0), self.nodes_at(mb, origin, k1, h1)
                gap = self.start[mb, p + 1] - self.start[mb, p]
                steps = [
                    d.dur[k0][a] + d.link[a][b] for a in first for b in second if self._linked(h0, a, h1, b)
                ]
                self.model.Add(gap >= min(steps))
                for a in first:  # the op's own node known: the next node's choice adds its link
                    after = {b: d.dur[k0][a] + d.link[a][b] for b in second if self._linked(h0, a, h1, b)}
                    self._add_step(gap, after, mb, h1, self.lit(mb, h0, a))
                if len(second) > 1 and len(first) > 1:  # the next node known: this one's choice
                    for b in second:
                        before = {a: d.dur[k0][a] + d.link[a][b] for a in first if self._linked(h0, a, h1, b)}
                        self._add_step(gap, before, mb, h0, self.lit(mb, h1, b))

    def _linked(self, h0: int, a: int, h1: int, b: int) -> bool:
        """Whether hops h0 on node a and h1 on node b can be consecutive in one path."""
        if not h0 or not h1:
            return True
        sa, sb = self.data.stage_of[a], self.data.stage_of[b]
        return (min(h0, h1), *((sa, sb) if h0 < h1 else (sb, sa))) in self.pairs

    def _add_step(self, gap, step_of: dict[int, int], mb: int, hop: int, enforce) -> None:
        """gap >= step_of[n] for the node n chosen at `hop` (enforced by `enforce` unless None)."""
        if not step_of:
            if enforce is not None:
                self.model.Add(enforce == 0)
            return
        least = min(step_of.values())
        extra = sum((t - least) * self.lit(mb, hop, n) for n, t in step_of.items() if t > least) if hop else 0
        ct = self.model.Add(gap >= least + extra)
        if enforce is not None:
            ct.OnlyEnforceIf(enforce)

    def _intervals(self, kinds: str):
        """node -> [(interval, kind)] for ops of `kinds` ('M' = memory hold [F start, B end))."""
        d, m, out = self.data, self.model, {}
        for mb, origin in d.microbatches:
            for h in range(d.k):
                for n in self.nodes_at(mb, origin, "F", h):
                    lit = self.lit(mb, h, n)
                    for kind in kinds.replace("L", ""):
                        out.setdefault(n, []).append(self._interval(mb, h, n, kind, lit))
            if "L" in kinds:
                s = self.start[mb, self.pos["L", 0]]
                out.setdefault(origin, []).append(m.NewFixedSizeIntervalVar(s, d.dur["L"][origin], f"L_{mb}"))
        return out

    def _interval(self, mb: int, h: int, n: int, kind: str, lit):
        d, m = self.data, self.model
        if kind == "M":
            f, b, end = self.start[mb, self.pos["F", h]], self.start[mb, self.pos["B", h]], d.dur["B"][n]
            if lit is None:
                return m.NewIntervalVar(f, self.span[mb, h] + end, b + end, f"M_{mb}_{h}")
            return m.NewOptionalIntervalVar(f, self.span[mb, h] + end, b + end, lit, f"M_{mb}_{h}_{n}")
        s = self.start[mb, self.pos[kind, h]]
        if lit is None:
            return m.NewFixedSizeIntervalVar(s, d.dur[kind][n], f"{kind}_{mb}_{h}")
        return m.NewOptionalFixedSizeIntervalVar(s, d.dur[kind][n], lit, f"{kind}_{mb}_{h}_{n}")

    def add_tc1_memory(self) -> None:
        """TC1: a node holds at most its memory slots of activations, each from F start to B end."""
        for n, intervals in self._intervals("M").items():
            if len(intervals) > self.data.slots[n]:
                self.model.AddCumulative(intervals, [1] * len(intervals), self.data.slots[n])

    def add_tc1_load(self) -> None:
        """TC1: each non-first stage gets at most its even share of forward visits."""
        d = self.data
        for s in range(1, len(d.stages)):
            visits = [v for choice in self.x.values() for n, v in choice.items() if d.stage_of[n] == s]
            if len(visits) > d.visit_cap:
                self.model.Add(sum(visits) <= d.visit_cap)

    def add_tc2(self) -> None:
        """TC2: a node runs one op at a time."""
        for intervals in self._intervals("FLB").values():
            self.model.AddNoOverlap(intervals)

    def add_objective(self) -> None:
        """makespan = last B at hop 0; iteration = max over stages of (last op end + averaging)."""
        d, m = self.data, self.model
        for mb, origin in d.microbatches:
            m.Add(self.makespan >= self.start[mb, self.pos["B", 0]] + d.dur["B"][origin])
        if self.rules.objective == "iteration":
            for (mb, h), choice in self.x.items():
                for n, v in choice.items():
                    end = self.start[mb, self.pos["B", h]] + d.dur["B"][n]
                    m.Add(self.done[d.stage_of[n]] >= end).OnlyEnforceIf(v)
            m.Add(self.iteration >= self.makespan + d.avg[0])
            for s, done in self.done.items():
                m.Add(self.iteration >= done + d.avg[s])
        m.Minimize(self.objective_var())

    def objective_var(self):
        return self.makespan if self.rules.objective == "makespan" else self.iteration

    # -- redundant constraints and symmetry breaking ----------------------------------------------

    def add_bounds(self) -> None:
        """Redundant: round trips, memory slot chains, work at the data nodes, stage work, the
        data-node relaxation's bound (when solved). Each holds under the rules it relies on."""
        d, lb, m, r = self.data, self.lower, self.model, self.rules
        for mb, origin in d.microbatches:
            m.Add(self.span[mb, 0] >= lb.round_trip(origin) - d.dur["B"][origin])
            for h in range(1, d.k):
                m.Add(self.span[mb, h] >= lb.hold(origin, h))
        m.Add(self.makespan >= lb.makespan_floor(r))
        for s, done in lb.done_floors(r).items():
            m.Add(self.done[s] >= done)
        m.Add(self.objective_var() >= lb.objective_floor(r))

    def keep_order(self, plan: TimedPlan) -> None:
        """Ops of fixed-path microbatches keep their order on each node as in `plan` (LNS
        insertion steps: the freed microbatches are inserted among them)."""
        d, by_node = self.data, {}
        for (kind, mb, hop), t in plan.starts.items():
            if mb in self.fixed:
                node = d.op_node(self.fixed[mb], kind, hop)
                by_node.setdefault(node, []).append((t, kind, mb, hop))
        for ops in by_node.values():
            ops.sort()
            for (_, k0, m0, h0), (_, k1, m1, h1) in zip(ops, ops[1:]):
                node = d.op_node(self.fixed[m0], k0, h0)
                self.model.Add(
                    self.start[m1, self.pos[k1, h1]] >= self.start[m0, self.pos[k0, h0]] + d.dur[k0][node]
                )

    def add_symmetry_breaking(self) -> None:
        """A data node's microbatches are identical: their F at hop 0 run in id order (among
        those whose path is not fixed)."""
        d, f0 = self.data, self.pos["F", 0]
        free = [(mb, o) for mb, o in d.microbatches if mb not in self.fixed]
        for (mb, origin), (nxt, o2) in zip(free, free[1:]):
            if origin == o2:
                gap = d.dur["F"][origin] if self.rules.tc2 else 0
                self.model.Add(self.start[nxt, f0] >= self.start[mb, f0] + gap)

    # -- hint and extraction ----------------------------------------------------------------------

    def add_hint(self, plan: TimedPlan) -> None:
        """Hint every variable with a feasible plan (the greedy's)."""
        d, m, values = self.data, self.model, plan_values(self.data, plan)
        for mb, _origin in d.microbatches:
            nodes = plan.nodes[mb]
            for h in range(1, d.k):
                for n, v in self.x[mb, h].items():
                    m.AddHint(v, int(n == nodes[h]))
                m.AddHint(self.st[mb, h], d.stage_of[nodes[h]])
            for p, (kind, hop) in enumerate(self.ops):
                m.AddHint(self.start[mb, p], plan.starts[kind, mb, hop])
            for h in range(d.k):
                m.AddHint(self.span[mb, h], plan.starts["B", mb, h] - plan.starts["F", mb, h])
        m.AddHint(self.makespan, values["makespan"])
        for s, v in self.done.items():
            m.AddHint(v, values["done"][s])
        m.AddHint(self.iteration, values["iteration"])

    def extract(self, solver: cp_model.CpSolver) -> TimedPlan:
        d, nodes, starts = self.data, {}, {}
        for mb, origin in d.microbatches:
            nodes[mb] = (origin,) + tuple(
                next(n for n, v in self.x[mb, h].items() if solver.Value(v)) for h in range(1, d.k)
            )
            for p, (kind, hop) in enumerate(self.ops):
                starts[kind, mb, hop] = solver.Value(self.start[mb, p])
        return TimedPlan(nodes, starts)


# ----------------------------------------------------------------------------------------------
# Solve


@dataclass(frozen=True)
class SolveResult:
    """CP-SAT's outcome; ticks of the model's objective."""

    status: str  # CP-SAT status name: OPTIMAL, FEASIBLE, UNKNOWN
    plan: TimedPlan | None
    objective: int | None
    bound: int
    wall_s: float


def progress_line(elapsed_s: float, best_s: float, bound_s: float) -> str:
    """One anytime-progress line: elapsed, best objective, proven bound (seconds) and gap."""
    gap = (best_s - bound_s) / best_s if best_s > 0 else 0.0
    return (
        f"cp-sat {elapsed_s:7.1f} s  best {best_s:9.2f} s  bound {bound_s:9.2f} s  gap {max(gap, 0.0):6.1%}"
    )


class _Progress(cp_model.CpSolverSolutionCallback):
    """Reports every improving solution to `report` (and the log)."""

    def __init__(self, tick_s: float, report: Callable[[str], None] | None):
        super().__init__()
        self.tick_s, self.report = tick_s, report

    def on_solution_callback(self) -> None:
        line = progress_line(
            self.WallTime(), self.ObjectiveValue() * self.tick_s, self.BestObjectiveBound() * self.tick_s
        )
        log.debug("%s", line)
        if self.report is not None:
            self.report(line)


def solve(
    pm: PathModel,
    work_s: float,
    seed: int,
    workers: int,
    progress: Callable[[str], None] | None = None,
    cap: WallCap | None = None,
    lns_only: bool = False,
) -> SolveResult:
    """Run CP-SAT on the model for `work_s` work seconds of deterministic time (effort.py), so
    that a seed gives the same result on any machine; `cap` (the build's wall-clock safety cap)
    only stops it early. `lns_only`: every worker improves the hint by CP-SAT's own
    neighbourhood search (no proof of optimality then). Raises PlanningError when CP-SAT proves
    the rules infeasible."""
    solver = cp_model.CpSolver()
    params = solver.parameters
    set_cpsat_limits(params, work_s, cap or unlimited(), workers, seed)
    params.use_lns_only = lns_only
    status = solver.Solve(pm.model, _Progress(pm.data.tick_s, progress))
    name = solver.StatusName(status)
    if status == cp_model.INFEASIBLE:
        raise PlanningError(
            "CP-SAT proved the rules infeasible for this allocation "
            "(CC3 paths under TC1's even visit share; see check_feasible)"
        )
    if status == cp_model.MODEL_INVALID:
        raise PlanningError(f"CP-SAT rejected the model: {pm.model.Validate()}")
    found = status in (cp_model.OPTIMAL, cp_model.FEASIBLE)
    plan = pm.extract(solver) if found else None
    objective = solver.Value(pm.objective_var()) if found else None
    bound = math.ceil(solver.BestObjectiveBound() - ROUNDING_SLACK)
    log.debug(
        "cp-sat %s after %.1f s: objective %s, bound %d ticks of %g s",
        name,
        solver.WallTime(),
        objective,
        bound,
        pm.data.tick_s,
    )
    return SolveResult(name, plan, objective, bound, solver.WallTime())
