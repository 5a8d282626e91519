"""util/procs.py: children in their own sessions, polled, stopped by PID (SIGTERM, then SIGKILL),
stopped however a supervised command ends."""

from __future__ import annotations

import json
import os
import signal
import sys

import pytest

from skippipe.util.procs import Children, Terminated, interrupted_exit_code, supervised, wait_until

DEADLINE_S = 20.0
SLEEPER = "import time; print('ready', flush=True); time.sleep(60)"
STUBBORN = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('ready', flush=True); time.sleep(60)"
)
PARENT = (
    "import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', "
    "'import time; time.sleep(60)']); print('ready', c.pid, flush=True); time.sleep(60)"
)


def _ready(log) -> bool:
    return log.read_text().startswith("ready")


def _gone(pid: int) -> bool:
    """Not running: no such process, or a zombie whose parent has not reaped it yet."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_children_are_stopped_by_pid_with_their_sessions(tmp_path):
    kids = Children()
    try:
        logs = {k: tmp_path / f"{k}.log" for k in range(2)}
        kids.start(0, [sys.executable, "-c", SLEEPER], logs[0])
        kids.start(1, [sys.executable, "-c", PARENT], logs[1])
        assert wait_until(lambda: all(_ready(p) for p in logs.values()), DEADLINE_S, 0.01)
        grandchild = int(logs[1].read_text().split()[1])
        assert sorted(kids.running()) == [0, 1]
        assert all(os.getpgid(pid) == pid for pid in kids.pids().values())  # own sessions
    finally:
        kids.stop()
    assert kids.running() == []
    assert {p.returncode for p in kids.procs.values()} == {-signal.SIGTERM}
    assert wait_until(lambda: _gone(grandchild), DEADLINE_S, 0.01)  # the whole session went


def test_a_child_ignoring_sigterm_gets_sigkill(tmp_path):
    kids = Children()
    try:
        kids.start(0, [sys.executable, "-c", STUBBORN], tmp_path / "0.log")
        assert wait_until(lambda: _ready(tmp_path / "0.log"), DEADLINE_S, 0.01)
    finally:
        kids.stop(grace_s=0.3)
    assert kids.procs[0].returncode == -signal.SIGKILL


def test_failed_children_and_the_poll_deadline(tmp_path):
    kids = Children()
    try:
        kids.start(0, [sys.executable, "-c", "raise SystemExit(3)"])
        kids.start(1, [sys.executable, "-c", "raise SystemExit(4)"])
        kids.start(2, [sys.executable, "-c", "pass"])
        assert wait_until(lambda: not kids.running(), DEADLINE_S, 0.01)
        assert kids.failed() == {0: 3, 1: 4}
        assert kids.failed(expected=[1]) == {0: 3}
        assert not wait_until(lambda: False, timeout_s=0.05, poll_s=0.01)
    finally:
        kids.stop()


def test_keep_stdout_logs_only_stderr_and_pids_are_written(tmp_path, capfd):
    kids = Children()
    try:
        kids.start(
            0,
            [sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr)"],
            tmp_path / "0.log",
            keep_stdout=True,
        )
        assert wait_until(lambda: not kids.running(), DEADLINE_S, 0.01)
        kids.write_pids(tmp_path / "processes.json")
    finally:
        kids.stop()
    assert (tmp_path / "0.log").read_text() == "err\n"
    assert capfd.readouterr().out == "out\n"  # the child wrote to our stdout
    assert json.loads((tmp_path / "processes.json").read_text()) == {"0": kids.procs[0].pid}


def test_supervised_turns_sigterm_into_an_exception_and_stops_the_children(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    kids = Children()
    with pytest.raises(Terminated):
        with supervised(kids):
            kids.start(0, [sys.executable, "-c", SLEEPER], tmp_path / "0.log")
            os.kill(os.getpid(), signal.SIGTERM)
            wait_until(lambda: False, DEADLINE_S, 0.01)  # the handler raises meanwhile
    assert kids.running() == [] and kids.procs[0].returncode == -signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before
    assert interrupted_exit_code(Terminated()) == 143
    assert interrupted_exit_code(KeyboardInterrupt()) == 130
