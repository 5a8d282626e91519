"""The variant registry: the name of every schedule a scenario can be planned for.

SkipPipe's own (DT-FM's full-pipeline baseline, network-blind random skipping, the partial
pipelines without and with collision awareness, and the latter with the backward split), the
classic full-pipeline families (memory.FAMILIES), and the online ones (routing.py): SWARM's
stochastic wiring over the full pipeline (`swarm`) and over partial, reordered paths
(`swarm-skip`), and ca-partial's plan with online repair of dead or slow hops (`ca-repair`).
Planners build them (planning.py), the validator checks them (rules.py).

Memory: every variant is made for a memory rule (schedule.VariantSchedule.memory): "slots",
the scenario's `memory_slots` per node, a budget all variants share (the default), or "family",
a classic family's own published rule (memory.family_limits; families only).
"""
from __future__ import annotations

from .memory import FAMILIES

SKIPPIPE = ("baseline", "random", "non-ca-partial", "ca-partial", "ca-partial-zb")
# next hops chosen at run time; the rule each one routes by (schedule.Routing.rule)
ONLINE = {"swarm": "swarm", "swarm-skip": "swarm-skip", "ca-repair": "repair"}
VARIANTS = (*SKIPPIPE, *FAMILIES, *ONLINE)
FULL_PIPELINE = ("baseline", *FAMILIES, "swarm")  # every path runs every stage in order
PARTIAL = ("non-ca-partial", "ca-partial", "ca-partial-zb")  # paths skip and reorder stages
ZERO_BUBBLE_OF = {"ca-partial-zb": "ca-partial"}  # the backward split, W in idle gaps (planner/zb_fill.py)
BUILT_ON = {**ZERO_BUBBLE_OF, "ca-repair": "ca-partial"}  # variant -> the one whose plan it takes
V_PLACED = ("dualpipev",)  # each node holds a stage and its mirror (placement.py)
MEMORY_RULES = ("slots", "family")


def default_memory(variant: str) -> str:
    """The rule a schedule that does not record one was made for: the families planned under
    their own rules before the shared budget existed."""
    return "family" if variant in FAMILIES else "slots"


def default_loss_at(variant: str) -> str:
    """Where `variant`'s loss and LM head run by default (ops.LOSS_AT): on the last stage for the
    full pipelines, as their papers and torch pipelining do; at the origin for SkipPipe's partial
    and random paths, which may skip the last stage."""
    return "last" if variant in FULL_PIPELINE else "origin"
