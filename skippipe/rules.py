"""The rules every schedule obeys, checked by one validator (docs/design.md).

CC1-CC3 (paths), TC1 (even visit share; along each node's action list, the memory rule the
variant was made for: the scenario's slots, or a family's own activation limit), TC2 (no
overlap on a node) and link timing when start times are given, the full pipelines' shape (baseline, the classic families and swarm), that every variant runs on
a complete allocation (under dualpipev's V placement: every node holds a stage and its mirror,
placement.v_problems, and each path comes back through the nodes it went down), and that an
online variant stores the routing of its rule (its paths are the simulator's realization, checked
like any other). `violations()` returns them all; `validate()` raises the first as a
ScheduleError naming variant, microbatch, hop and rule.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from .costs import Costs
from .errors import ScheduleError
from .memory import family_limits, peak_along
from .ops import Op, OpKind, frees_slot, node_ops, op_chain, prev_op, takes_slot
from .placement import v_path_problem, v_problems
from .scenario import Scenario
from .schedule import MicrobatchPath, Schedule, VariantSchedule
from .variants import variant

TIME_TOLERANCE_S = 1e-6  # float slack when comparing planned times


@dataclass(frozen=True)
class Violation:
    rule: str  # CC1, CC2, CC3, TC1, TC2, BASELINE, ALLOC, ORDER, TIMING, COUNT, ROUTING, MEMORY
    variant: str
    microbatch: int | None
    hop: int | None
    message: str

    def __str__(self) -> str:
        where = [f"variant {self.variant}"]
        if self.microbatch is not None:
            where.append(f"microbatch {self.microbatch}")
        if self.hop is not None:
            where.append(f"hop {self.hop}")
        return f"{', '.join(where)}: {self.rule}: {self.message}"


def validate(s: Schedule, scenario: Scenario, where: str = "schedule") -> None:
    found = violations(s, scenario)
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise ScheduleError(f"{where}: {found[0]}{more}")


def violations(s: Schedule, scenario: Scenario) -> list[Violation]:
    out = list(_check_allocation(s.allocation, "-", scenario))
    if out:
        return out
    for v in s.variants.values():  # each variant is checked against the allocation it runs on
        bad = (
            []
            if v.allocation is None
            else list(_check_allocation(v.allocation, v.name, scenario, variant(v.name).v_placed))
        )
        out += bad or _check_variant(s.for_variant(v.name), v, scenario)
    return out


def _check_allocation(
    allocation, variant: str, scenario: Scenario, v_placed: bool = False
) -> Iterable[Violation]:
    if v_placed:  # each node holds a stage and its mirror
        for problem in v_problems(allocation, scenario.pipeline.stage_sizes, len(scenario.nodes)):
            yield Violation("ALLOC", variant, None, None, problem)
        return
    sizes = tuple(len(nodes) for nodes in allocation)
    if sizes != scenario.pipeline.stage_sizes:
        yield Violation(
            "ALLOC",
            variant,
            None,
            None,
            f"stage sizes {list(sizes)} differ from the scenario's {list(scenario.pipeline.stage_sizes)}",
        )
    all_nodes = sorted(n for nodes in allocation for n in nodes)
    if all_nodes != list(range(len(scenario.nodes))):
        yield Violation("ALLOC", variant, None, None, "allocation must place every node exactly once")


def _check_variant(s: Schedule, v: VariantSchedule, sc: Scenario) -> list[Violation]:
    out = list(_check_counts(s, v, sc)) + _check_routing(v) + _check_loss_at(v, sc.pipeline.n_stages)
    stage_of, stages_of = s.stage_of(), s.stages_of()
    for p in v.paths:
        out += _check_path(v, p, stages_of, sc)
    if out:
        return out
    out += _check_load(v, sc)
    if variant(v.name).full_pipeline:
        out += _check_baseline(s, v)
    if v.order is not None:
        out += _check_order(v)
        out += _check_activations(v, stage_of, sc) if not out else []
        if not out and v.has_start_times:
            out += _check_times(v, Costs(sc))
    return out


def _check_loss_at(v: VariantSchedule, n_stages: int) -> list[Violation]:
    """With the loss on the last hop, that hop must hold the LM head: the last stage."""
    if v.loss_at != "last":
        return []
    return [
        Violation(
            "LOSS",
            v.name,
            p.microbatch,
            None,
            f"the loss runs on the last hop, which "
            f"holds stage {p.hops[-1].stage}, not the head's stage {n_stages - 1}",
        )
        for p in v.paths
        if p.hops and p.hops[-1].stage != n_stages - 1
    ][:1]


def _check_routing(v: VariantSchedule) -> list[Violation]:
    want = variant(v.name).routing
    got = None if v.routing is None else v.routing.rule
    if got == want:
        return []
    return [Violation("ROUTING", v.name, None, None, f"routing rule {got!r}, expected {want!r}")]


def _check_counts(s: Schedule, v: VariantSchedule, sc: Scenario) -> Iterable[Violation]:
    mbs = [p.microbatch for p in v.paths]
    if sorted(mbs) != list(range(len(mbs))):
        yield Violation("COUNT", v.name, None, None, "microbatch ids must be 0..N-1, each once")
    per_origin = Counter(p.origin for p in v.paths)
    want = sc.pipeline.microbatches_per_node
    for node in s.allocation[0]:
        if per_origin.get(node, 0) != want:
            yield Violation(
                "COUNT",
                v.name,
                None,
                None,
                f"data node {node} owns {per_origin.get(node, 0)} microbatches, not {want}",
            )


def _check_path(
    v: VariantSchedule, p: MicrobatchPath, stages_of: dict[int, tuple[int, ...]], sc: Scenario
) -> list[Violation]:
    def bad(rule, hop, msg):
        return Violation(rule, v.name, p.microbatch, hop, msg)

    out = []
    if 0 not in stages_of.get(p.origin, ()):
        return [bad("CC1", None, f"origin {p.origin} is not a stage-0 node")]
    if not p.hops or (p.hops[0].stage, p.hops[0].node) != (0, p.origin):
        return [bad("CC1", 0, "path must start at stage 0 on its own data node")]
    for i, h in enumerate(p.hops):
        if h.stage not in stages_of.get(h.node, ()):
            out.append(bad("ALLOC", i, f"node {h.node} does not hold stage {h.stage}"))
        if i > 0 and h.stage == 0:
            out.append(bad("CC1", i, "stage 0 is revisited"))
    k = sc.pipeline.n_stages if variant(v.name).full_pipeline else sc.pipeline.path_length
    if len(p.hops) != k:
        out.append(bad("CC2", None, f"visits {len(p.hops)} stages, not {k}"))
    if len(set(p.stages)) != len(p.stages):
        out.append(bad("CC2", None, f"a stage is visited twice: {list(p.stages)}"))
    return out + _check_reorder(v.name, p, sc)


def cc3_problem(stages: tuple[int, ...], sc: Scenario) -> tuple[int, str] | None:
    """CC3 on a stage sequence (stage 0 first): (hop, reason) of the first breach, or None.

    A hop below the frontier (the highest stage so far) is a swap; it may go back at most
    max_swap_back_stages; a path has at most max_swaps swaps with total distance at most
    max_swap_distance; a step up from the previous stage is at most max_forward_jump_stages."""
    p = sc.pipeline
    frontier, swaps, distance = 0, 0, 0
    for i in range(1, len(stages)):
        s, prev = stages[i], stages[i - 1]
        if s > prev and s - prev > p.max_forward_jump_stages:
            return i, f"jumps {s - prev} stages forward (limit {p.max_forward_jump_stages})"
        if s < frontier:
            back = frontier - s
            swaps, distance = swaps + 1, distance + back
            if back > p.max_swap_back_stages:
                return i, f"swap goes {back} stages back from the frontier (limit {p.max_swap_back_stages})"
            if swaps > p.max_swaps:
                return i, f"more than {p.max_swaps} swaps"
            if distance > p.max_swap_distance:
                return i, f"total swap distance {distance} exceeds {p.max_swap_distance}"
        frontier = max(frontier, s)
    return None


def _check_reorder(variant: str, p: MicrobatchPath, sc: Scenario) -> list[Violation]:
    problem = cc3_problem(p.stages, sc)
    return [] if problem is None else [Violation("CC3", variant, p.microbatch, problem[0], problem[1])]


def stage_visit_cap(sc: Scenario, n_microbatches: int) -> int:
    """TC1's even load: forward visits per non-first stage are at most this."""
    s = sc.pipeline.n_stages
    return math.ceil(n_microbatches * (sc.pipeline.path_length - 1) / (s - 1))


