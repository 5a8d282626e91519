"""util/devices.py: CUDA round-robin by node id, else the CPU; named devices checked."""

from __future__ import annotations

import pytest
import torch

from skippipe.errors import SkipPipeError
from skippipe.util.devices import device_for, pick_device, resolve_device


def _cuda(monkeypatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_nodes_share_the_gpus_round_robin(monkeypatch):
    _cuda(monkeypatch, 2)
    assert [device_for(n) for n in range(4)] == [torch.device(f"cuda:{i}") for i in (0, 1, 0, 1)]
    assert pick_device() == torch.device("cuda:0")


def test_without_cuda_everything_runs_on_the_cpu(monkeypatch):
    _cuda(monkeypatch, 0)
    assert device_for(5) == pick_device() == resolve_device(None) == resolve_device("auto")
    assert pick_device() == torch.device("cpu")
    with pytest.raises(SkipPipeError, match="CUDA is not available"):
        resolve_device("cuda")


def test_named_devices_are_checked(monkeypatch):
    _cuda(monkeypatch, 1)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(SkipPipeError, match="only 1 CUDA device"):
        resolve_device("cuda:1")
    with pytest.raises(SkipPipeError, match="unknown device"):
        resolve_device("abacus")
