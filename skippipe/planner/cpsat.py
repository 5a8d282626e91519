"""CP-SAT model of ca-partial path planning: data, variables, one add_<rule>() per rule, objective,
solve, extract (DESIGN.md). The greedy list scheduler (greedy.py) shares the data and hints it.

Data (`ModelData`, integer ticks of `tick_s` seconds; durations and idle-link times rounded up, so
a tick schedule is valid in seconds): the microbatches (origin-major), the CC3-valid stage
sequences, per origin and stage the nodes the model may use, op durations per node, idle-link
times per node pair, averaging time per stage, memory slots, TC1's visit cap.

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

Sub-models (partial.improve_paths, the path LNS): `fixed_paths` pins some microbatches' nodes
(their link constraints become plain precedences) and `fixed_order` keeps their op order per node.

Approximated: links are idle in the model (the simulator's FIFO queueing on a directed link is
not modelled); durations are rounded up to ticks. When the full candidate set is too large
(MAX_HOP_CHOICES), each origin may only use its best-ranked nodes per stage: the proven
bound is then relative to that pruned set (logged, and `ModelData.pruned` says so).
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import math
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import numpy as np
from ortools.sat.python import cp_model

from ..costs import Costs
from ..scenario import Scenario
from ..schedule import stage_visit_cap
from .paths import PlanningError, microbatch_ids, stage_sequences

log = logging.getLogger(__name__)

TICK_S = 0.01  # model time resolution: 10 ms, under 3% of the paper's shortest op (0.44 s loss)
MIN_TICKS_PER_OP = 20  # finer ticks when an op or link would span fewer (rounding error <= 5%)
MAX_HOP_CHOICES = 8_000  # (microbatch, hop, node) choices before nodes are pruned per origin:
# the paper's setting needs 1,350; beyond ~10k the model takes tens of seconds to build and presolve
VISIT_CHAIN_TIME_S = 2.0  # budget of the small visit-chain bound model (its proven bound is valid early)
VISIT_CHAIN_MAX_CHOICES = 3_000  # (microbatch, stage set) pairs beyond which that bound model is skipped
DTIME_PER_WALL_S = 0.1  # CP-SAT deterministic time per wall second on the 2-core dev box (loaded,
# one worker, measured 0.1-0.15): one-worker runs are bounded in it, so a seed reproduces
ROUNDING_SLACK = 1e-9  # float noise allowed before rounding a duration up to the next tick

Stages = tuple[tuple[int, ...], ...]


def chain(k: int) -> tuple[tuple[str, int], ...]:
    """The ops of one microbatch in run order: (kind, hop) for F0..F(k-1), L, B(k-1)..B0."""
    return tuple([("F", h) for h in range(k)] + [("L", 0)] + [("B", h) for h in reversed(range(k))])


def _ticks(seconds: float, tick_s: float) -> int:
    return math.ceil(seconds / tick_s - ROUNDING_SLACK)


@dataclass(frozen=True)
class TimedPlan:
    """A timed ca-partial plan in ticks: each microbatch's node per hop (origin first) and the
    start tick of each op (kind, microbatch, hop)."""

    nodes: dict[int, tuple[int, ...]]  # microbatch -> node of each hop
    starts: dict[tuple[str, int, int], int]  # (kind, microbatch, hop) -> start tick


@dataclass(frozen=True)
class ModelData:
    """Everything the CP-SAT model and the greedy need, in ticks of `tick_s` seconds."""

    tick_s: float
    k: int
    microbatches: tuple[tuple[int, int], ...]  # (microbatch, origin), origin-major
    stages: Stages  # the allocation: stage -> node ids
    stage_of: tuple[int, ...]  # node -> stage
    sequences: tuple[tuple[int, ...], ...]  # CC3-valid stage sequences, stage 0 first
    allowed: dict[int, Stages]  # origin -> stage -> nodes its microbatches may use
    dur: dict[str, tuple[int, ...]]  # 'F', 'L', 'B' -> node -> ticks
    link: tuple[tuple[int, ...], ...]  # src -> dst -> ticks of one message on an idle link
    avg: tuple[int, ...]  # stage -> gradient averaging ticks
    slots: tuple[int, ...]  # node -> memory slots
    visit_cap: int  # TC1: forward visits per non-first stage
    pruned: bool  # True when `allowed` leaves out nodes (the bound is relative to it)
    visit_plan: tuple[tuple[tuple[int, ...], int], ...] = ()  # (stage set, microbatches): fits TC1

    def op_node(self, nodes: tuple[int, ...], kind: str, hop: int) -> int:
        return nodes[0] if kind == "L" else nodes[hop]

    def path_ticks(self, nodes: tuple[int, ...]) -> int:
        """One microbatch's round trip on `nodes` with idle nodes and links (ticks)."""
        ops = chain(self.k)
        total = 0
        for i, (kind, hop) in enumerate(ops):
            a = self.op_node(nodes, kind, hop)
            total += self.dur[kind][a]
            if i + 1 < len(ops):
                total += self.link[a][self.op_node(nodes, *ops[i + 1])]
        return total

    def origins(self) -> tuple[int, ...]:
        return tuple(dict.fromkeys(o for _, o in self.microbatches))

    def hop_nodes(self, origin: int, hop: int, sequences) -> tuple[int, ...]:
        """Nodes hop `hop` of a microbatch from `origin` may run on, given the sequences."""
        if hop == 0:
            return (origin,)
        at_hop = sorted({seq[hop] for seq in sequences})
        return tuple(n for s in at_hop for n in self.allowed[origin][s])

    def min_round_trip(self, origin: int, sequences) -> int:
        """Exact shortest round trip (ticks) over every allowed path of `origin` (DP per sequence)."""
        return min(self.best_for_sequence(origin, seq) for seq in sequences)

    def best_for_sequence(self, origin: int, seq: tuple[int, ...]) -> int:
        d, link = self.dur, self.link
        prev = [origin]
        cost = np.array([d["F"][origin] + d["B"][origin] + d["L"][origin]], dtype=np.int64)
        for stage in seq[1:]:
            nodes = self.allowed[origin][stage]
            step = np.array([[link[a][b] + link[b][a] for b in nodes] for a in prev])
            own = np.array([d["F"][b] + d["B"][b] for b in nodes])
            cost = (cost[:, None] + step).min(axis=0) + own
            prev = list(nodes)
        back = np.array([link[a][origin] + link[origin][a] for a in prev])
        return int((cost + back).min())


