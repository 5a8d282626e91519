"""Launcher behind `./run.sh FIRST LAST SETTING MB`: starts node processes FIRST..LAST-1 of a
scenario on this host, follows their event streams, prints one line per iteration and a summary.

It only ever signals the processes it started (each in its own session), stops all of them on
Ctrl-C or when one fails, and exits non-zero when a node failed unexpectedly.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from ..errors import SkipPipeError
from ..planning import PlanOptions, build_schedule
from ..util.procs import stop_sessions
from .emulation import Emulation
from .runconfig import RunConfig, events_dir, save_config
from ..scenario import Scenario, load_scenario
from ..schedule import ScheduleError, load_schedule, save_schedule
from ..timeline import read_jsonl

log = logging.getLogger(__name__)

POLL_S = 0.2  # how often the launcher looks at its children and their event files


@dataclasses.dataclass(frozen=True)
class LaunchResult:
    exit_code: int
    iterations: list[dict]  # per iteration: loss, measured_s (scenario seconds), predicted_s


def scenario_for(settings: str, samples_per_microbatch: int | None) -> Scenario:
    sc = load_scenario(settings)
    if samples_per_microbatch and samples_per_microbatch != sc.pipeline.samples_per_microbatch:
        sc = load_scenario(settings, {"pipeline.samples_per_microbatch": samples_per_microbatch})
    return sc


def ensure_schedule(sc: Scenario, variant: str, path: str | None, plan_time_limit_s: float,
                    say=print) -> Path:
    """The schedule for this scenario: the given file, the cached one, or a freshly built one."""
    if path:
        load_schedule(path, sc)
        return Path(path)
    suffix = "" if not sc.overrides else f"-mb{sc.pipeline.samples_per_microbatch}"
    cached = Path("schedules") / f"{sc.name}{suffix}.json"
    if cached.is_file():
        try:
            sched, _ = load_schedule(cached, sc)
            if variant in sched.variants and "baseline" in sched.variants:
                return cached
        except ScheduleError as e:
            say(f"re-planning: {e}")
    say(f"building schedule {cached} (ca-partial time limit {plan_time_limit_s:g} s)")
    sched = build_schedule(sc, PlanOptions(time_limit_s=plan_time_limit_s), progress=say)
    save_schedule(sched, cached)
    return cached


class Launcher:
    """Owns the node processes of one run on this host."""

    def __init__(self, cfg: RunConfig, nodes, rejoin: bool = False, command: tuple[str, ...] = ("node",),
                 extra: tuple[str, ...] = ()):
        self.cfg, self.nodes, self.rejoin = cfg, nodes, rejoin
        self.command, self.extra = command, extra + (("--rejoin",) if rejoin else ())
        self.procs: dict[int, subprocess.Popen] = {}

    def start(self) -> None:
        for n in self.nodes:
            suffix = "" if self.command == ("node",) and not self.rejoin else f"-{'rejoin' if self.rejoin else self.command[0]}"
            logf = open(Path(self.cfg.run_dir) / f"node-{n}{suffix}.log", "wb")
            self.procs[n] = subprocess.Popen(
                [sys.executable, "-m", "skippipe", *self.command, str(Path(self.cfg.run_dir) / "config.json"),
                 str(n), *self.extra],
                stdout=logf, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})
            logf.close()

    def failed(self) -> dict[int, int]:
        """Nodes that exited with an error (and were not meant to die by a failure plan)."""
        planned = set() if self.rejoin else self.cfg.planned_crashes()
        return {n: p.returncode for n, p in self.procs.items()
                if p.returncode not in (None, 0) and n not in planned}

    def poll(self) -> bool:
        """True while some node that is meant to finish still runs (a node planned to hang
        never finishes: stop() ends it)."""
        planned = set() if self.rejoin else self.cfg.planned_crashes()
        running = [n for n, p in self.procs.items() if p.poll() is None]
        return any(n not in planned for n in running)

    def stop(self) -> None:
        """SIGTERM every process we started (its whole session), SIGKILL stragglers."""
        stop_sessions(self.procs.values())


class Progress:
    """Reads the nodes' event files and turns finished iterations into lines."""

    def __init__(self, cfg: RunConfig, predicted_s: float):
        self.cfg, self.predicted_s = cfg, predicted_s
        self.rows: list[dict] = []

    def update(self, final: bool = False) -> list[dict]:
        events = read_jsonl(events_dir(self.cfg.run_dir))
        ends: dict[int, list[dict]] = {}
        for e in events:
            if e.get("event") == "iteration_end":
                ends.setdefault(e["iteration"], []).append(e)
        starts = [e["t"] for e in events if e.get("event") == "ready"]
        new = []
        while True:
            i = len(self.rows)
            got = ends.get(i, [])
            if not got or (len(got) < self.cfg.expected_nodes(i) and not final):
                break
            prev_end = self.rows[-1]["end_t"] if self.rows else max(starts, default=got[0]["t"])
            end_t = max(e["t"] for e in got)
            losses = [(e["loss_sum"], e["loss_count"]) for e in got if e.get("loss_count")]
            count = sum(c for _, c in losses)
            row = {"iteration": i, "end_t": end_t,
                   "loss": sum(s for s, _ in losses) / count if count else float("nan"),
                   "measured_s": Emulation.from_config(self.cfg).scenario_s(end_t - prev_end),
                   "predicted_s": self.predicted_s}
            self.rows.append(row)
            new.append(row)
        return new


