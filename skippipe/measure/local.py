"""`measure --local N`: N measurement processes on this host (127.0.0.1), each in its own session;
all of them are stopped on exit, Ctrl-C or SIGTERM. Node 0 writes to our stdout, the others to
<run dir>/node-<i>.log, shown when a node fails."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import SkipPipeError
from ..util.ports import free_port_range
from ..util.procs import Children, Terminated, interrupted_exit_code, supervised, wait_until
from ..util.rundir import new_run_dir
from .peers import LOCAL_HOST
from .plan import plan, recorded_command

EXIT_GRACE_S = 10.0  # after node 0 ends, the others get this long to end by themselves
POLL_S = 0.1  # how often the local launcher looks at its processes
LOG_TAIL_LINES = 15  # lines of a failed node's log shown


def _node_command(args: argparse.Namespace, n: int, base: int, run_dir: Path) -> list[str]:
    """The command line of every local node (less --node-id): node 0's options forwarded."""
    common = [
        sys.executable,
        "-m",
        "skippipe",
        *(["-v"] if args.verbose else []),
        "measure",
        "--nodes",
        f"0..{n - 1}",
        "--host",
        LOCAL_HOST,
        "--base-port",
        str(base),
        "--run-dir",
        str(run_dir),
        "--recorded-command",
        recorded_command(),
    ]
    out = [
        "--template",
        args.template,
        "--out",
        args.out,
        "--repeat",
        str(args.repeat),
        "--warmup",
        str(args.warmup),
        "--payload-mib",
        repr(args.payload_mib),
        "--device",
        args.device,
        "--threads",
        str(args.threads),
        "--timeout",
        repr(args.timeout),
    ]
    for flag, value in (
        ("--name", args.name),
        ("--stage-sizes", args.stage_sizes),
        ("--samples", args.samples),
    ):
        if value is not None:
            out += [flag, str(value)]
    return common + out


def run_local(args: argparse.Namespace) -> int:
    """Start nodes 0..N-1 here and wait for node 0's scenario; 130/143 when interrupted."""
    n = args.local
    if n < 2:
        raise SkipPipeError(f"--local needs at least 2 nodes, got {n}")
    if args.node_id is not None or args.peers or args.nodes:
        raise SkipPipeError("--local starts every node itself: drop --node-id/--peers/--nodes")
    plan(args, n)  # bad template or stage sizes: fail before starting anything
    base = free_port_range(n, host=LOCAL_HOST) if args.base_port is None else args.base_port
    run_dir = new_run_dir("measure", args.runs)
    say = lambda line: print(line, flush=True)  # noqa: E731
    with supervised(Children()) as children:  # every process we started is stopped on the way out
        try:
            _start(children, _node_command(args, n, base, run_dir), n, run_dir)
            say(
                f"measuring {n} local nodes on {LOCAL_HOST}:{base}..{base + n - 1} (pids "
                f"{', '.join(str(pid) for pid in children.pids().values())}); logs in {run_dir}"
            )
            return _wait(children, run_dir, args.timeout, say)
        except (KeyboardInterrupt, Terminated) as e:
            say("interrupted: stopping the measurement processes")
            return interrupted_exit_code(e)


def _start(children: Children, command: list[str], n: int, run_dir: Path) -> None:
    """Start nodes 0..n-1 (node 0 writes to our stdout, every node's stderr goes to its log);
    `children` holds each as it starts, so that a failure halfway stops those already
    running. Their pids go to processes.json."""
    for i in range(n):
        children.start(i, [*command, "--node-id", str(i)], run_dir / f"node-{i}.log", keep_stdout=i == 0)
    children.write_pids(run_dir / "processes.json")


def _wait(children: Children, run_dir: Path, timeout_s: float, say) -> int:
    """Node 0's exit code once it ends (the others then get EXIT_GRACE_S to end too); 1 when
    another node fails first or node 0 has no result by the deadline."""
    node0 = children.procs[0]
    wait_until(lambda: node0.poll() is not None or bool(children.failed()), timeout_s + EXIT_GRACE_S, POLL_S)
    if node0.poll() is None:
        failed = list(children.failed())
        why = f"node {failed[0]} failed" if failed else f"no result within {timeout_s:g} s"
        say(f"{why}; stopping the others")
        _show_logs(run_dir, failed or [0], say)
        return 1
    if node0.returncode != 0:
        _show_logs(run_dir, [0], say)
        return node0.returncode
    wait_until(lambda: not children.running(), EXIT_GRACE_S, POLL_S)
    return 0


def _show_logs(run_dir: Path, nodes: list[int], say) -> None:
    for i in nodes:
        lines = (run_dir / f"node-{i}.log").read_text(errors="replace").splitlines()
        say(f"--- {run_dir}/node-{i}.log (last {LOG_TAIL_LINES} lines)")
        for line in lines[-LOG_TAIL_LINES:]:
            say(line)