def _check_load(v: VariantSchedule, sc: Scenario) -> list[Violation]:
    if variant(v.name).full_pipeline:
        return []
    visits = Counter(h.stage for p in v.paths for h in p.hops[1:])
    cap = stage_visit_cap(sc, len(v.paths))
    return [
        Violation(
            "TC1", v.name, None, None, f"stage {st} gets {n} forward visits, more than its even share {cap}"
        )
        for st, n in sorted(visits.items())
        if n > cap
    ]


def _check_baseline(s: Schedule, v: VariantSchedule) -> list[Violation]:
    out = []
    for p in v.paths:
        if p.stages != tuple(range(len(s.allocation))):
            out.append(
                Violation(
                    "BASELINE",
                    v.name,
                    p.microbatch,
                    None,
                    f"a full-pipeline path runs every stage in order, got {list(p.stages)}",
                )
            )
        elif variant(v.name).v_placed and (problem := v_path_problem(p.nodes)):
            out.append(Violation("ALLOC", v.name, p.microbatch, None, problem))
    if variant(v.name).routing:  # online routing balances by measurement, not by count
        return out
    loads = Counter((h.stage, h.node) for p in v.paths for h in p.hops[1:])
    for stage, nodes in enumerate(s.allocation[1:], start=1):
        counts = [loads.get((stage, n), 0) for n in nodes]
        if max(counts) - min(counts) > 1:
            out.append(
                Violation(
                    "BASELINE", v.name, None, None, f"stage {stage} nodes carry uneven pipelines {counts}"
                )
            )
    return out


