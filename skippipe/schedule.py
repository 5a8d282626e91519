"""Schedule: the planner's output for one scenario.

A schedule holds, per variant, its allocation (node -> stage: each variant may use the one that
suits its objective; `Schedule.allocation` is the baseline's, or the one all share), a path for
every microbatch, each node's action list (its operations, ops.Op, in run order, with start times
where known), the rule its nodes dispatch by ("planned": exactly the action list, the planner's
timing; "fcfs": first come first served, the action list being what that rule produced in the
simulator), the predicted iteration time and the solver's provenance.

Its JSON form is schedule_file.py's (which checks what it reads with the one validator,
rules.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .errors import ScheduleError
from .ops import LOSS_AT, Op, node_ops
from .placement import stages_of
from .scenario import Scenario
from .variants import MEMORY_RULES, ROUTING_RULES, default_memory

SCHEMA_VERSION = 2  # 2: an allocation per variant (1 had one allocation for all variants)
DISPATCH_RULES = ("planned", "fcfs")  # see dispatch.py
# how a router picks among candidates (routing.py): SWARM's least accumulated expected time, or
# a random draw weighted by 1 / expected wait (what schedules recorded before the choice was kept)
ROUTING_CHOICES = ("least-time", "weighted")


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
class Routing:
    """How an online variant's nodes choose next hops at run time (routing.py)."""

    rule: str  # one of variants.ROUTING_RULES (what routing.py implements)
    seed: int = 0  # the routers' seed (each node derives its own from it)
    seeds: int = 5  # the prediction is the mean (and spread) over seeds seed .. seed+seeds-1
    ema: float = 0.3  # weight of a new measurement in a peer's moving average
    slow_factor: float = 2.0  # repair: a planned hop measured this many times slower is avoided
    rebalance: float = 0.0  # swarm rules: move a node when stage throughputs differ this many
    #                         times (rebalance.py); 0: never
    choice: str = "least-time"  # ROUTING_CHOICES

    @property
    def online(self) -> bool:
        """Routed from the origin on, with no plan (swarm, swarm-skip); repair keeps a plan."""
        return self.rule != "repair"

    def __post_init__(self) -> None:
        if self.rule not in ROUTING_RULES:
            raise ScheduleError(f"routing rule {self.rule!r} is not one of {', '.join(ROUTING_RULES)}")
        if not (0 < self.ema <= 1 and self.slow_factor >= 1 and self.seeds >= 1):
            raise ScheduleError(
                f"routing: ema must be in (0, 1], slow_factor at least 1, seeds "
                f"at least 1; got {self.ema}, {self.slow_factor}, {self.seeds}"
            )
        if self.choice not in ROUTING_CHOICES:
            raise ScheduleError(f"routing choice {self.choice!r} is not one of {', '.join(ROUTING_CHOICES)}")
        if self.rebalance and (self.rebalance <= 1 or not self.online):
            raise ScheduleError(
                f"routing: rebalance must be 0 or above 1, and 0 for the repair rule; "
                f"got {self.rebalance} for {self.rule}"
            )


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
    routing: Routing | None = None  # online variants: next hops chosen at run time
    memory: str = ""  # the memory rule it was made for (variants.MEMORY_RULES); empty: the default
    loss_at: str = "origin"  # where the loss and the LM head run (ops.LOSS_AT); older files: origin

    def __post_init__(self) -> None:
        if not self.memory:
            object.__setattr__(self, "memory", default_memory(self.name))
        if self.memory not in MEMORY_RULES:
            raise ScheduleError(
                f"variant {self.name}: memory {self.memory!r} is not one of {', '.join(MEMORY_RULES)}"
            )
        if self.loss_at not in LOSS_AT:
            raise ScheduleError(
                f"variant {self.name}: loss_at {self.loss_at!r} is not one of {', '.join(LOSS_AT)}"
            )
        if not self.dispatch:
            object.__setattr__(self, "dispatch", "fcfs" if self.order is None else "planned")
        if self.dispatch not in DISPATCH_RULES:
            raise ScheduleError(
                f"variant {self.name}: dispatch {self.dispatch!r} is not one of {', '.join(DISPATCH_RULES)}"
            )

    def actions(self, node: int) -> list[Op]:
        """`node`'s action list: its planned order where there is one, else its ops path by
        path (the order the dispatch rule starts from)."""
        if self.order is not None:
            return list(self.order.get(node, ()))
        return node_ops(self.paths, self.split_backward, self.loss_at).get(node, [])

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
        return bool(self.order) and all(op.start_s is not None for ops in self.order.values() for op in ops)


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
        """node -> its stage (its lower one under the V placement: placement.py)."""
        return {n: held[0] for n, held in self.stages_of(variant).items()}

    def stages_of(self, variant: str | None = None) -> dict[int, tuple[int, ...]]:
        """node -> every stage it holds (two under the V placement)."""
        return stages_of(self.allocation_of(variant))

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