def all_sequences(data: ModelData) -> tuple[tuple[int, ...], ...]:
    """Every sequence of k distinct stages from stage 0 (CC2 only: CC3 switched off)."""
    rest = range(1, len(data.stages))
    return tuple((0,) + p for p in itertools.permutations(rest, data.k - 1))


def check_feasible(scenario: Scenario, stages: Stages, sequences) -> None:
    """Raise PlanningError (one line, naming the rule) for inputs no schedule can satisfy."""
    p, n_stages = scenario.pipeline, len(stages)
    if p.path_length > n_stages:
        raise PlanningError(f"CC2: path length k={p.path_length} exceeds the {n_stages} stages")
    empty = [s for s, nodes in enumerate(stages) if not nodes]
    if empty:
        raise PlanningError(f"CC1/CC2: stage {empty[0]} has no nodes")
    no_memory = [n for nodes in stages for n in nodes if scenario.nodes[n].memory_slots < 1]
    if no_memory:
        raise PlanningError(f"TC1: node {no_memory[0]} has no memory slot, it can hold no activation")
    if not sequences:
        raise PlanningError(f"CC3: no sequence of k={p.path_length} distinct stages of {n_stages} "
                            "satisfies the reorder limits")
    n_mb = len(stages[0]) * p.microbatches_per_node
    cap, used = stage_visit_cap(scenario, n_mb), {s for seq in sequences for s in seq[1:]}
    if cap * len(used) < n_mb * (p.path_length - 1):
        raise PlanningError(f"TC1: {n_mb * (p.path_length - 1)} forward visits do not fit the even "
                            f"share {cap} on the {len(used)} stages CC3 paths can reach")


