"""Helpers for tests that start node processes on loopback."""
from __future__ import annotations

import os
import random
import socket
import subprocess
import sys

from conftest import ROOT

PORT_RANGE = (20000, 60000)


def free_base_port(n: int, seed: int) -> int:
    """A base port with n consecutive free TCP and UDP ports on 127.0.0.1."""
    rng = random.Random(seed * 7919 + os.getpid())
    for _ in range(200):
        base = rng.randrange(*PORT_RANGE)
        if all(_free(base + i) for i in range(n)):
            return base
    raise RuntimeError("no free port range found")


def _free(port: int) -> bool:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def start_skippipe(args: list[str], cwd, env: dict | None = None) -> subprocess.Popen:
    """`python -m skippipe ARGS` in `cwd`, in its own session (so a test can end all of it)."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "skippipe", *args], cwd=cwd, env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def finish(proc: subprocess.Popen, timeout_s: float) -> subprocess.CompletedProcess:
    """Wait for `proc`; at the deadline kill its whole session and fail."""
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, _ = proc.communicate()
        raise AssertionError(f"{' '.join(proc.args)} did not finish in {timeout_s} s:\n{out}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "")


def run_skippipe(args: list[str], cwd, timeout_s: float, env: dict | None = None) -> subprocess.CompletedProcess:
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
