"""The variant registry: every schedule a scenario can be planned for, and every fact the code
asks of one, in one table (REGISTRY). Adding a variant is one entry here plus its generator.

SkipPipe's own (DT-FM's full-pipeline baseline, network-blind random skipping, the partial
pipelines without and with collision awareness, and the latter with the backward split), the
classic full-pipeline families (memory.py has their rules), and the online ones (routing.py):
SWARM's stochastic wiring over the full pipeline (`swarm`) and over partial, reordered paths
(`swarm-skip`), and ca-partial's plan with online repair of dead or slow hops (`ca-repair`).
Planners build them (planning.PLANNERS, keyed by `Variant.planner`), the validator checks them
(rules.py), the simulator and the nodes run them.

Memory: every variant is made for a memory rule (schedule.VariantSchedule.memory): "slots",
the scenario's `memory_slots` per node, a budget all variants share (the default), or "family",
a classic family's own published rule (memory.family_limits; families only).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .errors import SkipPipeError

MEMORY_RULES = ("slots", "family")
# where a variant's stages sit: the full-pipeline allocation (DT-FM's objective), the skip-aware
# one, the full-pipeline one folded into a V (placement.fold), or that of the variant it is built on
ALLOCATIONS = ("full", "skip", "v", "built_on")

RoundsHeld = Callable[[int, int], "int | None"]  # (stage i, stages p) -> consecutive rounds; None: all


@dataclass(frozen=True)
class Variant:
    """One schedule a scenario can be planned for, with every fact the code asks of it."""

    name: str
    planner: str  # how it is planned: a key of planning.PLANNERS
    full_pipeline: bool = False  # every path runs every stage in order (else paths skip, reorder)
    allocation: str = "full"  # one of ALLOCATIONS
    collision_aware: bool = False  # the partial planner's collision constraint (TC2) on
    rival: str | None = None  # a variant whose plan is also a candidate of this one's search,
    # which this one is never worse than (planning.py)
    built_on: str | None = None  # the variant whose plan it takes
    split_backward: bool = False  # B split into B (input gradient) and W (weight gradient)
    pattern: str | None = None  # a classic family: its generator's name in planner/families.py
    rounds_held: RoundsHeld | None = None  # a family's published rule (memory.py's table)
    routing: str | None = None  # online: the rule nodes route by (schedule.Routing.rule)

    @property
    def family(self) -> bool:
        """A classic schedule family: planned action lists on the baseline's paths."""
        return self.pattern is not None

    @property
    def v_placed(self) -> bool:
        """Each node holds a stage and its mirror (placement.py)."""
        return self.allocation == "v"

    @property
    def loss_at(self) -> str:
        """Where its loss and LM head run by default (ops.LOSS_AT): on the last stage for the full
        pipelines, as their papers and torch pipelining do; at the origin for partial and random
        paths, which may skip the last stage."""
        return "last" if self.full_pipeline else "origin"

    @property
    def memory(self) -> str:
        """The rule a schedule that does not record one was made for: the families planned under
        their own rules before the shared budget existed."""
        return "family" if self.family else "slots"


_ENTRIES = (
    Variant("baseline", "full-pipelines", full_pipeline=True),
    Variant("random", "random-skips"),
    Variant("non-ca-partial", "cp-sat", allocation="skip"),
    Variant("ca-partial", "cp-sat", allocation="skip", collision_aware=True, rival="non-ca-partial"),
    Variant(
        "ca-partial-zb", "backward-split", allocation="built_on", built_on="ca-partial", split_backward=True
    ),  # W in idle gaps (planner/zb_fill.py)
    # the classic families, in memory.py's table order
    Variant("naive", "family", full_pipeline=True, pattern="naive", rounds_held=lambda i, p: 1),
    Variant("gpipe", "family", full_pipeline=True, pattern="gpipe", rounds_held=lambda i, p: None),
    Variant("1f1b", "family", full_pipeline=True, pattern="one_f_one_b", rounds_held=lambda i, p: p - i),
    Variant(
        "zb-h1",
        "family",
        full_pipeline=True,
        pattern="zb_h1",
        split_backward=True,
        rounds_held=lambda i, p: p,
    ),
    Variant(
        "dualpipev",
        "family",
        full_pipeline=True,
        allocation="v",
        pattern="dualpipev_held",
        split_backward=True,
        rounds_held=lambda i, p: p // 2,
    ),
    # online: next hops chosen at run time
    Variant("swarm", "online", full_pipeline=True, routing="swarm"),
    Variant("swarm-skip", "online", allocation="skip", routing="swarm-skip"),
    Variant("ca-repair", "online", allocation="skip", built_on="ca-partial", routing="repair"),
)
REGISTRY: dict[str, Variant] = {v.name: v for v in _ENTRIES}
VARIANTS = tuple(REGISTRY)  # every name, in table order (the order schedules list them in)
REFERENCE = "baseline"  # the variant every other is compared against (the "vs baseline" ratios)
ROUTING_RULES = tuple(dict.fromkeys(v.routing for v in _ENTRIES if v.routing))


def variant(name: str) -> Variant:
    """The registry entry of `name` (an unknown name: one error line naming the known ones)."""
    if name not in REGISTRY:
        raise SkipPipeError(f"unknown variant {name!r} (known: {', '.join(VARIANTS)})")
    return REGISTRY[name]


def default_memory(name: str) -> str:
    """`name`'s memory rule when its schedule records none (an unknown name: "slots"; the schedule
    loader rejects unknown names with their own message)."""
    return REGISTRY[name].memory if name in REGISTRY else "slots"


def default_loss_at(name: str) -> str:
    """Where `name`'s loss runs by default (an unknown name: at the origin)."""
    return REGISTRY[name].loss_at if name in REGISTRY else "origin"


def _check() -> None:
    """Entries that refer to others or to vocabularies name known ones."""
    for v in _ENTRIES:
        assert v.allocation in ALLOCATIONS, v
        assert v.built_on in (None, *REGISTRY) and v.rival in (None, *REGISTRY), v
        assert (v.allocation == "built_on") <= (v.built_on is not None), v
        assert (v.pattern is None) == (v.rounds_held is None), v


_check()
