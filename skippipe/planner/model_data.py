"""The planning problem as the CP-SAT model and the greedy see it (`ModelData`): one allocation's
microbatches (origin-major), its CC3-valid stage sequences, per origin and stage the nodes a
microbatch may use, op durations per node, idle-link times per node pair, averaging time per
stage, memory slots and TC1's visit cap, all in integer ticks of `tick_s` seconds (durations
and idle-link times rounded up, so a tick schedule is valid in seconds). Also a timed plan
(`TimedPlan`), its objective values (`plan_values`), and which rule families a model holds
and what it minimises (`Rules`).

When the full candidate set is too large (MAX_HOP_CHOICES), each origin may only use its
best-ranked nodes per stage: proven bounds are then relative to that pruned set (logged, and
`ModelData.pruned` says so). Inputs no schedule can satisfy raise PlanningError naming the rule.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
from collections import Counter
from dataclasses import dataclass

import numpy as np
from ortools.sat.python import cp_model

from ..costs import Costs
from ..ops import chain
from ..rules import stage_visit_cap
from ..scenario import Scenario
from .paths import PlanningError, microbatch_ids, stage_sequences

log = logging.getLogger(__name__)

TICK_S = 0.01  # model time resolution: 10 ms, under 3% of the paper's shortest op (0.44 s loss)
MIN_TICKS_PER_OP = 20  # finer ticks when an op or link would span fewer (rounding error <= 5%)
MAX_HOP_CHOICES = 8_000  # (microbatch, hop, node) choices before nodes are pruned per origin:
# the paper's setting needs 1,350; beyond ~10k the model takes tens of seconds to build and presolve
ROUNDING_SLACK = 1e-9  # float noise allowed before rounding a duration up to the next tick

Stages = tuple[tuple[int, ...], ...]


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
        raise PlanningError(
            f"CC3: no sequence of k={p.path_length} distinct stages of {n_stages} "
            "satisfies the reorder limits"
        )
    n_mb = len(stages[0]) * p.microbatches_per_node
    cap, used = stage_visit_cap(scenario, n_mb), {s for seq in sequences for s in seq[1:]}
    if cap * len(used) < n_mb * (p.path_length - 1):
        raise PlanningError(
            f"TC1: {n_mb * (p.path_length - 1)} forward visits do not fit the even "
            f"share {cap} on the {len(used)} stages CC3 paths can reach"
        )


def build_data(scenario: Scenario, stages: Stages, tick_s: float | None = None) -> ModelData:
    """Model data for one allocation; raises PlanningError for infeasible inputs."""
    stages = tuple(tuple(int(n) for n in nodes) for nodes in stages)
    sequences = tuple(stage_sequences(scenario))
    check_feasible(scenario, stages, sequences)
    costs, n = Costs(scenario), len(scenario.nodes)
    link_s = link_matrix(scenario, costs)
    tick = tick_s or _tick_for(costs, n, link_s)
    dur = {kind: tuple(_ticks(costs.op_s(kind, a), tick) for a in range(n)) for kind in "FLB"}
    link = tuple(map(tuple, np.ceil(link_s / tick - ROUNDING_SLACK).astype(np.int64).tolist()))
    stage_of = [0] * n
    for s, nodes in enumerate(stages):
        for a in nodes:
            stage_of[a] = s
    mbs = tuple(microbatch_ids(stages, scenario))
    data = ModelData(
        tick,
        scenario.pipeline.path_length,
        mbs,
        stages,
        tuple(stage_of),
        sequences,
        {o: stages for o in stages[0]},
        dur,
        link,
        tuple(_ticks(costs.averaging_s(s, nodes), tick) for s, nodes in enumerate(stages)),
        tuple(nd.memory_slots for nd in scenario.nodes),
        stage_visit_cap(scenario, len(mbs)),
        False,
    )
    return dataclasses.replace(_prune(data), visit_plan=visit_plan(data))


def visit_plan(data: ModelData) -> tuple[tuple[tuple[int, ...], int], ...]:
    """How many microbatches visit each stage set (one per CC3-valid sequence's stages) so that
    every stage stays within TC1's even share; raises PlanningError when none exists."""
    sets = sorted({tuple(sorted(seq[1:])) for seq in data.sequences})
    caps = {s: data.visit_cap for s in range(1, len(data.stages))}
    counts = stage_set_counts(sets, caps, len(data.microbatches))
    if counts is None:
        raise PlanningError(
            f"TC1: no choice of CC3-valid paths for {len(data.microbatches)} "
            f"microbatches keeps every stage within its even share of "
            f"{data.visit_cap} forward visits"
        )
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


def link_matrix(scenario: Scenario, costs: Costs | None = None) -> np.ndarray:
    """Seconds of one message on each idle link, node x node (0 from a node to itself). A link
    depends only on its two locations, so each location pair is computed once (2,000 nodes:
    4 million pairs, 23 location pairs)."""
    costs = costs or Costs(scenario)
    where = [nd.location for nd in scenario.nodes]
    places = list(dict.fromkeys(where))
    members = {p: [i for i, w in enumerate(where) if w == p][:2] for p in places}
    table = np.zeros((len(places), len(places)))
    for x, p in enumerate(places):
        for y, q in enumerate(places):
            a = members[p][0]
            b = next((b for b in members[q] if b != a), None)  # a one-node location: never used
            table[x, y] = 0.0 if b is None else costs.link_s(a, b)
    index = np.array([places.index(w) for w in where]) if places else np.zeros(0, dtype=int)
    out = table[np.ix_(index, index)]
    np.fill_diagonal(out, 0.0)
    return out


def _tick_for(costs: Costs, n: int, link_s: np.ndarray) -> float:
    """TICK_S, or a power of ten fine enough that the shortest op or link spans MIN_TICKS_PER_OP."""
    times = [costs.op_s(kind, a) for kind in "FLB" for a in range(n)]
    times += [float(link_s[link_s > 0].min())] if (link_s > 0).any() else []
    finest = min(times) / MIN_TICKS_PER_OP
    return TICK_S if finest >= TICK_S else 10.0 ** math.floor(math.log10(finest))


def hop_choices(data: ModelData, sequences) -> int:
    """How many (microbatch, hop, node) choices the model holds: its size (each has an F, a B
    and a memory interval and a link constraint)."""
    return sum(
        len(data.hop_nodes(origin, h, sequences)) for _, origin in data.microbatches for h in range(1, data.k)
    )


def _prune(data: ModelData) -> ModelData:
    """Keep `keep` nodes per stage for each origin, the most that fit MAX_HOP_CHOICES (at least 1)."""
    widest = max(len(nodes) for nodes in data.stages[1:])
    if _choices_keeping(data, widest) <= MAX_HOP_CHOICES:  # hop_choices of the whole set
        return data
    keep = next((k for k in range(widest - 1, 1, -1) if _choices_keeping(data, k) <= MAX_HOP_CHOICES), 1)
    log.warning(
        "model pruned: each origin may use %d nodes per stage (of up to %d); the bound is "
        "relative to that candidate set",
        keep,
        widest,
    )
    return dataclasses.replace(data, allowed=_spread(data, keep), pruned=True)


def _choices_keeping(data: ModelData, keep: int) -> int:
    """hop_choices when each origin keeps `keep` nodes of every stage (the same for all origins)."""
    per_microbatch = sum(
        min(keep, len(data.stages[s])) for h in range(1, data.k) for s in {seq[h] for seq in data.sequences}
    )
    return len(data.microbatches) * per_microbatch


def _spread(data: ModelData, keep: int) -> dict[int, Stages]:
    """Per origin, `keep` nodes of each stage: in turns, each origin takes its best-ranked node
    (`_rank`) among those not yet taken by more than an even share of the origins."""
    origins = data.origins()
    allowed = {o: [data.stages[0]] for o in origins}
    for nodes in data.stages[1:]:
        picks = min(keep, len(nodes))
        share = math.ceil(len(origins) * picks / len(nodes))
        ranked = {o: sorted(nodes, key=lambda n: (_rank(data, o, n), n)) for o in origins}
        taken, mine = Counter(), {o: set() for o in origins}
        for _ in range(picks):
            for o in origins:
                best = next((n for n in ranked[o] if n not in mine[o] and taken[n] < share), None)
                if best is None:
                    best = next(n for n in ranked[o] if n not in mine[o])
                mine[o].add(best)
                taken[best] += 1
        for o in origins:
            allowed[o].append(tuple(sorted(mine[o])))
    return {o: tuple(stages) for o, stages in allowed.items()}


def _rank(data: ModelData, origin: int, node: int) -> int:
    """Pruning rank of `node` for `origin` (lower is better): its compute plus the idle links to
    and from the origin (first and last hops talk to it; far nodes make long round trips)."""
    return data.dur["F"][node] + data.dur["B"][node] + data.link[origin][node] + data.link[node][origin]


def plan_values(data: ModelData, plan: TimedPlan) -> dict:
    """Makespan, per-stage done ticks and iteration ticks of a plan (as the model defines them)."""
    done = {s: 0 for s in range(len(data.stages))}
    for mb, nodes in plan.nodes.items():
        for h, n in enumerate(nodes):
            s = data.stage_of[n]
            done[s] = max(done[s], plan.starts["B", mb, h] + data.dur["B"][n])
    iteration = max(done[s] + data.avg[s] for s in done)
    return {"makespan": done[0], "done": done, "iteration": iteration}