def build_data(scenario: Scenario, stages: Stages, tick_s: float | None = None) -> ModelData:
    """Model data for one allocation; raises PlanningError for infeasible inputs."""
    stages = tuple(tuple(int(n) for n in nodes) for nodes in stages)
    sequences = tuple(stage_sequences(scenario))
    check_feasible(scenario, stages, sequences)
    costs, n = Costs(scenario), len(scenario.nodes)
    tick = tick_s or _tick_for(costs, n)
    dur = {kind: tuple(_ticks(costs.op_s(kind, a), tick) for a in range(n)) for kind in "FLB"}
    link = tuple(tuple(_ticks(costs.link_s(a, b), tick) for b in range(n)) for a in range(n))
    stage_of = [0] * n
    for s, nodes in enumerate(stages):
        for a in nodes:
            stage_of[a] = s
    mbs = tuple(microbatch_ids(stages, scenario))
    data = ModelData(
        tick, scenario.pipeline.path_length, mbs, stages, tuple(stage_of), sequences,
        {o: stages for o in stages[0]}, dur, link,
        tuple(_ticks(costs.averaging_s(s, nodes), tick) for s, nodes in enumerate(stages)),
        tuple(nd.memory_slots for nd in scenario.nodes), stage_visit_cap(scenario, len(mbs)), False)
    return dataclasses.replace(_prune(data), visit_plan=visit_plan(data))


def visit_plan(data: ModelData) -> tuple[tuple[tuple[int, ...], int], ...]:
    """How many microbatches visit each stage set (one per CC3-valid sequence's stages) so that
    every stage stays within TC1's even share; raises PlanningError when none exists."""
    sets = sorted({tuple(sorted(seq[1:])) for seq in data.sequences})
    caps = {s: data.visit_cap for s in range(1, len(data.stages))}
    counts = stage_set_counts(sets, caps, len(data.microbatches))
    if counts is None:
        raise PlanningError(f"TC1: no choice of CC3-valid paths for {len(data.microbatches)} "
                            f"microbatches keeps every stage within its even share of "
                            f"{data.visit_cap} forward visits")
    return tuple(sorted(counts.items()))


def stage_set_counts(sets, caps: dict[int, int], n_mb: int) -> dict[tuple[int, ...], int] | None:
    """Microbatches per stage set, `n_mb` in all, with every stage's visits within `caps`; None
    when impossible (a small exact CP-SAT model, one deterministic worker)."""
    m = cp_model.CpModel()
    count = [m.NewIntVar(0, n_mb, f"n_{i}") for i in range(len(sets))]
    m.Add(sum(count) == n_mb)
    for s, cap in caps.items():
        m.Add(sum(c for c, st in zip(count, sets) if s in st) <= cap)
    solver = cp_model.CpSolver()
    solver.parameters.num_workers = 1
    if solver.Solve(m) not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return None
    return {st: solver.Value(c) for st, c in zip(sets, count) if solver.Value(c)}


def _tick_for(costs: Costs, n: int) -> float:
    """TICK_S, or a power of ten fine enough that the shortest op or link spans MIN_TICKS_PER_OP."""
    times = [costs.op_s(kind, a) for kind in "FLB" for a in range(n)]
    times += [t for a in range(n) for b in range(n) if (t := costs.link_s(a, b)) > 0]
    finest = min(times) / MIN_TICKS_PER_OP
    return TICK_S if finest >= TICK_S else 10.0 ** math.floor(math.log10(finest))


def hop_choices(data: ModelData, sequences) -> int:
    """How many (microbatch, hop, node) choices the model holds: its size (each has an F, a B
    and a memory interval and a link constraint)."""
    return sum(len(data.hop_nodes(origin, h, sequences))
               for _, origin in data.microbatches for h in range(1, data.k))


