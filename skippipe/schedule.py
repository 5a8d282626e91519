"""Schedule: the planner's output for one scenario, its JSON form, and the one validator.

A schedule holds, per variant, its allocation (node -> stage: each variant may use the one that
suits its objective; `Schedule.allocation` is the baseline's, or the one all share), a path for
every microbatch, each node's action list (its operations, ops.Op, in run order, with start times
where known), the rule its nodes dispatch by ("planned": exactly the action list, the planner's
timing; "fcfs": first come first served, the action list being what that rule produced in the
simulator), the predicted iteration time and the solver's provenance.

`violations()` checks every rule of DESIGN.md (CC1-CC3, TC1, TC2 when start times are present,
the baseline's shape) and returns them all; `validate()` raises the first as a ScheduleError.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .costs import Costs
from .errors import SkipPipeError
from .memory import FAMILIES, family_limits, peak_along
from .ops import Op, OpKind, frees_slot, node_ops, op_chain, prev_op, takes_slot
from .scenario import Scenario, load_scenario

SCHEMA_VERSION = 2  # 2: an allocation per variant (1 had one allocation for all variants)
VARIANTS = ("baseline", "random", "non-ca-partial", "ca-partial", *FAMILIES)
FULL_PIPELINE = ("baseline", *FAMILIES)  # every path runs every stage along a column
TIME_TOLERANCE_S = 1e-6  # float slack when comparing planned times
DISPATCH_RULES = ("planned", "fcfs")  # see dispatch.py


class ScheduleError(SkipPipeError):
    """A malformed or inconsistent schedule; the message names variant, microbatch, hop, rule."""


@dataclass(frozen=True)
class Hop:
    stage: int
    node: int


@dataclass(frozen=True)
class MicrobatchPath:
    microbatch: int
    origin: int  # data node that owns it (stage 0)
    hops: tuple[Hop, ...]  # hops[0] is stage 0 at the origin; the return to it is implicit

    @property
    def stages(self) -> tuple[int, ...]:
        return tuple(h.stage for h in self.hops)

    @property
    def nodes(self) -> tuple[int, ...]:
        return tuple(h.node for h in self.hops)


@dataclass(frozen=True)
class Provenance:
    solver: str
    seed: int | None = None
    workers: int | None = None
    time_limit_s: float | None = None
    status: str = "n/a"
    objective: float | None = None  # seconds
    bound: float | None = None  # seconds, a proven lower bound on the objective
    wall_s: float = 0.0

    @property
    def gap(self) -> float | None:
        if self.objective is None or self.bound is None or self.objective <= 0:
            return None
        return max(0.0, (self.objective - self.bound) / self.objective)


@dataclass(frozen=True)
class VariantSchedule:
    name: str
    paths: tuple[MicrobatchPath, ...]
    order: dict[int, tuple[Op, ...]] | None = None  # node -> its action list, in run order
    predicted: dict[str, float] = field(default_factory=dict)  # makespan_s, iteration_s, ...
    provenance: Provenance = Provenance("none")
    dispatch: str = ""  # "planned" or "fcfs"; empty: "planned" when there is an order
    # node -> the variant's own activation limit (None: unlimited); others: the scenario's slots
    activation_limits: dict[int, int | None] = field(default_factory=dict)
    split_backward: bool = False  # B is the input gradient only; W ops compute weight gradients
    allocation: tuple[tuple[int, ...], ...] | None = None  # stage -> node ids; None: the schedule's

    def __post_init__(self) -> None:
        if not self.dispatch:
            object.__setattr__(self, "dispatch", "fcfs" if self.order is None else "planned")
        if self.dispatch not in DISPATCH_RULES:
            raise ScheduleError(f"variant {self.name}: dispatch {self.dispatch!r} is not one of "
                                f"{', '.join(DISPATCH_RULES)}")

    def actions(self, node: int) -> list[Op]:
        """`node`'s action list: its planned order where there is one, else its ops path by
        path (the order the dispatch rule starts from)."""
        if self.order is not None:
            return list(self.order.get(node, ()))
        return node_ops(self.paths, self.split_backward).get(node, [])

    def memory_slots(self, node: int, scenario: Scenario) -> int | None:
        """The activations `node` may hold: the variant's own limit, else the scenario's."""
        if node in self.activation_limits:
            return self.activation_limits[node]
        return scenario.nodes[node].memory_slots

    @property
    def planned(self) -> bool:
        """Do nodes run exactly their action lists (else first come first served)?"""
        return self.dispatch == "planned" and self.order is not None

    def path(self, microbatch: int) -> MicrobatchPath:
        return self._by_mb()[microbatch]

    def _by_mb(self) -> dict[int, MicrobatchPath]:
        cached = self.__dict__.get("_mb_index")
        if cached is None:
            cached = {p.microbatch: p for p in self.paths}
            object.__setattr__(self, "_mb_index", cached)
        return cached

    @property
    def has_start_times(self) -> bool:
        return bool(self.order) and all(op.start_s is not None
                                        for ops in self.order.values() for op in ops)


@dataclass(frozen=True)
class Schedule:
    scenario_name: str
    scenario_hash: str
    scenario_path: str
    allocation: tuple[tuple[int, ...], ...]  # stage -> node ids: the baseline's (or the shared one)
    variants: dict[str, VariantSchedule]
    scenario_overrides: dict = field(default_factory=dict)  # "section.key" -> value
    schema_version: int = SCHEMA_VERSION

    def allocation_of(self, variant: str | None = None) -> tuple[tuple[int, ...], ...]:
        """The allocation `variant` runs on (the schedule's when it has none of its own)."""
        own = None if variant is None else self.variant(variant).allocation
        return self.allocation if own is None else own

    def stage_of(self, variant: str | None = None) -> dict[int, int]:
        return {n: s for s, nodes in enumerate(self.allocation_of(variant)) for n in nodes}

    def for_variant(self, variant: str) -> Schedule:
        """This schedule with `allocation` set to `variant`'s: code that reads
        `schedule.allocation` then sees the allocation the variant runs on."""
        return dataclasses.replace(self, allocation=self.allocation_of(variant))

    def variant(self, name: str) -> VariantSchedule:
        if name not in self.variants:
            raise ScheduleError(f"schedule has no variant {name!r} (has: {', '.join(self.variants)})")
        return self.variants[name]


# ----------------------------------------------------------------------------------------------
# JSON

def to_dict(s: Schedule) -> dict:
    return {
        "schema_version": s.schema_version,
        "scenario": {"name": s.scenario_name, "hash": s.scenario_hash, "path": s.scenario_path,
                     "overrides": dict(s.scenario_overrides)},
        "allocation": {"stages": [list(nodes) for nodes in s.allocation]},
        "variants": {name: _variant_dict(v) for name, v in s.variants.items()},
    }


def _variant_dict(v: VariantSchedule) -> dict:
    out: dict[str, Any] = {
        "paths": [{"microbatch": p.microbatch, "origin": p.origin,
                   "hops": [{"stage": h.stage, "node": h.node} for h in p.hops]} for p in v.paths],
        "predicted": dict(v.predicted),
        "provenance": {**v.provenance.__dict__, "gap": v.provenance.gap},
        "dispatch": v.dispatch,
    }
    if v.activation_limits:
        out["activation_limits"] = [{"node": n, "limit": lim}
                                    for n, lim in sorted(v.activation_limits.items())]
    if v.split_backward:
        out["backward"] = "split"
    if v.allocation is not None:
        out["allocation"] = {"stages": [list(nodes) for nodes in v.allocation]}
    if v.order is not None:
        out["order"] = [{"node": n, "ops": [_op_dict(op) for op in ops]}
                        for n, ops in sorted(v.order.items())]
    return out


def _op_dict(op: Op) -> dict:
    d = {"kind": op.kind.value, "microbatch": op.microbatch, "hop": op.hop}
    if op.start_s is not None:
        d["start_s"] = round(op.start_s, 6)
    return d


def save_schedule(s: Schedule, path: str | Path) -> None:
    """Write atomically: a crash never leaves a half-written schedule."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(to_dict(s), indent=1) + "\n")
    os.replace(tmp, path)


def from_dict(d: Any, where: str = "schedule") -> Schedule:
    """Parse the JSON form; structural problems raise ScheduleError naming the field."""
    try:
        return _from_dict(d)
    except ScheduleError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ScheduleError(f"{where}: malformed schedule ({type(e).__name__}: {e})") from None


def _from_dict(d: dict) -> Schedule:
    version = d.get("schema_version")
    if isinstance(version, int) and not isinstance(version, bool) and version < SCHEMA_VERSION:
        raise ScheduleError(f"schema_version {version} is older than {SCHEMA_VERSION} (one allocation "
                            f"per variant since 2): re-plan it with create_schedule.py")
    if version != SCHEMA_VERSION:
        raise ScheduleError(f"schema_version {version!r} is not {SCHEMA_VERSION}")
    variants = {name: _variant_from(name, v) for name, v in d["variants"].items()}
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise ScheduleError(f"unknown variant {sorted(unknown)[0]!r}")
    sc = d["scenario"]
    return Schedule(str(sc["name"]), str(sc["hash"]), str(sc.get("path", "")),
                    _stages(d["allocation"]),
                    variants, dict(sc.get("overrides", {})))


def _int(x) -> int:
    if isinstance(x, bool) or not isinstance(x, int):
        raise ScheduleError(f"expected an integer, got {x!r}")
    return x


def _variant_from(name: str, v: dict) -> VariantSchedule:
    paths = tuple(MicrobatchPath(_int(p["microbatch"]), _int(p["origin"]),
                                 tuple(Hop(_int(h["stage"]), _int(h["node"])) for h in p["hops"]))
                  for p in v["paths"])
    order = None
    if v.get("order") is not None:
        order = {}
        for entry in v["order"]:
            ops = tuple(Op(OpKind(o["kind"]), _int(o["microbatch"]), _int(o["hop"]),
                           None if o.get("start_s") is None else float(o["start_s"]))
                        for o in entry["ops"])
            order[_int(entry["node"])] = ops
    prov = {k: val for k, val in v.get("provenance", {"solver": "none"}).items() if k != "gap"}
    limits = {_int(e["node"]): None if e["limit"] is None else _int(e["limit"])
              for e in v.get("activation_limits", [])}
    if any(lim is not None and lim < 1 for lim in limits.values()):
        raise ScheduleError(f"variant {name}: an activation limit must be at least 1 (or null)")
    if v.get("backward", "fused") not in ("fused", "split"):
        raise ScheduleError(f"variant {name}: backward {v['backward']!r} is not fused or split")
    alloc = v.get("allocation")
    return VariantSchedule(name, paths, order, {k: float(x) for k, x in v.get("predicted", {}).items()},
                           Provenance(**prov), str(v.get("dispatch", "")), limits,
                           v.get("backward") == "split", None if alloc is None else _stages(alloc))


def _stages(alloc: dict) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(_int(n) for n in nodes) for nodes in alloc["stages"])


def load_schedule(path: str | Path, scenario: Scenario | None = None,
                  check: bool = True) -> tuple[Schedule, Scenario]:
    """Read, parse and validate a schedule file against its scenario.

    The scenario is loaded from the path the schedule records unless one is given; a content
    hash mismatch (the settings changed since planning) is an error."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except OSError as e:
        raise ScheduleError(f"{path}: cannot read: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise ScheduleError(f"{path}: not valid JSON: {e}") from None
    sched = from_dict(raw, str(path))
    if scenario is None:
        if not sched.scenario_path or not Path(sched.scenario_path).is_file():
            raise ScheduleError(f"{path}: scenario file {sched.scenario_path!r} not found")
        scenario = load_scenario(sched.scenario_path, sched.scenario_overrides)
    if scenario.content_hash != sched.scenario_hash:
        raise ScheduleError(f"{path}: made for scenario {sched.scenario_name} hash "
                            f"{sched.scenario_hash}, settings now hash {scenario.content_hash}: re-plan")
    if check:
        validate(sched, scenario, where=str(path))
    return sched, scenario


# ----------------------------------------------------------------------------------------------
# Validation

@dataclass(frozen=True)
class Violation:
    rule: str  # CC1, CC2, CC3, TC1, TC2, BASELINE, ALLOC, ORDER, TIMING, COUNT
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
        bad = [] if v.allocation is None else list(_check_allocation(v.allocation, v.name, scenario))
        out += bad or _check_variant(s.for_variant(v.name), v, scenario)
    return out


def _check_allocation(allocation, variant: str, scenario: Scenario) -> Iterable[Violation]:
    sizes = tuple(len(nodes) for nodes in allocation)
    if sizes != scenario.pipeline.stage_sizes:
        yield Violation("ALLOC", variant, None, None,
                        f"stage sizes {list(sizes)} differ from the scenario's {list(scenario.pipeline.stage_sizes)}")
    all_nodes = sorted(n for nodes in allocation for n in nodes)
    if all_nodes != list(range(len(scenario.nodes))):
        yield Violation("ALLOC", variant, None, None, "allocation must place every node exactly once")


def _check_variant(s: Schedule, v: VariantSchedule, sc: Scenario) -> list[Violation]:
    out = list(_check_counts(s, v, sc))
    stage_of = s.stage_of()
    for p in v.paths:
        out += _check_path(v, p, stage_of, sc)
    if out:
        return out
    out += _check_load(v, sc)
    if v.name in FULL_PIPELINE:
        out += _check_baseline(s, v)
    if v.order is not None:
        out += _check_order(v)
        out += _check_activations(v, stage_of, sc) if not out else []
        if not out and v.has_start_times:
            out += _check_times(v, Costs(sc))
    return out


def _check_counts(s: Schedule, v: VariantSchedule, sc: Scenario) -> Iterable[Violation]:
    mbs = [p.microbatch for p in v.paths]
    if sorted(mbs) != list(range(len(mbs))):
        yield Violation("COUNT", v.name, None, None, "microbatch ids must be 0..N-1, each once")
    per_origin = Counter(p.origin for p in v.paths)
    want = sc.pipeline.microbatches_per_node
    for node in s.allocation[0]:
        if per_origin.get(node, 0) != want:
            yield Violation("COUNT", v.name, None, None,
                            f"data node {node} owns {per_origin.get(node, 0)} microbatches, not {want}")


def _check_path(v: VariantSchedule, p: MicrobatchPath, stage_of: dict[int, int],
                sc: Scenario) -> list[Violation]:
    def bad(rule, hop, msg):
        return Violation(rule, v.name, p.microbatch, hop, msg)

    out = []
    if stage_of.get(p.origin) != 0:
        return [bad("CC1", None, f"origin {p.origin} is not a stage-0 node")]
    if not p.hops or p.hops[0] != Hop(0, p.origin):
        return [bad("CC1", 0, "path must start at stage 0 on its own data node")]
    for i, h in enumerate(p.hops):
        if stage_of.get(h.node) != h.stage:
            out.append(bad("ALLOC", i, f"node {h.node} does not hold stage {h.stage}"))
        if i > 0 and h.stage == 0:
            out.append(bad("CC1", i, "stage 0 is revisited"))
    k = sc.pipeline.n_stages if v.name in FULL_PIPELINE else sc.pipeline.path_length
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
    if v.name in FULL_PIPELINE:
        return []
    visits = Counter(h.stage for p in v.paths for h in p.hops[1:])
    cap = stage_visit_cap(sc, len(v.paths))
    return [Violation("TC1", v.name, None, None,
                      f"stage {st} gets {n} forward visits, more than its even share {cap}")
            for st, n in sorted(visits.items()) if n > cap]


def _check_baseline(s: Schedule, v: VariantSchedule) -> list[Violation]:
    out = []
    for p in v.paths:
        if p.stages != tuple(range(len(s.allocation))):
            out.append(Violation("BASELINE", v.name, p.microbatch, None,
                                 f"a full-pipeline path runs every stage in order, got {list(p.stages)}"))
    loads = Counter(h.node for p in v.paths for h in p.hops[1:])
    for stage, nodes in enumerate(s.allocation[1:], start=1):
        counts = [loads.get(n, 0) for n in nodes]
        if max(counts) - min(counts) > 1:
            out.append(Violation("BASELINE", v.name, None, None,
                                 f"stage {stage} nodes carry uneven pipelines {counts}"))
    return out


def _check_order(v: VariantSchedule) -> list[Violation]:
    want = {n: set(ops) for n, ops in node_ops(v.paths, v.split_backward).items()}
    out = []
    for node in sorted(set(want) | set(v.order)):
        got = list(v.order.get(node, ()))
        if len(got) != len(set(got)) or set(got) != want.get(node, set()):
            missing = sorted(want.get(node, set()) - set(got), key=lambda op: op.sort_key)
            out.append(Violation("ORDER", v.name, missing[0].microbatch if missing else None, None,
                                 f"node {node}'s order must list each of its operations once"))
    return out


def _check_activations(v: VariantSchedule, stage_of: dict[int, int], sc: Scenario) -> list[Violation]:
    """TC1 along each action list (memory.peak_along: timing-free), against the variant's limit;
    a schedule family's limits and order also keep its own rule (memory.family_limits)."""
    rule = family_limits(v.name, v.paths, stage_of, sc.pipeline.n_stages) if v.name in FAMILIES else {}
    out = []
    for node, ops in sorted(v.order.items()):
        peak, limit = peak_along(ops, v.split_backward), v.memory_slots(node, sc)
        if limit is not None and peak > limit:
            out.append(Violation("TC1", v.name, None, None, f"node {node}'s order holds {peak} "
                                 f"activations at once (limit {limit})"))
        own = rule.get(node)
        if own is not None and (peak > own or limit is None or limit > own):
            out.append(Violation("MEMORY", v.name, None, None, f"node {node} (stage "
                                 f"{stage_of[node]}) may hold {own} activations under {v.name}'s "
                                 f"rule; its order holds {peak}, its limit is {limit}"))
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
        spans = sorted(((o.start_s, o.start_s + costs.op_s(o.kind, node, v.split_backward), o)
                        for o in ops), key=lambda span: span[:2])  # zero-cost ops may tie
        for (s0, e0, a), (s1, _, b) in zip(spans, spans[1:]):
            if s1 < e0 - TIME_TOLERANCE_S:
                out.append(Violation("TC2", v.name, b.microbatch, b.hop,
                                     f"{b.kind.value} on node {node} starts at {s1:.3f}s while "
                                     f"{a.kind.value} of microbatch {a.microbatch} runs until {e0:.3f}s"))
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
                out.append(Violation("TIMING", v.name, p.microbatch, b.hop,
                                     f"{b.kind.value} starts at {start1:.3f}s before its input arrives "
                                     f"({end0 + costs.link_s(n0, n1):.3f}s)"))
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
            return [Violation("TC1", v.name, o.microbatch, o.hop,
                              f"node {node} holds {held} activations at {t:.3f}s (memory slots {slots})")]
    return []
