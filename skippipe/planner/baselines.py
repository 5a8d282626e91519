"""The two reference variants the SkipPipe planners are compared against.

* `baseline` (DT-FM): every microbatch runs the full pipeline 0 -> 1 -> ... -> S-1 (and back to
  its data node for the loss) along the allocation's columns.
* `random` (DT-FM with random skipping): every microbatch takes a random CC3-valid path of k
  stages, chosen without looking at the network, with TC1's even load over the stages and
  random nodes balanced inside each stage.

Neither gives a per-node order: the simulator runs them first-come first-served.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Sequence

from ..scenario import Scenario
from ..schedule import Hop, MicrobatchPath, Provenance, VariantSchedule
from ..variants import default_loss_at
from .allocation import Allocation, as_stages, check_allocation
from .paths import microbatch_ids
from .random_paths import random_stage_paths

log = logging.getLogger(__name__)

AllocationLike = Allocation | Sequence[Sequence[int]]


def baseline_variant(scenario: Scenario, allocation: AllocationLike) -> VariantSchedule:
    """Full pipelines along the allocation's columns (variant "baseline").

    Data node allocation[0][i] owns `microbatches_per_node` microbatches. On a stage with as
    many nodes as stage 0 they all use that stage's i-th node (column i); on any other stage
    microbatch m uses node m mod (stage size), so the stage's nodes carry loads within 1."""
    started = time.monotonic()
    stages = _checked(scenario, allocation)
    width = len(stages[0])
    paths = []
    for microbatch, origin in microbatch_ids(stages, scenario):
        column = stages[0].index(origin)
        hops = [Hop(0, origin)]
        for stage, nodes in enumerate(stages[1:], start=1):
            slot = column if len(nodes) == width else microbatch % len(nodes)
            hops.append(Hop(stage, nodes[slot]))
        paths.append(MicrobatchPath(microbatch, origin, tuple(hops)))
    provenance = Provenance("baseline", status="n/a", wall_s=time.monotonic() - started)
    log.debug("baseline for %s: %d full pipelines", scenario.name, len(paths))
    return VariantSchedule(
        "baseline", tuple(paths), None, {}, provenance, loss_at=default_loss_at("baseline")
    )


def random_variant(scenario: Scenario, allocation: AllocationLike, seed: int) -> VariantSchedule:
    """Network-blind random skipping (variant "random"), reproducible from `seed`.

    Stage sequences come from `random_paths.random_stage_paths` (CC3-valid, within TC1's
    even share per stage). Each stage's visits then go to its nodes in a random order with
    loads within 1."""
    started = time.monotonic()
    stages = _checked(scenario, allocation)
    rng = random.Random(seed)
    ids = microbatch_ids(stages, scenario)
    sequences = random_stage_paths(scenario, len(ids), rng)
    visits = Counter(stage for seq in sequences for stage in seq[1:])
    deal = {stage: _balanced_deal(stages[stage], visits[stage], rng) for stage in visits}
    paths = []
    for (microbatch, origin), seq in zip(ids, sequences):
        hops = (Hop(0, origin),) + tuple(Hop(stage, deal[stage].pop()) for stage in seq[1:])
        paths.append(MicrobatchPath(microbatch, origin, hops))
    provenance = Provenance("random", seed=seed, status="n/a", wall_s=time.monotonic() - started)
    log.debug(
        "random for %s: %d paths, stage visits %s", scenario.name, len(paths), dict(sorted(visits.items()))
    )
    return VariantSchedule("random", tuple(paths), None, {}, provenance)


def _checked(scenario: Scenario, allocation: AllocationLike) -> tuple[tuple[int, ...], ...]:
    stages = as_stages(allocation)
    check_allocation(scenario, stages)
    return stages


def _balanced_deal(nodes: Sequence[int], visits: int, rng: random.Random) -> list[int]:
    """`visits` node ids of one stage, each node within 1 of the others, in random order."""
    base, extra = divmod(visits, len(nodes))
    lucky = set(rng.sample(list(nodes), extra))
    deal = [n for n in nodes for _ in range(base + (1 if n in lucky else 0))]
    rng.shuffle(deal)
    return deal
