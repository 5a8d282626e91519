"""The online variants' schedule entries: nothing is planned, the simulator predicts.

`swarm` and `swarm-skip` store their allocation, their Routing (rule, seed, parameters) and, as
a prediction only, the paths and first-come-first-served run order the simulator realized with
the first seed; `predicted` holds the mean iteration time over the Routing's seeds and its
spread. Nodes never follow those paths: they route online (routing.py), and move between
stages when stage throughputs differ by REBALANCE_THRESHOLD times (rebalance.py). `ca-repair` is
ca-partial's plan (paths, order, planned dispatch) with the repair rule on top.
"""

from __future__ import annotations

import dataclasses

from ..scenario import Scenario
from ..schedule import Hop, MicrobatchPath, Provenance, Routing, Schedule, VariantSchedule
from ..sim.online import predict
from ..variants import variant
from .paths import PlanningError, microbatch_ids

REBALANCE_THRESHOLD = 1.5  # swarm rules: rebalance when stage throughputs differ 1.5 times


def online_variant(
    name: str,
    scenario: Scenario,
    allocation,
    seed: int,
    plan: VariantSchedule | None = None,
    loss_at: str | None = None,
) -> VariantSchedule:
    """The schedule entry of online variant `name` on `allocation`; `plan`: ca-partial's, which
    ca-repair follows; `loss_at`: where the loss runs (default: the variant's)."""
    spec = variant(name)
    rule = spec.routing
    routing = Routing(rule, seed=seed, rebalance=0.0 if rule == "repair" else REBALANCE_THRESHOLD)
    if rule == "repair":
        if plan is None:
            raise PlanningError(f"{name} follows {spec.built_on}'s plan: plan {spec.built_on} too")
        return dataclasses.replace(
            plan,
            name=name,
            routing=routing,
            provenance=Provenance(f"{spec.built_on} + online repair", seed, status=plan.provenance.status),
        )
    origins = tuple(
        MicrobatchPath(mb, origin, (Hop(0, origin),)) for mb, origin in microbatch_ids(allocation, scenario)
    )
    start = VariantSchedule(
        name,
        origins,
        dispatch="fcfs",
        allocation=tuple(allocation),
        routing=routing,
        loss_at=loss_at or spec.loss_at,
    )
    schedule = Schedule(
        scenario.name, scenario.content_hash, scenario.source, tuple(allocation), {name: start}
    )
    got = predict(schedule, name, scenario)
    return dataclasses.replace(
        start,
        paths=got.paths,
        order=got.first.order,
        predicted={"iteration_s": round(got.mean_s, 4), **got.as_predicted()},
        provenance=Provenance(
            "swarm router (simulated)", seed, status=f"{routing.seeds} seeds, sd {got.sd_s:.3f} s"
        ),
    )