def _check_order(v: VariantSchedule) -> list[Violation]:
    want = {n: set(ops) for n, ops in node_ops(v.paths, v.split_backward, v.loss_at).items()}
    out = []
    for node in sorted(set(want) | set(v.order)):
        got = list(v.order.get(node, ()))
        if len(got) != len(set(got)) or set(got) != want.get(node, set()):
            missing = sorted(want.get(node, set()) - set(got), key=lambda op: op.sort_key)
            out.append(
                Violation(
                    "ORDER",
                    v.name,
                    missing[0].microbatch if missing else None,
                    None,
                    f"node {node}'s order must list each of its operations once",
                )
            )
    return out


def _check_activations(v: VariantSchedule, stage_of: dict[int, int], sc: Scenario) -> list[Violation]:
    """TC1 along each action list (memory.peak_along: timing-free), against the variant's limit;
    the limit is within the rule the variant was made for: the scenario's slots (the shared
    budget), or a schedule family's own rule (memory.family_limits), whose order keeps it too."""
    if v.memory == "family" and not variant(v.name).family:
        return [Violation("MEMORY", v.name, None, None, "only a schedule family has its own memory rule")]
    own_rule = v.memory == "family"
    rule = family_limits(v.name, v.paths, stage_of, sc.pipeline.n_stages) if own_rule else {}
    out = []
    for node, ops in sorted(v.order.items()):
        peak, limit = peak_along(ops, v.split_backward), v.memory_slots(node, sc)
        if limit is not None and peak > limit:
            out.append(
                Violation(
                    "TC1",
                    v.name,
                    None,
                    None,
                    f"node {node}'s order holds {peak} activations at once (limit {limit})",
                )
            )
        slots = sc.nodes[node].memory_slots
        if not own_rule and (limit is None or limit > slots):
            out.append(
                Violation(
                    "MEMORY",
                    v.name,
                    None,
                    None,
                    f"node {node} was planned for the "
                    f"shared budget of {slots} memory slots; its limit is {limit}",
                )
            )
        own = rule.get(node)
        if own is not None and (peak > own or limit is None or limit > own):
            out.append(
                Violation(
                    "MEMORY",
                    v.name,
                    None,
                    None,
                    f"node {node} (stage "
                    f"{stage_of[node]}) may hold {own} activations under {v.name}'s "
                    f"rule; its order holds {peak}, its limit is {limit}",
                )
            )
    return out


