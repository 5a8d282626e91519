"""The variant registry: the name of every schedule a scenario can be planned for.

SkipPipe's own four (DT-FM's full-pipeline baseline, network-blind random skipping, and the
partial pipelines without and with collision awareness) and the classic full-pipeline families
(memory.FAMILIES). Planners build them (planning.py), the validator checks them (rules.py).
"""
from __future__ import annotations

from .memory import FAMILIES

SKIPPIPE = ("baseline", "random", "non-ca-partial", "ca-partial")
VARIANTS = (*SKIPPIPE, *FAMILIES)
FULL_PIPELINE = ("baseline", *FAMILIES)  # every path runs every stage along a column
PARTIAL = ("non-ca-partial", "ca-partial")  # paths skip and reorder stages
V_PLACED = ("dualpipev",)  # each node holds a stage and its mirror (placement.py)
