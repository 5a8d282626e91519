"""Gradient averaging inside one stage, without a barrier across stages.

Each node of a stage holds gradients of the microbatches that passed through it, already scaled
by 1 / (microbatches in the iteration) at the origin, so the stage's full-batch gradient is the
SUM of its nodes' gradients. Each node sends its flattened gradient to every live peer of its
stage and adds theirs (all-to-all: stages hold a handful of nodes). With link emulation the
phase is padded to the scenario's ring all-reduce time for the stage (Costs.averaging_s),
counted, as in the simulator, from when the stage's last node joins it: here, when this node
has every peer's gradients (a node that finishes its operations early waits for the others
and then for the all-reduce, instead of hiding the all-reduce in its wait).
A peer declared dead (liveness.py) is left out; while waiting, the node serves late operations
of re-routed microbatches so that no one waits on it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import torch

from ...errors import SkipPipeError
from ..net.wire import Kind, Message
from .emulation import Emulation
from .messenger import STALL_FACTOR, Messenger


class AveragingStalled(SkipPipeError):
    pass


def flat_grads(module: torch.nn.Module) -> torch.Tensor:
    """All parameter gradients in one float32 CPU vector (zeros where a parameter got none)."""
    parts = [
        (p.grad if p.grad is not None else torch.zeros_like(p)).detach().reshape(-1)
        for p in module.parameters()
    ]
    return torch.cat(parts).float().cpu()


def set_grads(module: torch.nn.Module, flat: torch.Tensor) -> None:
    offset = 0
    for p in module.parameters():
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).to(device=p.device, dtype=p.dtype).clone()
        offset += n


class StageAverager:
    """Averages one stage's gradients (`module`'s) with the stage's live peers, through the
    node's messenger; `serve_late` runs one late operation while it waits (False: none)."""

    def __init__(
        self,
        stage: int,
        module: torch.nn.Module,
        messenger: Messenger,
        emulation: Emulation,
        serve_late: Callable[[], Awaitable[bool]],
    ):
        self.stage, self.module = stage, module
        self.messenger, self.emulation, self.serve_late = messenger, emulation, serve_late

    async def average(self, it: int, stage_nodes: tuple[int, ...]) -> None:
        """Average iteration `it`'s gradients with the live ones of `stage_nodes` (the stage's
        nodes in this iteration's allocation)."""
        m = self.messenger
        peers = [n for n in stage_nodes if n != m.id and n not in m.live.dead]
        t_event, ready = m.events.now(), time.monotonic()
        if peers:
            mine = flat_grads(self.module)
            for dst in peers:
                m.send(dst, Message.from_tensor(Kind.AVERAGE, m.id, mine, iteration=it))
            total = mine.clone()
            got, ready = await self._collect(it, peers)
            for grads in got.values():
                total += grads
            set_grads(self.module, total)
        await self.emulation.pad(ready, self.emulation.averaging_s(self.stage, [m.id, *peers]))
        m.events.write(
            "op",
            t=t_event,
            kind="AVG",
            microbatch=None,
            hop=None,
            stage=self.stage,
            dur=m.events.now() - t_event,
            iteration=it,
        )

    async def _collect(self, it: int, peers: list[int]) -> tuple[dict[int, torch.Tensor], float]:
        """Each live peer's gradients for iteration `it`, and when the last of them was taken
        (time.monotonic). A slow peer is waited for as long as its heartbeats say it is alive
        (liveness.py decides who is dead, not this wait)."""
        m, got, ready = self.messenger, {}, time.monotonic()
        stall_s = STALL_FACTOR * m.peer_timeout_s
        stall_deadline = time.monotonic() + stall_s
        while set(peers) - set(got) - m.live.dead:
            for msg in m.take(it, lambda msg: msg.kind == Kind.AVERAGE and msg.sender in peers):
                got[msg.sender], ready = msg.to_torch().clone(), time.monotonic()
            if not set(peers) - set(got) - m.live.dead:
                break
            if time.monotonic() > stall_deadline:
                raise AveragingStalled(
                    f"iteration {it}: stage peers {sorted(set(peers) - set(got))} "
                    f"alive but sent no gradients for {stall_s:g} s"
                )
            if await self.serve_late():
                continue
            await m.wait(m.live.interval_s)
        return got, ready