def _prune(data: ModelData) -> ModelData:
    """Keep `keep` nodes per stage for each origin, fewer until the model fits MAX_HOP_CHOICES."""
    if hop_choices(data, data.sequences) <= MAX_HOP_CHOICES:
        return data
    keep, pruned = max(len(nodes) for nodes in data.stages[1:]), data
    while keep > 1 and hop_choices(pruned, data.sequences) > MAX_HOP_CHOICES:
        keep -= 1
        pruned = dataclasses.replace(pruned, allowed=_spread(data, keep), pruned=True)
    log.warning("model pruned: each origin may use %d nodes per stage (of up to %d); the bound is "
                "relative to that candidate set", keep, max(len(nodes) for nodes in data.stages[1:]))
    return pruned


def _spread(data: ModelData, keep: int) -> dict[int, Stages]:
    """Per origin, `keep` nodes of each stage: in turns, each origin takes its best-ranked node
    (`_rank`) among those not yet taken by more than an even share of the origins."""
    origins = data.origins()
    allowed = {o: [data.stages[0]] for o in origins}
    for nodes in data.stages[1:]:
        share = math.ceil(len(origins) * min(keep, len(nodes)) / len(nodes))
        taken, mine = Counter(), {o: [] for o in origins}
        for _ in range(min(keep, len(nodes))):
            for o in origins:
                free = ([n for n in nodes if n not in mine[o] and taken[n] < share]
                        or [n for n in nodes if n not in mine[o]])
                best = min(free, key=lambda n: (_rank(data, o, n), n))
                mine[o].append(best)
                taken[best] += 1
        for o in origins:
            allowed[o].append(tuple(sorted(mine[o])))
    return {o: tuple(stages) for o, stages in allowed.items()}


def _rank(data: ModelData, origin: int, node: int) -> int:
    """Pruning rank of `node` for `origin` (lower is better): its compute plus the idle links to
    and from the origin (first and last hops talk to it; far nodes make long round trips)."""
    return (data.dur["F"][node] + data.dur["B"][node] + data.link[origin][node]
            + data.link[node][origin])


# ----------------------------------------------------------------------------------------------
# The model

@dataclass(frozen=True)
class Rules:
    """Which rule families the model holds (tests drop one to show that it binds) and what it
    minimises: 'iteration' (the simulator's: max over stages of last op end + averaging) or
    'makespan' (last B at hop 0)."""

    cc3: bool = True
    tc1_memory: bool = True
    tc1_load: bool = True
    tc2: bool = True
    bounds: bool = True  # redundant constraints: never change the optimum
    symmetry: bool = True  # a data node's microbatches start in id order
    objective: str = "iteration"


class PathModel:
    """The CP-SAT model of one planning problem; `upper_bound` (ticks of the objective, e.g. a
    greedy plan's) bounds every start time, else a serial schedule's length does. With
    `fixed_paths` (microbatch -> node per hop) those microbatches keep their paths and only
    their timing is free (sequencing subproblems); with `fixed_order` their ops also keep that
    plan's order on each node; `lower` shares bounds already computed."""

    def __init__(self, data: ModelData, rules: Rules = Rules(), upper_bound: int | None = None,
                 fixed_paths: dict[int, tuple[int, ...]] | None = None,
                 lower: PathBounds | None = None, fixed_order: TimedPlan | None = None):
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
                nodes = ((self.fixed[mb][h],) if mb in self.fixed
                         else d.hop_nodes(origin, h, self.sequences))
                self.x[mb, h] = {n: m.NewBoolVar(f"x_{mb}_{h}_{n}") for n in nodes}
                self.st[mb, h] = m.NewIntVarFromDomain(
                    cp_model.Domain.FromValues(sorted({d.stage_of[n] for n in nodes})), f"st_{mb}_{h}")
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
                steps = [d.dur[k0][a] + d.link[a][b] for a in first for b in second
                         if self._linked(h0, a, h1, b)]
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
        extra = sum((t - least) * self.lit(mb, hop, n) for n, t in step_of.items()
                    if t > least) if hop else 0
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
        """Redundant: round trips, memory slot chains (and under the visit shares), work at the
        data nodes, stage work. Each is only added with the rules it relies on."""
        d, lb, m, r = self.data, self.lower, self.model, self.rules
        for mb, origin in d.microbatches:
            m.Add(self.span[mb, 0] >= lb.round_trip(origin) - d.dur["B"][origin])
            for h in range(1, d.k):
                m.Add(self.span[mb, h] >= lb.hold(origin, h))
        m.Add(self.makespan >= lb.makespan_floor(r))
        for s, done in lb.done_floors(r).items():
            m.Add(self.done[s] >= done)

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
                self.model.Add(self.start[m1, self.pos[k1, h1]] >=
                               self.start[m0, self.pos[k0, h0]] + d.dur[k0][node])

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
        for mb, origin in d.microbatches:
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
            nodes[mb] = (origin,) + tuple(next(n for n, v in self.x[mb, h].items() if solver.Value(v))
                                          for h in range(1, d.k))
            for p, (kind, hop) in enumerate(self.ops):
                starts[kind, mb, hop] = solver.Value(self.start[mb, p])
        return TimedPlan(nodes, starts)


