"""The variant registry: the name of every schedule a scenario can be planned for.

SkipPipe's own (DT-FM's full-pipeline baseline, network-blind random skipping, the partial
pipelines without and with collision awareness, and the latter with the backward split) and the classic full-pipeline families
(memory.FAMILIES). Planners build them (planning.py), the validator checks them (rules.py).
"""
from __future__ import annotations

from .memory import FAMILIES

SKIPPIPE = ("baseline", "random", "non-ca-partial", "ca-partial", "ca-partial-zb")
VARIANTS = (*SKIPPIPE, *FAMILIES)
FULL_PIPELINE = ("baseline", *FAMILIES)  # every path runs every stage along a column
PARTIAL = ("non-ca-partial", "ca-partial", "ca-partial-zb")  # paths skip and reorder stages
ZERO_BUBBLE_OF = {"ca-partial-zb": "ca-partial"}  # the backward split, W in idle gaps (planner/zb_fill.py)
V_PLACED = ("dualpipev",)  # each node holds a stage and its mirror (placement.py)
