"""Helpers for tests that start node processes on loopback."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from skippipe.util.ports import free_port
from skippipe.util.ports import free_port_range as free_base_port  # noqa: F401 (tests import it here)
from skippipe.util.procs import signal_session


def start_skippipe(args: list[str], cwd, env: dict | None = None) -> subprocess.Popen:
    """`python -m skippipe ARGS` in `cwd`, in its own session (so a test can end all of it)."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "skippipe", *args],
        cwd=cwd,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen, timeout_s: float) -> subprocess.CompletedProcess:
    """Wait for `proc`; at the deadline kill its whole session and fail."""
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        signal_session(proc, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"{' '.join(proc.args)} did not finish in {timeout_s} s:\n{out}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "")


def run_skippipe(
    args: list[str], cwd, timeout_s: float, env: dict | None = None
) -> subprocess.CompletedProcess:
    """`python -m skippipe ARGS` in `cwd`, killed (with its session) at the deadline."""
    return finish(start_skippipe(args, cwd, env), timeout_s)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purpose: it runs nothing
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def run_torchrun(tmp_path, node_args: list[str], timeout_s: float, options: tuple[str, ...] = ()):
    """Six nodes started by torchrun on loopback (`python -m skippipe node NODE_ARGS`, runs under
    tmp_path/runs, one run key), torchrun `options` added; skips where torchrun is missing."""
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists() and not shutil.which("torchrun"):
        pytest.skip("torchrun is not installed next to this Python")
    head = ["--nnodes", "1", "--nproc-per-node", "6", "--master-addr", "127.0.0.1"]
    args = [str(torchrun), *head, "--master-port", str(free_port()), *options, "-m", "skippipe", "node"]
    proc = subprocess.Popen(
        [*args, *node_args, "--runs", str(tmp_path / "runs")],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), "SKIPPIPE_RUN_KEY": "cd" * 32},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    return finish(proc, timeout_s)
