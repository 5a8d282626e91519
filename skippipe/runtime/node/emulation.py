"""The one place where scenario time becomes wall time and back.

A run emulates the scenario's network and GPUs on whatever machine it has: each message waits
on its emulated link, each operation is padded to the scenario's compute time, and each stage's
gradient averaging to the scenario's all-reduce time, all multiplied by the run's `time_scale`
(the run config's value; the scenario's [training] time_scale is only its default). A node
slowed by failure injection (faults.py, how=slow) multiplies its compute, its averaging and
the bytes of its outgoing messages by its slow factor. Reports divide `time_scale` out again
(`scenario_s`), so measured times compare with the simulator's.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from ...costs import Costs
from ...ops import OpKind
from ..net.linkemu import LinkEmulator, LinkModel

if TYPE_CHECKING:
    from .runconfig import RunConfig


class Emulation:
    """Time scaling for one run, and for one node of it when given the scenario's costs."""

    def __init__(
        self,
        time_scale: float,
        *,
        compute: bool = True,
        links: bool = True,
        costs: Costs | None = None,
        node: int | None = None,
        chunks: tuple[int, ...] = (),
    ):
        if not time_scale > 0:
            raise ValueError(f"time_scale must be positive, got {time_scale}")
        self.time_scale, self.compute, self.links = time_scale, compute, links
        self.costs, self.node = costs, node
        self.chunks = chunks  # the stages the node holds (two under the V placement)
        self.slow = 1.0  # failure injection's slow-down of this node (1: none)

    @classmethod
    def from_config(
        cls, cfg: RunConfig, costs: Costs | None = None, node: int | None = None, chunks: tuple[int, ...] = ()
    ) -> Emulation:
        """The run's emulation; with `costs` and `node` (holding the stages `chunks`), what that
        node waits for."""
        return cls(
            cfg.time_scale,
            compute=cfg.emulate_compute,
            links=cfg.emulate_links,
            costs=costs,
            node=node,
            chunks=chunks,
        )

    # -- scenario seconds -> wall seconds ---------------------------------------------------
    def wall_s(self, scenario_s: float) -> float:
        """Wall seconds this node spends on `scenario_s` of scenario work (slow factor included)."""
        return scenario_s * self.time_scale * self.slow

    def op_s(self, kind: OpKind, split: bool = False) -> float:
        """Wall seconds one operation of this node should last (`split`: the variant splits the
        backward into B and W); 0 without compute emulation."""
        return self.wall_s(self._costs().op_s(kind.value, self.node, split)) if self.compute else 0.0

    def averaging_s(self, stage: int, group: list[int]) -> float:
        """Wall seconds the stage's averaging among `group` should last; 0 without link emulation.
        A node holding two stages (V placement) averages both in one exchange over the same
        ring: the two stages' times, one after the other (placement.averaging_ends)."""
        stages = self.chunks if stage in self.chunks else (stage,)
        return self.wall_s(sum(self._costs().averaging_s(s, group) for s in stages)) if self.links else 0.0

    def link_bytes(self, nominal_bytes: int) -> int:
        """Bytes an outgoing message occupies its emulated link for (the slow factor stretches
        serialization, not latency)."""
        return int(nominal_bytes * self.slow)

    def link_emulator(self) -> LinkEmulator | None:
        """This node's sending side: one scaled link model per other node of the scenario."""
        if not self.links:
            return None
        sc = self._costs().scenario
        models = {}
        for n in sc.nodes:
            if n.id != self.node:
                link = sc.link(self.node, n.id)
                models[n.id] = LinkModel(
                    link.latency_s, link.bandwidth_bytes_per_s, sc.costs.per_hop_overhead_s, self.time_scale
                )
        return LinkEmulator(self.node, models)

    async def pad(self, started: float, target_s: float) -> None:
        """Wait until `target_s` wall seconds have passed since `started` (time.monotonic)."""
        await asyncio.sleep(max(0.0, target_s - (time.monotonic() - started)))

    # -- wall seconds -> scenario seconds (reports) -----------------------------------------
    def scenario_s(self, wall_s: float) -> float:
        """Measured wall seconds in scenario seconds, comparable with the simulator."""
        return wall_s / self.time_scale

    def _costs(self) -> Costs:
        if self.costs is None or self.node is None:
            raise ValueError("node-level emulation needs the scenario's costs and a node id")
        return self.costs
