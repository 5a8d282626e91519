"""Measure the live cluster (links between nodes, each node's compute) and write a scenario.

Single host: `python -m skippipe measure --local 4 --template settings/tiny.toml --out
runs/measured.toml` starts 4 measurement processes on 127.0.0.1 (each in its own session; all
of them are stopped on exit or Ctrl-C) and waits for them. Several hosts: every host runs
`python -m skippipe measure --node-id I --peers peers.json` (peers.json: {"0": "host:port",
...}); node 0 (which also takes --template and --out) drives the measurement over the
transport and writes the scenario file.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from ..errors import SkipPipeError
from ..util.procs import stop_sessions

HELP = "measure links and compute of live nodes and write a scenario file for them"
DEFAULT_BASE_PORT = 29600
DEFAULT_TEMPLATE = "settings/tiny.toml"
DEFAULT_OUT = "settings/measured.toml"
LOCAL_HOST = "127.0.0.1"
STOP_GRACE_S = 5.0  # SIGTERM to a local node process, then SIGKILL after this
EXIT_GRACE_S = 10.0  # after node 0 ends, the others get this long to end by themselves
POLL_S = 0.1  # how often the local launcher looks at its processes
LOG_TAIL_LINES = 15  # lines of a failed node's log shown
PORT_RANGE = (20000, 60000)  # where --local looks for free consecutive ports
PORT_TRIES = 200


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = ("examples:\n"
                "  python -m skippipe measure --local 4 --template settings/tiny.toml --out runs/measured.toml\n"
                "  python -m skippipe measure --node-id 0 --peers peers.json --out settings/measured.toml   # host of node 0\n"
                "  python -m skippipe measure --node-id 1 --peers peers.json                               # every other host\n"
                "then: python create_schedule.py settings/measured.toml")
    where = p.add_argument_group("which nodes")
    where.add_argument("--local", type=int, metavar="N",
                       help="start N measurement processes on this host (127.0.0.1) and wait for them")
    where.add_argument("--node-id", type=int, help="this process's node (node 0 coordinates)")
    where.add_argument("--nodes", metavar="0..N-1", help="the node ids (with --host/--base-port)")
    where.add_argument("--peers", help="JSON file {node id: \"host:port\"} for every node")
    where.add_argument("--host", default=LOCAL_HOST, help="address of every node without --peers "
                       "(default %(default)s)")
    where.add_argument("--base-port", type=int, help=f"node i listens on base-port + i (default "
                       f"{DEFAULT_BASE_PORT}; --local: free ports)")
    where.add_argument("--listen", help="address to bind instead of the node's own peer address")
    what = p.add_argument_group("what to measure (node 0's options count)")
    what.add_argument("--template", default=DEFAULT_TEMPLATE,
                      help="scenario whose [model] [pipeline] [costs] [training] are used (default %(default)s)")
    what.add_argument("--out", default=DEFAULT_OUT, help="scenario file to write (default %(default)s)")
    what.add_argument("--name", help="scenario name (default: the output file's stem)")
    what.add_argument("--stage-sizes", help="nodes per stage, e.g. 2,1,1 (default: the template's, "
                      "fitted to the node count)")
    what.add_argument("--samples", type=int, help="sequences per timed forward/backward "
                      "(default: the template's samples_per_microbatch)")
    what.add_argument("--repeat", type=int, default=5, help="timed repetitions, median kept (default %(default)s)")
    what.add_argument("--warmup", type=int, default=1, help="untimed repetitions first (default %(default)s)")
    what.add_argument("--payload-mib", type=float, default=4.0,
                      help="bandwidth probe size in MiB (default %(default)s)")
    p.add_argument("--device", default="auto", help="torch device: auto (CUDA if available), cpu, cuda:N")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads while timing (default %(default)s, as node processes "
                   "run; 0: torch's default)")
    p.add_argument("--timeout", type=float, default=900.0,
                   help="seconds the whole measurement may take (default %(default)s)")
    p.add_argument("--runs", default="runs", help="--local: parent of the run directory (logs)")
    p.add_argument("--run-dir", help=argparse.SUPPRESS)  # set by --local for its processes
    p.add_argument("--recorded-command", help=argparse.SUPPRESS)  # --local: the user's command


def run(args: argparse.Namespace) -> int:
    if args.local is not None:
        return run_local(args)
    return run_node(args)


# ----------------------------------------------------------------------------------------------
# One node.

def parse_nodes(spec: str) -> list[int]:
    """'0..3' (inclusive) or '0,1,2,3' -> [0, 1, 2, 3]."""
    try:
        if ".." in spec:
            first, last = (int(x) for x in spec.split("..", 1))
            return list(range(first, last + 1))
        return [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise SkipPipeError(f"--nodes {spec!r}: expected FIRST..LAST or a comma list") from None


def peer_table(args: argparse.Namespace) -> dict[int, tuple[str, int]]:
    if args.peers:
        try:
            raw = json.loads(Path(args.peers).read_text())
            peers = {int(k): (v.rsplit(":", 1)[0], int(v.rsplit(":", 1)[1])) for k, v in raw.items()}
        except (OSError, ValueError, IndexError, AttributeError) as e:
            raise SkipPipeError(f"{args.peers}: not a peer table {{id: \"host:port\"}} ({e})") from None
        if args.nodes and sorted(parse_nodes(args.nodes)) != sorted(peers):
            raise SkipPipeError(f"--nodes {args.nodes} differs from the nodes of {args.peers}")
    else:
        if not args.nodes:
            raise SkipPipeError("give --local N, or --nodes 0..N-1 (with --host/--base-port), or --peers FILE")
        base = DEFAULT_BASE_PORT if args.base_port is None else args.base_port
        peers = {n: (args.host, base + n) for n in parse_nodes(args.nodes)}
    if sorted(peers) != list(range(len(peers))) or len(peers) < 2:
        raise SkipPipeError(f"nodes must be 0..N-1 with N >= 2, got {sorted(peers)}")
    return peers


def run_node(args: argparse.Namespace) -> int:
    from .. import measure as m

    if args.node_id is None:
        raise SkipPipeError("give --node-id I (or --local N)")
    peers = peer_table(args)
    if args.node_id not in peers:
        raise SkipPipeError(f"--node-id {args.node_id} is not one of the nodes 0..{len(peers) - 1}")
    settings = m.Settings(args.repeat, args.warmup, max(1, round(args.payload_mib * m.MIB)), args.timeout)
    say = lambda line: print(line, flush=True)  # noqa: E731
    task = template = None
    if args.node_id == m.COORDINATOR:
        template, task, sizes = _plan(args, len(peers))
    meas = m.measure(args.node_id, peers, settings, task, device=args.device,
                     threads=args.threads or None, run_dir=args.run_dir,
                     listen_host=args.listen, say=say)
    if meas is None:
        return 0
    command = args.recorded_command or _command_line()
    name = args.name or Path(args.out).stem
    text = m.render_scenario(template, meas, settings, name, command, sizes)
    sc = m.write_scenario(text, args.out)
    for line in m.summary_lines(meas, settings) + m.memory_warnings(meas, sc.pipeline.memory_slots):
        say(line)
    say(f"wrote {args.out}: scenario {sc.name}, {len(sc.nodes)} nodes, stages "
        f"{list(sc.pipeline.stage_sizes)}, k={sc.pipeline.path_length}; measured in {meas.wall_s:.1f} s")
    say(f"plan it: python create_schedule.py {args.out}")
    return 0


def _command_line() -> str:
    """The command as the user typed it (best effort: `python -m skippipe ARGS`)."""
    argv = sys.argv[1:] if "measure" in sys.argv[1:] else ["measure", "..."]
    return shlex.join(["python", "-m", "skippipe", *argv])


def _plan(args: argparse.Namespace, n_nodes: int):
    """Node 0's inputs, checked before anything is measured: template, compute task, sizes."""
    from .. import measure as m
    from ..scenario import load_scenario

    template = load_scenario(args.template)
    sizes = None
    if args.stage_sizes:
        try:
            sizes = [int(x) for x in args.stage_sizes.split(",")]
        except ValueError:
            raise SkipPipeError(f"--stage-sizes {args.stage_sizes!r}: expected e.g. 2,1,1") from None
    pipeline, _ = m.fit_pipeline(dataclasses.asdict(template.pipeline), template.model.n_layers,
                                 n_nodes, sizes)
    if len(pipeline["stage_sizes"]) < 2 or sum(pipeline["stage_sizes"]) != n_nodes:
        raise SkipPipeError(f"--stage-sizes {pipeline['stage_sizes']} must name >= 2 stages "
                            f"holding all {n_nodes} nodes")
    samples = args.samples or template.pipeline.samples_per_microbatch
    if samples < 1:
        raise SkipPipeError("--samples must be >= 1")
    task = m.ComputeTask(dataclasses.asdict(template.model), len(pipeline["stage_sizes"]), samples,
                         template.training.seed)
    return template, task, sizes