def op_end_times(v: VariantSchedule, costs: Costs) -> dict[Op, tuple[float, float, int]]:
    """op -> (start, end, node) from the planned start times."""
    out = {}
    for node, ops in v.order.items():
        for o in ops:
            out[o] = (o.start_s, o.start_s + costs.op_s(o.kind, node, v.split_backward), node)
    return out


def planned_makespan(v: VariantSchedule, costs: Costs) -> float:
    """Independent recomputation of the makespan: the last backward end at a data node (the
    weight gradient's too when the backward is split)."""
    times = op_end_times(v, costs)
    kinds = (OpKind.B, OpKind.W) if v.split_backward else (OpKind.B,)
    return max(times[Op(kind, p.microbatch, 0)][1] for p in v.paths for kind in kinds)


def _check_times(v: VariantSchedule, costs: Costs) -> list[Violation]:
    times = op_end_times(v, costs)
    out = _check_precedence(v, costs, times)
    for node, ops in v.order.items():
        spans = sorted(
            ((o.start_s, o.start_s + costs.op_s(o.kind, node, v.split_backward), o) for o in ops),
            key=lambda span: span[:2],
        )  # zero-cost ops may tie
        for (_, e0, a), (s1, _, b) in zip(spans, spans[1:]):
            if s1 < e0 - TIME_TOLERANCE_S:
                out.append(
                    Violation(
                        "TC2",
                        v.name,
                        b.microbatch,
                        b.hop,
                        f"{b.kind.value} on node {node} starts at {s1:.3f}s while "
                        f"{a.kind.value} of microbatch {a.microbatch} runs until {e0:.3f}s",
                    )
                )
        out += _check_memory(v, node, ops, times, v.memory_slots(node, costs.scenario))
    return out


def _check_precedence(v: VariantSchedule, costs: Costs, times) -> list[Violation]:
    """Each operation starts after the previous one of its microbatch ends plus the link time."""
    out = []
    for p in v.paths:
        k = len(p.hops)
        for b in op_chain(p.microbatch, k, v.split_backward):
            a = prev_op(b, k)
            if a is None:
                continue
            _, end0, n0 = times[a]
            start1, _, n1 = times[b]
            if start1 < end0 + costs.link_s(n0, n1) - TIME_TOLERANCE_S:
                out.append(
                    Violation(
                        "TIMING",
                        v.name,
                        p.microbatch,
                        b.hop,
                        f"{b.kind.value} starts at {start1:.3f}s before its input arrives "
                        f"({end0 + costs.link_s(n0, n1):.3f}s)",
                    )
                )
    return out


def _check_memory(v, node: int, ops, times, slots: int | None) -> list[Violation]:
    """TC1: activations held from forward start to the end of the op that frees them (B, or W
    when split); at most `slots` at once (None: no limit)."""
    if slots is None:
        return []
    freer = {frees_slot(o, v.split_backward): o for o in ops if frees_slot(o, v.split_backward)}
    events = []
    for o in ops:
        if takes_slot(o):
            events.append((o.start_s, 1, o))
            events.append((times[freer[o]][1] - TIME_TOLERANCE_S, -1, o))
    held = 0
    for t, delta, o in sorted(events, key=lambda e: (e[0], e[1])):
        held += delta
        if held > slots:
            return [
                Violation(
                    "TC1",
                    v.name,
                    o.microbatch,
                    o.hop,
                    f"node {node} holds {held} activations at {t:.3f}s (memory slots {slots})",
                )
            ]
    return []