def plan_values(data: ModelData, plan: TimedPlan) -> dict:
    """Makespan, per-stage done ticks and iteration ticks of a plan (as the model defines them)."""
    done = {s: 0 for s in range(len(data.stages))}
    for mb, nodes in plan.nodes.items():
        for h, n in enumerate(nodes):
            s = data.stage_of[n]
            done[s] = max(done[s], plan.starts["B", mb, h] + data.dur["B"][n])
    iteration = max(done[s] + data.avg[s] for s in done)
    return {"makespan": done[0], "done": done, "iteration": iteration}


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
    return (f"cp-sat {elapsed_s:7.1f} s  best {best_s:9.2f} s  bound {bound_s:9.2f} s  "
            f"gap {max(gap, 0.0):6.1%}")


class _Progress(cp_model.CpSolverSolutionCallback):
    """Reports every improving solution to `report` (and the log)."""

    def __init__(self, tick_s: float, report: Callable[[str], None] | None):
        super().__init__()
        self.tick_s, self.report = tick_s, report

    def on_solution_callback(self) -> None:
        line = progress_line(self.WallTime(), self.ObjectiveValue() * self.tick_s,
                             self.BestObjectiveBound() * self.tick_s)
        log.debug("%s", line)
        if self.report is not None:
            self.report(line)


def solve(pm: PathModel, time_limit_s: float, seed: int, workers: int,
          progress: Callable[[str], None] | None = None, planned_s: float | None = None) -> SolveResult:
    """Run CP-SAT on the model for up to `time_limit_s` wall seconds. With one worker the run is
    also limited in deterministic time (DTIME_PER_WALL_S per second of `planned_s`, default the
    time limit), so that a seed gives the same result on any machine not slower than that.
    Raises PlanningError when CP-SAT proves the rules infeasible."""
    solver = cp_model.CpSolver()
    params = solver.parameters
    params.max_time_in_seconds = time_limit_s
    params.num_workers = workers
    params.random_seed = seed
    if workers == 1:
        params.max_deterministic_time = (planned_s or time_limit_s) * DTIME_PER_WALL_S
    status = solver.Solve(pm.model, _Progress(pm.data.tick_s, progress))
    name = solver.StatusName(status)
    if status == cp_model.INFEASIBLE:
        raise PlanningError("CP-SAT proved the rules infeasible for this allocation "
                            "(CC3 paths under TC1's even visit share; see check_feasible)")
    if status == cp_model.MODEL_INVALID:
        raise PlanningError(f"CP-SAT rejected the model: {pm.model.Validate()}")
    found = status in (cp_model.OPTIMAL, cp_model.FEASIBLE)
    plan = pm.extract(solver) if found else None
    objective = solver.Value(pm.objective_var()) if found else None
    bound = math.ceil(solver.BestObjectiveBound() - ROUNDING_SLACK)
    log.debug("cp-sat %s after %.1f s: objective %s, bound %d ticks of %g s", name, solver.WallTime(),
              objective, bound, pm.data.tick_s)
    return SolveResult(name, plan, objective, bound, solver.WallTime())