# ----------------------------------------------------------------------------------------------
# --local N: N node processes on this host.

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


def _forwarded(args: argparse.Namespace) -> list[str]:
    out = ["--template", args.template, "--out", args.out, "--repeat", str(args.repeat),
           "--warmup", str(args.warmup), "--payload-mib", repr(args.payload_mib),
           "--device", args.device, "--threads", str(args.threads), "--timeout", repr(args.timeout)]
    for flag, value in (("--name", args.name), ("--stage-sizes", args.stage_sizes),
                        ("--samples", args.samples)):
        if value is not None:
            out += [flag, str(value)]
    return out


class _Terminated(Exception):
    pass


def _on_sigterm(signum, frame):
    raise _Terminated()


def run_local(args: argparse.Namespace) -> int:
    n = args.local
    if n < 2:
        raise SkipPipeError(f"--local needs at least 2 nodes, got {n}")
    if args.node_id is not None or args.peers or args.nodes:
        raise SkipPipeError("--local starts every node itself: drop --node-id/--peers/--nodes")
    _plan(args, n)  # bad template or stage sizes: fail before starting anything
    base = free_base_port(n) if args.base_port is None else args.base_port
    run_dir = Path(args.runs) / f"measure-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    run_dir.mkdir(parents=True, exist_ok=False)
    recorded = _command_line()
    common = [sys.executable, "-m", "skippipe", *(["-v"] if args.verbose else []), "measure",
              "--nodes", f"0..{n - 1}", "--host", LOCAL_HOST, "--base-port", str(base),
              "--run-dir", str(run_dir), "--recorded-command", recorded, *_forwarded(args)]
    procs: dict[int, subprocess.Popen] = {}
    old = signal.signal(signal.SIGTERM, _on_sigterm)
    say = lambda line: print(line, flush=True)  # noqa: E731
    try:
        for i in range(n):
            with open(run_dir / f"node-{i}.log", "wb") as log:
                procs[i] = subprocess.Popen(
                    [*common, "--node-id", str(i)], stdout=None if i == 0 else log, stderr=log,
                    stdin=subprocess.DEVNULL, start_new_session=True,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"})
        tmp = run_dir / "processes.json.tmp"
        tmp.write_text(json.dumps({str(i): p.pid for i, p in procs.items()}))
        os.replace(tmp, run_dir / "processes.json")
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
            _stop(procs)
        finally:
            signal.signal(signal.SIGINT, old_int)
            signal.signal(signal.SIGTERM, old)


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


def _stop(procs: dict[int, subprocess.Popen]) -> None:
    """Stop every process we started that still runs (their sessions), and reap them all."""
    stop_sessions(procs.values(), STOP_GRACE_S)
