"""Cost model (docs/design.md): every duration the planner and the simulator use, in seconds.

forward on node n   = compute_s_per_sample_per_layer[n] x layers_per_stage x samples
backward            = backward_factor x forward
  split backward    = B (input gradient) (1 - weight_grad_share) x backward, then W (weight
                      gradient) weight_grad_share x backward
loss                = loss_factor x forward (at the origin, or on the last stage)
link i -> j         = latency + bytes / bandwidth + per_hop_overhead  (same location: local link)
averaging in stage  = ring all-reduce of its parameter bytes, the ring visiting each location's
                      nodes together: 2(n-1) steps, each a message of 1/n of them per node

Messages on one directed link queue: the link is busy for `bytes / bandwidth` per message
(`serialization_s`), and latency plus overhead are added after (`propagation_s`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from .scenario import Scenario


@dataclass(frozen=True)
class Costs:
    """Durations for one scenario; node ids index the scenario's nodes."""

    scenario: Scenario

    @cached_property
    def activation_bytes(self) -> int:
        """Bytes of one microbatch's activations (and of its gradient) on the wire."""
        m, p = self.scenario.model, self.scenario.pipeline
        return m.activation_dtype_bytes * m.d_model * m.ctx_tokens * p.samples_per_microbatch

    def forward_s(self, node: int) -> float:
        n = self.scenario.nodes[node]
        return (
            n.compute_s_per_sample_per_layer
            * self.scenario.layers_per_stage
            * self.scenario.pipeline.samples_per_microbatch
        )

    def backward_s(self, node: int, split: bool = False) -> float:
        """The fused backward; `split`: its input-gradient part B only."""
        c = self.scenario.costs
        share = 1.0 - c.weight_grad_share if split else 1.0
        return share * c.backward_factor * self.forward_s(node)

    def weight_grad_s(self, node: int) -> float:
        """W of a split backward: the weight-gradient part of the backward."""
        c = self.scenario.costs
        return c.weight_grad_share * c.backward_factor * self.forward_s(node)

    def loss_s(self, node: int) -> float:
        return self.scenario.costs.loss_factor * self.forward_s(node)

    def op_s(self, kind: str, node: int, split: bool = False) -> float:
        """Duration of one operation: kind 'F' (forward), 'L' (loss), 'B' (backward: the input
        gradient only when `split`) or 'W' (weight gradient of a split backward)."""
        if kind == "B":
            return self.backward_s(node, split)
        return {"F": self.forward_s, "L": self.loss_s, "W": self.weight_grad_s}[kind](node)

    def serialization_s(self, src: int, dst: int, nbytes: float | None = None) -> float:
        """Time the directed link src -> dst is busy sending one message."""
        if src == dst:
            return 0.0
        b = self.activation_bytes if nbytes is None else nbytes
        return b / self.scenario.link(src, dst).bandwidth_bytes_per_s

    def propagation_s(self, src: int, dst: int) -> float:
        """Latency plus per-hop overhead, added after serialization (no link is busy then)."""
        if src == dst:
            return 0.0
        return self.scenario.link(src, dst).latency_s + self.scenario.costs.per_hop_overhead_s

    def link_s(self, src: int, dst: int, nbytes: int | None = None) -> float:
        """Transfer time of one message on an idle link."""
        return self.serialization_s(src, dst, nbytes) + self.propagation_s(src, dst)

    def stage_param_bytes(self, stage: int, loss_at: str = "origin") -> int:
        """The stage's parameter bytes: its layers, the embedding at stage 0, and the final norm
        and LM head where the loss runs (stage 0, or the last stage for `loss_at` "last")."""
        m = self.scenario.model
        params = m.layer_params() * self.scenario.layers_per_stage
        head = self.scenario.pipeline.n_stages - 1 if loss_at == "last" else 0
        embedding = m.vocab_size * m.d_model
        if stage == 0:
            params += embedding
        if stage == head:
            params += m.head_params() - embedding  # final norm and LM head
        return params * m.param_dtype_bytes

    def averaging_s(self, stage: int, nodes: list[int] | tuple[int, ...], loss_at: str = "origin") -> float:
        """Ring all-reduce of the stage's gradients among `nodes`: 2(n-1) steps in which every
        node sends 1/n of the parameter bytes to the next as one message under the link rule
        above. A node sends step s once its predecessor's step s-1 has arrived (its first step
        needs nothing), so a ring of equal links takes 2(n-1) link times, while the one slow
        link of a bandwidth-bound ring is busy back to back and pays its latency once. The ring
        takes the nodes by location (then id), so the time depends only on how many nodes of
        each location the stage holds (the allocation search caches on that)."""
        ring = sorted(nodes, key=lambda node: (self.scenario.nodes[node].location, node))
        n = len(ring)
        if n <= 1:
            return 0.0
        chunk = self.stage_param_bytes(stage, loss_at) / n
        hops = list(zip(ring, ring[1:] + ring[:1]))  # hop i: ring[i] -> ring[i+1]
        ser = [self.serialization_s(a, b, chunk) for a, b in hops]
        prop = [self.propagation_s(a, b) for a, b in hops]
        free, arrived = [0.0] * n, [0.0] * n  # per hop: link free again; last message arrived
        for _ in range(2 * (n - 1)):
            ready = arrived[-1:] + arrived[:-1]  # ring[i] forwards what ring[i-1] sent it
            free = [max(ready[i], free[i]) + ser[i] for i in range(n)]
            arrived = [free[i] + prop[i] for i in range(n)]
        return max(arrived)
