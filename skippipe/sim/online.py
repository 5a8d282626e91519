"""Simulating online routing: the simulator's event loop (simulate.py) with next hops chosen as
it runs, by the routing step (routing_step.py) the node processes call too.

Every node has its own Router, seeded from the variant's Routing and the node id. When a forward
ends, the routing step at its node picks the next hop (swarm, swarm-skip) or keeps or repairs the
planned one (repair); the next op joins that node's dispatcher when its input arrives (first come
first served, as a node takes a message it was not planned for). A planned node a repair routes
around forgets the microbatch, as in the runtime. Every data message carries what the routing
step gives it (its sender's Report: EMA of its forward time, its queue; the microbatch's
swarm-skip stage set), handed to the receiver's router on arrival. The events are the ones the
nodes write (events.py). `slow` multiplies some nodes' operation times (a straggler), so what-if
studies can see routing react.

`predict` simulates seeds seed .. seed+seeds-1 of the variant's Routing: mean and spread of the
iteration time, and the first seed's result and realized paths (what a schedule stores as the
online variant's prediction).
"""

from __future__ import annotations

import dataclasses
import statistics

from ..events import Routed
from ..ops import Op, OpKind, next_op, node_of
from ..routing import Router, origins_only, path_length
from ..routing import routers as make_routers
from ..routing_step import carried, received, route_forward, spendings
from ..scenario import Scenario
from ..schedule import MicrobatchPath, Schedule
from .result import SimResult
from .simulate import _Simulation


@dataclasses.dataclass(frozen=True)
class Prediction:
    """An online variant's simulated iteration time over seeds (seconds)."""

    mean_s: float
    sd_s: float
    min_s: float
    max_s: float
    first: SimResult  # the first seed's run
    paths: tuple[MicrobatchPath, ...]  # the first seed's realized paths

    def as_predicted(self) -> dict[str, float]:
        """The schedule's `predicted` entries for the spread."""
        return {
            "iteration_sd_s": round(self.sd_s, 4),
            "iteration_min_s": round(self.min_s, 4),
            "iteration_max_s": round(self.max_s, 4),
        }


def simulate_online(
    schedule: Schedule,
    variant: str,
    scenario: Scenario,
    seed: int | None = None,
    slow: dict[int, float] | None = None,
    *,
    iteration: int = 0,
) -> tuple[SimResult, tuple[MicrobatchPath, ...]]:
    """One iteration of an online variant with its routers seeded by `seed` (default: the
    variant's); returns the result and the realized paths."""
    sim = _Online(schedule, variant, scenario, seed, slow or {}, iteration)
    result = sim.run()
    return result, sim.realized()


def predict(
    schedule: Schedule, variant: str, scenario: Scenario, slow: dict[int, float] | None = None
) -> Prediction:
    routing = schedule.variant(variant).routing
    runs = [
        simulate_online(schedule, variant, scenario, routing.seed + i, slow) for i in range(routing.seeds)
    ]
    times = [r.iteration_s for r, _ in runs]
    sd = statistics.stdev(times) if len(times) > 1 else 0.0
    return Prediction(statistics.fmean(times), sd, min(times), max(times), *runs[0])


class _Online(_Simulation):
    def __init__(
        self,
        schedule: Schedule,
        variant: str,
        scenario: Scenario,
        seed: int | None,
        slow: dict[int, float],
        iteration: int,
        routers: dict[int, Router] | None = None,
    ):
        v = schedule.variant(variant)
        if v.routing is None:
            raise ValueError(f"variant {variant} has no online routing")
        params = v.routing if seed is None else dataclasses.replace(v.routing, seed=seed)
        self.rule = params.rule
        self.online = params.online
        if self.online:  # only the origins are known before the run
            v = origins_only(v)
        self.paths = {p.microbatch: p.hops for p in v.paths}
        super().__init__(schedule.for_variant(variant), v, scenario, True, iteration, frozenset())
        self.slow = slow
        self.routers = routers if routers is not None else make_routers(params, scenario)
        self.live = self.schedule.allocation
        self.in_flight: dict[tuple[int, Op], tuple] = {}  # (dst, op) -> (src, its report, stage set)
        self.spending = spendings(v.paths, len(self.live), path_length(self.rule, scenario))

    def _initial_ops(self, v) -> dict[int, list[Op]]:
        """Online, a path is its origin at the start: a loss on the last hop joins the node
        the path ends at when its input arrives there."""
        ops = super()._initial_ops(v)
        if not (self.online and v.loss_at == "last"):
            return ops
        return {n: [op for op in node if op.kind is not OpKind.L] for n, node in ops.items()}

    # -- topology: the paths as routed so far ----------------------------------------------
    def node_of(self, op: Op) -> int:
        return node_of(op, [h.node for h in self.paths[op.microbatch]], self.v.loss_at)

    def successor(self, op: Op) -> Op | None:
        return next_op(op, len(self.paths[op.microbatch]))

    def realized(self) -> tuple[MicrobatchPath, ...]:
        return tuple(MicrobatchPath(mb, hops[0].node, tuple(hops)) for mb, hops in sorted(self.paths.items()))

    # -- hooks into the event loop ----------------------------------------------------------
    def _finish(self, node: int, op: Op) -> set[int]:
        if op.kind is OpKind.F:
            self._route(node, op)
        return super()._finish(node, op)

    def _arrive(self, node: int, op: Op) -> None:
        self.state[node].disp.add([op], beyond_slots=not self.online)  # a node takes any op routed to it
        sent = self.in_flight.pop((node, op), None)
        if sent is not None:
            src, report, stages = sent
            received(self.routers[node], src, op.microbatch, report, stages)
        if op.kind is OpKind.L:  # the realized path, for the record (as the nodes log it)
            nodes = tuple(h.node for h in self.paths[op.microbatch])
            self.events.append(Routed(self.iteration, op.microbatch, 0, nodes).record(self.now, node))
        super()._arrive(node, op)

    def _send(self, src: int, dst: int, op: Op, handoff_s: float) -> None:
        queue = len(self.state[src].disp.arrived)
        self.in_flight[(dst, op)] = (src, *carried(self.routers[src], op.microbatch, queue))
        super()._send(src, dst, op, handoff_s)

    def _route(self, node: int, op: Op) -> None:
        """The forward `op` ended on `node`: the routing step (routing_step.py) decides the next hop."""
        mb = op.microbatch
        step = route_forward(
            self.routers[node],
            mb,
            op.hop,
            self.paths[mb],
            self.live,
            self.op_s(op, node),
            self.spending.get(node),
            self.iteration,
        )
        if step.avoided is not None:
            self.state[step.avoided.node].disp.forget(mb)  # routed around: it will not see mb
        self.paths[mb] = step.hops
        self.events += [e.record(self.now, node) for e in step.events]
