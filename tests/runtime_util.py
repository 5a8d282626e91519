"""Helpers for tests that start node processes on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from conftest import ROOT
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
