"""Gradient averaging inside one stage, without a barrier across stages.

Each node of a stage holds gradients of the microbatches that passed through it, already scaled
by 1 / (microbatches in the iteration) at the origin, so the stage's full-batch gradient is the
SUM of its nodes' gradients. Each node sends its flattened gradient to every live peer of its
stage and adds theirs (all-to-all: stages hold a handful of nodes). With link emulation the
phase is padded to the scenario's ring all-reduce time for the stage (Costs.averaging_s).
A peer declared dead (liveness.py) is left out; while waiting, the node serves late operations
of re-routed microbatches so that no one waits on it.
"""
from __future__ import annotations

import asyncio
import time

import torch

from ..errors import SkipPipeError
from .wire import Kind, Message

STALL_FACTOR = 3  # live peers silent on averaging for this many peer timeouts: give up


class AveragingStalled(SkipPipeError):
    pass


def flat_grads(module: torch.nn.Module) -> torch.Tensor:
    """All parameter gradients in one float32 CPU vector (zeros where a parameter got none)."""
    parts = [(p.grad if p.grad is not None else torch.zeros_like(p)).detach().reshape(-1)
             for p in module.parameters()]
    return torch.cat(parts).float().cpu()


def set_grads(module: torch.nn.Module, flat: torch.Tensor) -> None:
    offset = 0
    for p in module.parameters():
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).to(device=p.device, dtype=p.dtype).clone()
        offset += n


class StageAverager:
    def __init__(self, node, stage_nodes: tuple[int, ...]):
        self.node = node
        self.stage_nodes = tuple(stage_nodes)

    def live_peers(self) -> list[int]:
        return [n for n in self.stage_nodes if n != self.node.id and n not in self.node.live.dead]

    async def average(self, it: int) -> None:
        node = self.node
        peers = self.live_peers()
        t_event, start = node.events.now(), time.monotonic()
        if peers:
            mine = flat_grads(node.module)
            for dst in peers:
                node._spawn_send(dst, Message.from_tensor(Kind.AVERAGE, node.id, mine, iteration=it))
            total = mine.clone()
            for sender, grads in (await self._collect(it, peers)).items():
                total += grads
            set_grads(node.module, total)
        if node.cfg.emulate_links:
            group = [node.id, *peers]
            target = node.costs.averaging_s(node.stage, group) * node.cfg.time_scale * node.slow
            await asyncio.sleep(max(0.0, target - (time.monotonic() - start)))
        node.events.write("op", t=t_event, kind="AVG", microbatch=None, hop=None, stage=node.stage,
                          dur=node.events.now() - t_event, iteration=it)

    async def _collect(self, it: int, peers: list[int]) -> dict[int, torch.Tensor]:
        """Each live peer's gradients for iteration `it`. A slow peer is waited for as long as
        its heartbeats say it is alive (liveness.py decides who is dead, not this wait)."""
        node, got = self.node, {}
        stall_deadline = time.monotonic() + STALL_FACTOR * node.cfg.peer_timeout_s
        while set(peers) - set(got) - node.live.dead:
            rest = []
            for msg in node.inbox.get(it, []):
                if msg.kind == Kind.AVERAGE and msg.sender in peers:
                    got[msg.sender] = msg.to_torch().clone()
                else:
                    rest.append(msg)
            node.inbox[it] = rest
            if not set(peers) - set(got) - node.live.dead:
                break
            if time.monotonic() > stall_deadline:
                raise AveragingStalled(f"iteration {it}: stage peers {sorted(set(peers) - set(got))} "
                                       f"alive but sent no gradients for {STALL_FACTOR * node.cfg.peer_timeout_s:g} s")
            if await node._serve_late():
                continue
            await node._wait(node.live.interval_s)
        return got


def stage_state_vector(module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[torch.Tensor, list[int]]:
    """A stage's weights and AdamW moments as one float32 vector, plus each parameter's step
    count: what a rejoining node needs to continue exactly like its stage peers."""
    params = list(module.parameters())
    parts, steps = [p.detach().reshape(-1).float().cpu() for p in params], []
    for p in params:
        state = optimizer.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq"):
            parts.append((state[key] if key in state else torch.zeros_like(p)).detach().reshape(-1).float().cpu())
        steps.append(int(state["step"]) if "step" in state else 0)
    return torch.cat(parts), steps


def load_stage_state_vector(module: torch.nn.Module, optimizer: torch.optim.Optimizer,
                            flat: torch.Tensor, steps: list[int]) -> None:
    params = list(module.parameters())
    offset = 0

    def take(p):
        nonlocal offset
        out = flat[offset:offset + p.numel()].view_as(p).to(device=p.device, dtype=p.dtype).clone()
        offset += p.numel()
        return out

    with torch.no_grad():
        for p in params:
            p.copy_(take(p))
    for p, step in zip(params, steps):
        exp_avg, exp_avg_sq = take(p), take(p)
        if step:
            optimizer.state[p] = {"step": torch.tensor(float(step)), "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