def format_row(r: dict) -> str:
    return (f"iteration {r['iteration']:>3}  loss {r['loss']:7.4f}  measured {r['measured_s']:8.3f} s"
            f"  predicted {r['predicted_s']:8.3f} s  ratio {r['measured_s'] / r['predicted_s']:5.2f}")


def summary(rows: list[dict]) -> str:
    if not rows:
        return "no iteration finished"
    steady = rows[1:] or rows  # iteration 0 includes warm-up (first allocations, connections)
    med = statistics.median(r["measured_s"] for r in steady)
    pred = rows[0]["predicted_s"]
    return (f"summary: {len(rows)} iterations, loss {rows[0]['loss']:.4f} -> {rows[-1]['loss']:.4f}, "
            f"median iteration {med:.3f} s (scenario time), predicted {pred:.3f} s, "
            f"measured/predicted {med / pred:.2f}")


def run(cfg: RunConfig, nodes: range, predicted_s: float, timeout_s: float,
        say=print) -> LaunchResult:
    """Start the nodes, report progress until they finish, fail, time out or are interrupted."""
    save_config(cfg)
    events_dir(cfg.run_dir).mkdir(parents=True, exist_ok=True)
    launcher = Launcher(cfg, nodes)
    progress = Progress(cfg, predicted_s)
    code = 0
    deadline = time.monotonic() + timeout_s
    try:
        launcher.start()
        while launcher.poll():
            for row in progress.update():
                say(format_row(row))
            bad = launcher.failed()
            if bad:
                say(f"node(s) {sorted(bad)} failed (exit codes {sorted(bad.values())}); see "
                    f"{cfg.run_dir}/node-N.log; stopping the others")
                code = 1
                break
            if time.monotonic() > deadline:
                say(f"run did not finish within {timeout_s:.0f} s; stopping every node")
                code = 1
                break
            time.sleep(POLL_S)
        if not code and launcher.failed():
            bad = launcher.failed()
            say(f"node(s) {sorted(bad)} failed (exit codes {sorted(bad.values())}); see {cfg.run_dir}/node-N.log")
            code = 1
    except KeyboardInterrupt:
        say("interrupted: stopping every node this launcher started")
        code = 130
    finally:
        launcher.stop()
    for row in progress.update(final=True):
        say(format_row(row))
    Path(cfg.run_dir, "iterations.json").write_text(json.dumps(progress.rows, indent=1))
    return LaunchResult(code, progress.rows)


def rejoin(cfg: RunConfig, nodes: range, timeout_s: float, say=print) -> int:
    """Start restarted nodes into the running training of `cfg.run_dir`; wait for them."""
    launcher = Launcher(cfg, nodes, rejoin=True)
    deadline = time.monotonic() + timeout_s
    code = 0
    try:
        launcher.start()
        say(f"rejoining node(s) {list(nodes)} into {cfg.run_dir}")
        while launcher.poll():
            if time.monotonic() > deadline:
                say(f"rejoined node(s) did not finish within {timeout_s:.0f} s; stopping them")
                code = 1
                break
            time.sleep(POLL_S)
        if launcher.failed():
            say(f"rejoined node(s) {sorted(launcher.failed())} failed; see {cfg.run_dir}/node-N-rejoin.log")
            code = 1
    except KeyboardInterrupt:
        code = 130
    finally:
        launcher.stop()
    return code


def new_run_dir(base: str | Path, variant: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    d = Path(base) / f"{stamp}-{variant}-{os.getpid()}"
    d.mkdir(parents=True, exist_ok=False)
    return d


def check_ports(peers: dict[int, tuple[str, int]], nodes: range) -> None:
    """One clear error for a port this host's nodes need that something else holds."""
    for n in nodes:
        host, port = peers[n]
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):  # the transport binds both
            with socket.socket(socket.AF_INET, kind) as s:
                try:
                    s.bind((host, port))
                except OSError as e:
                    raise SkipPipeError(f"port {host}:{port} for node {n} is not free ({e.strerror}); "
                                        f"choose another --base-port") from None


def check_range(first: int, last: int, sc: Scenario) -> range:
    n = len(sc.nodes)
    if not 0 <= first < last <= n:
        raise SkipPipeError(f"node range {first}..{last - 1} is outside the scenario's nodes 0..{n - 1}")
    return range(first, last)
