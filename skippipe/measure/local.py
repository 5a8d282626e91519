"""`measure --local N`: N measurement processes on this host (127.0.0.1), each in its own session;
all of them are stopped on exit, Ctrl-C or SIGTERM. Node 0 writes to our stdout, the others to
<run dir>/node-<i>.log, shown when a node fails."""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from ..errors import SkipPipeError
from ..util.procs import stop_sessions
from .peers import LOCAL_HOST
from .plan import plan, recorded_command

EXIT_GRACE_S = 10.0  # after node 0 ends, the others get this long to end by themselves
POLL_S = 0.1  # how often the local launcher looks at its processes
LOG_TAIL_LINES = 15  # lines of a failed node's log shown
PORT_RANGE = (20000, 60000)  # where --local looks for free consecutive ports
PORT_TRIES = 200


def free_base_port(n: int, host: str = LOCAL_HOST) -> int:
    """A base port with n consecutive ports free for TCP and UDP on `host`."""
    rng = random.Random(os.getpid() ^ time.time_ns())
    for _ in range(PORT_TRIES):
        base = rng.randrange(PORT_RANGE[0], PORT_RANGE[1] - n)
        if all(_port_free(host, base + i) for i in range(n)):
            return base
    raise SkipPipeError(f"no {n} consecutive free ports found on {host}")


def _port_free(host: str, port: int) -> bool:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def _node_command(args: argparse.Namespace, n: int, base: int, run_dir: Path) -> list[str]:
    """The command line of every local node (less --node-id): node 0's options forwarded."""
    common = [sys.executable, "-m", "skippipe", *(["-v"] if args.verbose else []), "measure",
              "--nodes", f"0..{n - 1}", "--host", LOCAL_HOST, "--base-port", str(base),
              "--run-dir", str(run_dir), "--recorded-command", recorded_command()]
    out = ["--template", args.template, "--out", args.out, "--repeat", str(args.repeat),
           "--warmup", str(args.warmup), "--payload-mib", repr(args.payload_mib),
           "--device", args.device, "--threads", str(args.threads), "--timeout", repr(args.timeout)]
    for flag, value in (("--name", args.name), ("--stage-sizes", args.stage_sizes),
                        ("--samples", args.samples)):
        if value is not None:
            out += [flag, str(value)]
    return common + out


class _Terminated(Exception):
    pass


def _on_sigterm(signum, frame):
    raise _Terminated()


def run_local(args: argparse.Namespace) -> int:
    """Start nodes 0..N-1 here and wait for node 0's scenario; 130/143 when interrupted."""
    n = args.local
    if n < 2:
        raise SkipPipeError(f"--local needs at least 2 nodes, got {n}")
    if args.node_id is not None or args.peers or args.nodes:
        raise SkipPipeError("--local starts every node itself: drop --node-id/--peers/--nodes")
    plan(args, n)  # bad template or stage sizes: fail before starting anything
    base = free_base_port(n) if args.base_port is None else args.base_port
    run_dir = Path(args.runs) / f"measure-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    run_dir.mkdir(parents=True, exist_ok=False)
    procs: dict[int, subprocess.Popen] = {}
    old = signal.signal(signal.SIGTERM, _on_sigterm)
    say = lambda line: print(line, flush=True)  # noqa: E731
    try:
        _start(_node_command(args, n, base, run_dir), n, run_dir, procs)
        say(f"measuring {n} local nodes on {LOCAL_HOST}:{base}..{base + n - 1} (pids "
            f"{', '.join(str(p.pid) for p in procs.values())}); logs in {run_dir}")
        return _wait(procs, run_dir, args.timeout, say)
    except (KeyboardInterrupt, _Terminated) as e:
        say("interrupted: stopping the measurement processes")
        return 143 if isinstance(e, _Terminated) else 130
    finally:
        old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second signal: still clean up
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            stop_sessions(procs.values())  # every process we started that still runs
        finally:
            signal.signal(signal.SIGINT, old_int)
            signal.signal(signal.SIGTERM, old)


def _start(command: list[str], n: int, run_dir: Path, procs: dict[int, subprocess.Popen]) -> None:
    """Start nodes 0..n-1, each in its own session, into `procs` as they start (so that a
    failure halfway stops those already running); their pids go to processes.json."""
    for i in range(n):
        with open(run_dir / f"node-{i}.log", "wb") as log:
            procs[i] = subprocess.Popen(
                [*command, "--node-id", str(i)], stdout=None if i == 0 else log, stderr=log,
                stdin=subprocess.DEVNULL, start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    tmp = run_dir / "processes.json.tmp"
    tmp.write_text(json.dumps({str(i): p.pid for i, p in procs.items()}))
    os.replace(tmp, run_dir / "processes.json")


def _wait(procs: dict[int, subprocess.Popen], run_dir: Path, timeout_s: float, say) -> int:
    deadline = time.monotonic() + timeout_s + EXIT_GRACE_S
    while procs[0].poll() is None:
        failed = [i for i, p in procs.items() if p.poll() not in (None, 0)]
        if failed or time.monotonic() > deadline:
            why = f"node {failed[0]} failed" if failed else f"no result within {timeout_s:g} s"
            say(f"{why}; stopping the others")
            _show_logs(run_dir, failed or [0], say)
            return 1
        time.sleep(POLL_S)
    if procs[0].returncode != 0:
        _show_logs(run_dir, [0], say)
        return procs[0].returncode
    end = time.monotonic() + EXIT_GRACE_S
    while any(p.poll() is None for p in procs.values()) and time.monotonic() < end:
        time.sleep(POLL_S)
    return 0


def _show_logs(run_dir: Path, nodes: list[int], say) -> None:
    for i in nodes:
        lines = (run_dir / f"node-{i}.log").read_text(errors="replace").splitlines()
        say(f"--- {run_dir}/node-{i}.log (last {LOG_TAIL_LINES} lines)")
        for line in lines[-LOG_TAIL_LINES:]:
            say(line)

