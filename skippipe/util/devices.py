"""Torch devices: one rule for every command. Node processes take the CUDA devices round-robin
by node id; single-process commands take CUDA when present; else the CPU. A device asked for
by name must exist."""

from __future__ import annotations

import torch

from ..errors import SkipPipeError

AUTO = "auto"  # a name that means: pick_device()


def pick_device() -> torch.device:
    """The first CUDA device when available, else the CPU."""
    return device_for(0)


def device_for(node_id: int) -> torch.device:
    """CUDA devices round-robin over the node ids, else the CPU."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{node_id % torch.cuda.device_count()}")
    return torch.device("cpu")


def resolve_device(name: str | None) -> torch.device:
    """`pick_device()` for None or "auto", else the named device; unknown or unavailable ->
    SkipPipeError."""
    if name is None or name == AUTO:
        return pick_device()
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SkipPipeError(f"unknown device {name!r} (use cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SkipPipeError(f"device {name!r} requested but CUDA is not available")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise SkipPipeError(
            f"device {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) are visible"
        )
    return device
