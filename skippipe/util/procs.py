"""Stopping the child processes a command started: each runs in its own session, so its whole
process group is signalled, and nothing is ever killed by name."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterable

STOP_GRACE_S = 5.0  # SIGTERM, then SIGKILL after this


def stop_sessions(procs: Iterable[subprocess.Popen], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM every still-running process's session, SIGKILL those left after `grace_s`, reap all."""
    procs = list(procs)
    for p in procs:
        if p.poll() is None:
            signal_session(p, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            signal_session(p, signal.SIGKILL)
            p.wait()


def signal_session(p: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(p.pid, sig)  # the child leads its own session: its pid is the group id
    except ProcessLookupError:
        pass
