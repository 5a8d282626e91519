"""Compute measurement: time one pipeline stage of the model on this process's device (forward
and backward seconds per sample per layer), its peak memory, the activation bytes one
microbatch keeps for its backward, and the host facts written next to them."""

from __future__ import annotations

import dataclasses
import os
import resource
import socket
import sys
import time

from .figures import ComputeTask, NodeFigures


def measure_compute(task: ComputeTask, repeat: int, warmup: int, device, node: int = 0) -> NodeFigures:
    """Time forward and backward of stage 1 (layers only) on `device` with `task.samples`
    sequences; seconds per sample per layer for each timed repetition."""
    import torch

    from ..scenario import ModelConfig
    from ..train.model import build_stage

    cfg = ModelConfig(**task.model)
    cuda = device.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    _warm_up_libraries(cfg, device)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    rss = _RssPeak()
    stage = build_stage(cfg, 1, task.n_stages, device, task.seed)
    layers = len(stage.layer_ids)
    gen = torch.Generator().manual_seed(task.seed)
    shape = (task.samples, cfg.ctx_tokens, cfg.d_model)
    h = torch.randn(shape, generator=gen).to(device)
    grad = torch.randn(shape, generator=gen).to(device)
    forward, backward = [], []
    per = task.samples * layers
    for i in range(warmup + repeat):
        x = h.detach().requires_grad_(True)  # as received from a peer: its gradient goes back
        sync()
        t0 = time.perf_counter()
        out = stage.run_layers(x)
        sync()
        t1 = time.perf_counter()
        out.backward(grad)
        sync()
        t2 = time.perf_counter()
        stage.zero_grad(set_to_none=True)
        del out, x
        if i >= warmup:
            forward.append((t1 - t0) / per)
            backward.append((t2 - t1) / per)
    act = _saved_bytes(stage, h, {p.untyped_storage().data_ptr() for p in stage.parameters()})
    if cuda:
        peak, kind = int(torch.cuda.max_memory_allocated(device)), "cuda max_memory_allocated"
        capacity = int(torch.cuda.get_device_properties(device).total_memory)
        name = torch.cuda.get_device_name(device)
    else:
        (peak, kind), capacity, name = rss.growth(), _host_memory_bytes(), _cpu_name()
    return NodeFigures(
        node,
        socket.gethostname(),
        str(device),
        name,
        task.samples,
        layers,
        tuple(forward),
        tuple(backward),
        peak,
        kind,
        act,
        capacity,
        torch.get_num_threads(),
    )


def _warm_up_libraries(cfg, device) -> None:
    """Build and run a minimal model of the same architecture once, so that one-time library
    set-up (lazy imports, allocator and thread pools: ~90 MB of RSS on CPU) is not counted
    as the stage's memory."""
    import torch

    from ..train.model import build_stage

    mini = dataclasses.replace(
        cfg, d_model=8, n_heads=2, n_layers=2, ffn_hidden=8, ctx_tokens=4, vocab_size=16
    )
    stage = build_stage(mini, 1, 2, device, 0)
    x = torch.zeros(1, mini.ctx_tokens, mini.d_model, device=device, requires_grad=True)
    stage.run_layers(x).sum().backward()


def _saved_bytes(stage, h, param_ptrs: set[int]) -> int:
    """Bytes autograd keeps from one forward (activations, not parameters)."""
    import torch

    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in param_ptrs:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = stage.run_layers(h.detach().requires_grad_(True))
    del out
    return int(sum(seen.values()))


class _RssPeak:
    """Growth of this process's peak resident set from construction to `growth()` (Linux:
    the peak is reset through /proc/self/clear_refs; elsewhere ru_maxrss, a lower bound)."""

    def __init__(self) -> None:
        self.reset = False
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.reset = True
        except OSError:
            pass
        self.start = _status_kib("VmRSS") * 1024 if self.reset else _maxrss_bytes()

    def growth(self) -> tuple[int, str]:
        if self.reset:
            return max(0, _status_kib("VmHWM") * 1024 - self.start), "peak RSS growth"
        return max(0, _maxrss_bytes() - self.start), "ru_maxrss growth (lower bound)"


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _maxrss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB


def _host_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} x{os.cpu_count()}"
    except OSError:
        pass
    return f"cpu x{os.cpu_count()}"
