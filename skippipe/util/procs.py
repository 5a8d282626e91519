"""Child processes a command starts: each in its own session, watched by polling, stopped by
PID (SIGTERM to its session, SIGKILL after a grace period). Nothing is ever killed by name.
On Linux each child also asks the kernel for SIGTERM when its parent dies (PR_SET_PDEATHSIG),
so a command killed with SIGKILL leaves no child behind.

`Children` owns one command's children keyed by node id; `wait_until` is the one poll loop
(a condition, a deadline and something to do on every tick); `supervised` stops them all
however the command ends (return, error, Ctrl-C or SIGTERM)."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

STOP_GRACE_S = 5.0  # SIGTERM, then SIGKILL after this
POLL_S = 0.2  # default pause between looks at the children
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)  # besides SIGINT: a scheduler's cancel, a closed terminal


class Children:
    """Processes started by this one, keyed by node id (or any other key)."""

    def __init__(self) -> None:
        self.procs: dict[int, subprocess.Popen] = {}

    def start(
        self,
        key: int,
        argv: Sequence[str],
        log_path: str | Path | None = None,
        env: dict[str, str] | None = None,
        keep_stdout: bool = False,
    ) -> subprocess.Popen:
        """Start `argv` in a new session, stdout and stderr to `log_path` (else inherited),
        stdin closed, unbuffered Python output. `keep_stdout`: stdout stays ours, only stderr
        goes to the log (a child whose output the user follows)."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        log = open(log_path, "wb") if log_path is not None else None
        stderr = log if keep_stdout else (subprocess.STDOUT if log else None)
        try:
            self.procs[key] = subprocess.Popen(
                list(argv),
                stdout=None if keep_stdout else log,
                stderr=stderr,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=env,
                preexec_fn=die_with_parent(os.getpid()),
            )
        finally:
            if log is not None:
                log.close()  # the child holds its own copy
        return self.procs[key]

    def adopt(self, key: int, proc) -> None:
        """Own a child started elsewhere (forks.py's Forked: Popen's pid, poll, wait, returncode)."""
        self.procs[key] = proc

    def running(self) -> list[int]:
        return [k for k, p in self.procs.items() if p.poll() is None]

    def failed(self, expected: Iterable[int] = ()) -> dict[int, int]:
        """Children that exited non-zero, except the `expected` ones: key -> exit code."""
        expected = set(expected)
        return {
            k: p.returncode for k, p in self.procs.items() if p.poll() not in (None, 0) and k not in expected
        }

    def pids(self) -> dict[int, int]:
        return {k: p.pid for k, p in self.procs.items()}

    def write_pids(self, path: str | Path) -> None:
        """{key: pid} as JSON at `path`, replaced atomically (whoever watches it never reads
        half a file)."""
        path = Path(path)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # two writers never share one
        tmp.write_text(json.dumps({str(k): pid for k, pid in self.pids().items()}))
        os.replace(tmp, path)

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        stop_sessions(self.procs.values(), grace_s)


def die_with_parent(parent: int) -> Callable[[], None] | None:
    """For the child, between fork and exec: SIGTERM when the parent dies. Where prctl is
    missing (not Linux) there is nothing to ask for: None."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def ask() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before we asked: nobody will tell us
            os._exit(1)

    return ask


class Terminated(Exception):
    """SIGTERM or SIGHUP arrived while `supervised` was active (as KeyboardInterrupt is for
    SIGINT); `signum` says which."""

    def __init__(self, signum: int = signal.SIGTERM):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def interrupted_exit_code(e: BaseException) -> int:
    """The shell's code for a command ended by a signal: 143 for SIGTERM, 129 for SIGHUP,
    130 for Ctrl-C."""
    return 128 + (e.signum if isinstance(e, Terminated) else signal.SIGINT)


@contextlib.contextmanager
def supervised(children: Children, grace_s: float = STOP_GRACE_S) -> Iterator[Children]:
    """While active, SIGTERM and SIGHUP raise Terminated in the main thread, so that one
    handler serves Ctrl-C, a scheduler's cancel and a closed terminal alike. On leaving,
    however that happens, every child still running is stopped, with these signals ignored
    meanwhile: a second signal must not cut the clean-up short and leave children behind."""
    old = {sig: signal.signal(sig, _raise_terminated) for sig in STOP_SIGNALS}
    try:
        yield children
    finally:
        old[signal.SIGINT] = signal.signal(signal.SIGINT, signal.SIG_IGN)
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        try:
            children.stop(grace_s)
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)


def _raise_terminated(signum, frame):
    raise Terminated(signum)


def wait_until(
    done: Callable[[], bool], timeout_s: float, poll_s: float = POLL_S, tick: Callable[[], None] | None = None
) -> bool:
    """Poll `done` (calling `tick` before each pause) until it holds: True, or False at the
    deadline."""
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            return False
        if tick is not None:
            tick()
        time.sleep(poll_s)
    return True


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
