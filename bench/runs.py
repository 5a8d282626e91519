"""`python -m skippipe ...` from the benches: one way to run it (output captured, or to a log
file while the bench watches the run), from the repository root with the repository on the
Python path.

    from bench.runs import skippipe               # benches run as `python -m bench.NAME`
    skippipe(["schedule", "settings/tiny.toml", "--out", "x.json"], "planning")
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from skippipe.util.procs import stop_sessions

ROOT = Path(__file__).resolve().parents[1]


def _argv(args: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "skippipe", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def skippipe(args: Sequence[str], what: str | None = None) -> subprocess.CompletedProcess:
    """Run `python -m skippipe ARGS` to the end, output captured. With `what`, a non-zero exit
    ends the bench with the output's tail (a bench that cannot go on without this step)."""
    print("$ python -m skippipe", " ".join(args), flush=True)
    r = subprocess.run(_argv(args), cwd=ROOT, capture_output=True, text=True, env=_env())
    if what and r.returncode != 0:
        raise SystemExit(f"{what} failed:\n{r.stdout[-3000:]}{r.stderr[-2000:]}")
    return r


def start(args: Sequence[str], log: Path) -> subprocess.Popen:
    """Start `python -m skippipe ARGS` in its own session (output to `log`) and return at once;
    `finish` (or `stop_sessions`) ends it and every node it started."""
    print("$ python -m skippipe", " ".join(args), flush=True)
    with open(log, "wb") as out:  # the child holds its own copy
        return subprocess.Popen(
            _argv(args),
            cwd=ROOT,
            env=_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def finish(proc: subprocess.Popen, timeout_s: float) -> int:
    """Its exit code; at the deadline its session is stopped and the code is 124 (timeout(1)'s)."""
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        stop_sessions([proc])
        return 124
