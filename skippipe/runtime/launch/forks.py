"""Node processes forked from one server process that imported torch and the node's code once.

Started as `python -m skippipe node CONFIG ID`, every node spends about 4.5 CPU seconds on
imports before it does anything: torch (2.1), torch._dynamo (1.7: every torch optimizer imports
it when built) and the command line's planner options (0.4). Six nodes on a 2-core host take
some 13 s to come up. multiprocessing's fork server pays that once per launcher and forks each
node from itself: the server only imports (it runs no torch op and has no Python thread of its
own), which is the state torch's DataLoader workers are forked from too.

A forked node is what `skippipe node CONFIG ID` would have been: the same command line run by
the same code, in its own session, stdin closed, stdout and stderr written through to its log,
the launcher's environment and working directory. It asks for SIGTERM when its parent, the
server, dies; the server exits when the launcher does, so a killed launcher still leaves no
node behind (procs.py)."""

from __future__ import annotations

import io
import multiprocessing
import multiprocessing.forkserver
import multiprocessing.resource_tracker
import os
import runpy
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from ...util.procs import die_with_parent

# what every node imports; torch._dynamo by name because only building an optimizer imports it
PRELOAD = ("torch", "torch._dynamo", "skippipe.cli", "skippipe.runtime.node.process")

_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload(list(PRELOAD))  # read when the server starts (on first use)


class Forked:
    """A node started by the fork server, with the part of subprocess.Popen's interface that
    Children (procs.py) uses: pid, poll, wait and returncode (negative: the killing signal)."""

    def __init__(self, process: multiprocessing.process.BaseProcess, args: Sequence[str]):
        self.process, self.args = process, list(args)
        self.pid = process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.exitcode

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self.process.join(timeout)
        if self.returncode is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode


def start(args: Sequence[str], log_path: str | Path) -> Forked:
    """`python -m skippipe ARGS`, forked from the server (started on first use)."""
    env, cwd = dict(os.environ), os.getcwd()
    process = _CONTEXT.Process(target=_main, args=(list(args), str(log_path), env, cwd), daemon=True)
    process.start()
    return Forked(process, ["skippipe", *args])


def stop_server() -> None:
    """End the fork server now (it would at this process's exit): for a test process, which
    outlives the launches it makes. Its nodes must have ended."""
    server = multiprocessing.forkserver._forkserver
    if getattr(server, "_forkserver_pid", None) is not None:
        server._stop()  # multiprocessing's own way to stop it (used by its tests)


def _let_go_of_the_server() -> None:
    """multiprocessing hands each forked child the write ends of the server's and the resource
    tracker's liveness pipes, so that they outlive every process that might still use them. A
    node uses neither; holding them would keep the server alive after its launcher died, and the
    server's death is what ends the node."""
    holders = (
        (multiprocessing.forkserver._forkserver, "_forkserver_alive_fd"),
        (multiprocessing.resource_tracker._resource_tracker, "_fd"),
    )
    for holder, name in holders:
        fd = getattr(holder, name, None)
        if fd is not None:
            os.close(fd)
            setattr(holder, name, None)


def _main(args: list[str], log_path: str, env: dict[str, str], cwd: str) -> None:
    """In the forked child: become the process `python -m skippipe ARGS` would have been."""
    os.setsid()
    _let_go_of_the_server()
    ask = die_with_parent(os.getppid())
    if ask is not None:
        ask()
    os.chdir(cwd)  # first: a relative log path is the caller's
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    # as PYTHONUNBUFFERED: each line reaches the log when written (the launcher's user reads it)
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True)
    os.environ.clear()
    os.environ.update(env)
    sys.argv = ["skippipe", *args]
    runpy.run_module("skippipe", run_name="__main__", alter_sys=True)  # exits with its code
