"""Launcher behind `./run.sh FIRST LAST SETTING MB` (prepared by prepare.py): starts node
processes FIRST..LAST-1 of a scenario on this host, follows their event streams, prints one line
per iteration and a summary.

The nodes are forked from a server that imported their code once (forks.py). It only ever
signals the processes it started (each in its own session), stops all of them on Ctrl-C,
SIGTERM, SIGHUP or when one fails (and the kernel stops them if the launcher itself is
killed), and exits non-zero when a node failed unexpectedly, when its nodes stopped for want of
a quorum (quorum.py: one line says which stages or what majority was lost), when no iteration
finished, or when the nodes ended the run disagreeing on which nodes are dead (a split). On
node 0's host the lines hold every data node's loss, also those of other hosts (gather.py);
another host's summary says it covers its own data nodes only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import statistics
import threading
from collections.abc import Iterator
from pathlib import Path

from ...timeline import read_jsonl
from ...util.procs import Children, Terminated, interrupted_exit_code, supervised, wait_until
from ..node.emulation import Emulation
from ..node.quorum import QUORUM_EXIT
from ..node.runconfig import RunConfig, events_dir, save_config
from . import forks

log = logging.getLogger(__name__)

POLL_S = 0.2  # how often the launcher looks at its children and their event files
QUORUM_GRACE_S = 10.0  # beyond one peer timeout: a stopping node saves its stage and exits


@dataclasses.dataclass(frozen=True)
class LaunchResult:
    exit_code: int
    iterations: list[dict]  # per iteration: loss, measured_s (scenario seconds), predicted_s


class Launcher:
    """Owns the node processes of one run on this host (node id -> child process)."""

    def __init__(
        self,
        cfg: RunConfig,
        nodes,
        rejoin: bool = False,
        command: tuple[str, ...] = ("node",),
        extra: tuple[str, ...] = (),
    ):
        self.cfg, self.nodes, self.rejoin = cfg, nodes, rejoin
        self.command, self.extra = command, extra + (("--rejoin",) if rejoin else ())
        self.children = Children()

    def start(self) -> None:
        config = str(Path(self.cfg.run_dir) / "config.json")
        for n in self.nodes:
            args = [*self.command, config, str(n), *self.extra]
            log = Path(self.cfg.run_dir) / f"node-{n}{self._log_suffix()}.log"
            self.children.adopt(n, forks.start(args, log))

    def _log_suffix(self) -> str:
        if self.rejoin:
            return "-rejoin"
        return "" if self.command == ("node",) else f"-{self.command[0]}"

    def _planned(self) -> set[int]:
        """Nodes a failure plan crashes or hangs (a rejoined node is not planned to)."""
        return set() if self.rejoin else self.cfg.planned_crashes()

    def failed(self) -> dict[int, int]:
        """Nodes that exited with an error (and were not meant to die by a failure plan)."""
        return self.children.failed(self._planned())

    def poll(self) -> bool:
        """True while some node that is meant to finish still runs (a node planned to hang
        never finishes: stop() ends it)."""
        planned = self._planned()
        return any(n not in planned for n in self.children.running())

    def done(self) -> bool:
        """Every node meant to finish has, or one failed."""
        return not self.poll() or bool(self.failed())

    def wait(self, timeout_s: float, tick=None) -> bool:
        """Poll until done() (calling `tick` on the way); False at the deadline."""
        return wait_until(self.done, timeout_s, POLL_S, tick)


class Progress:
    """Reads the nodes' event files and turns finished iterations into lines (and deaths into
    news: crashes and evictions reach the console, not only the node logs)."""

    def __init__(self, cfg: RunConfig, predicted_s: float):
        self.cfg, self.predicted_s = cfg, predicted_s
        self.rows: list[dict] = []
        self.events: list[dict] = []
        self.told_dead: set[int] = set()
        self.read: set[tuple] = set()  # (node, t, event) of every event news() has looked at

    def news(self) -> list[str]:
        """One line per node first declared dead (or back), or moved, since the last call."""
        lines = []
        for e in self.events:
            key = (e.get("node"), e.get("t"), e.get("event"))
            if key in self.read:
                continue
            self.read.add(key)
            if e.get("event") == "peer_dead":
                for p in set(e["peers"]) - self.told_dead:
                    self.told_dead.add(p)
                    lines.append(
                        f"node {p} declared dead by node {e['node']} in iteration "
                        f"{e.get('iteration')}: {e.get('why')}"
                    )
            elif e.get("event") == "rebalance":
                rates = ", ".join(f"{s}: {r:g}" for s, r in e["throughputs"].items())
                lines.append(
                    f"rebalancing: node {e['moved']} moves from stage {e['source']} to stage "
                    f"{e['target']} at iteration {e['at']} (stage throughputs, forwards/s: {rates})"
                )
            elif e.get("event") == "rejoined" and e["node"] in self.told_dead:
                self.told_dead.discard(e["node"])
                lines.append(f"node {e['node']} rejoined at iteration {e.get('iteration')}")
        return lines

    def split(self) -> str | None:
        """Why the nodes that finished disagree on membership (None when they agree): this
        host's nodes and every node whose view one of them heard (gather.py)."""
        seen = {
            e["sender"]: tuple(e.get("dead", ())) for e in self.events if e.get("event") == "peer_finished"
        }
        seen.update(
            {e["node"]: tuple(e.get("dead", ())) for e in self.events if e.get("event") == "finished"}
        )
        if len(set(seen.values())) <= 1:
            return None
        views = ", ".join(f"node {n}: {list(d) or 'none'}" for n, d in sorted(seen.items()))
        return f"nodes disagree on which nodes are dead ({views}): the run split"

    def quorum_lost(self) -> str | None:
        """Why this host's nodes stopped for want of a quorum (None when none did)."""
        lost = [e for e in read_jsonl(events_dir(self.cfg.run_dir)) if e.get("event") == "quorum_lost"]
        if not lost:
            return None
        why, nodes = sorted({e["why"] for e in lost}), sorted({e["node"] for e in lost})
        return f"the run lost its quorum and node(s) {', '.join(map(str, nodes))} stopped: {' / '.join(why)}"

    @property
    def first_host(self) -> bool:
        """Whether this launcher runs node 0: it gathers the other hosts' losses."""
        return 0 in self.cfg.local_nodes

    def _remote(self, events: list[dict]) -> dict[int, dict[int, dict]]:
        """Iteration -> other hosts' data node -> its report, as this host's nodes heard it."""
        out: dict[int, dict[int, dict]] = {}
        if self.first_host:
            for e in events:
                if e.get("event") == "report" and e["sender"] not in self.cfg.local_nodes:
                    out.setdefault(e["iteration"], {}).setdefault(e["sender"], e)
        return out

    def _awaited(self, events: list[dict]) -> set[int]:
        """Other hosts' data nodes whose reports the first host waits for (not the dead)."""
        if not self.first_host:
            return set()
        dead = {p for e in events if e.get("event") == "peer_dead" for p in e["peers"]}
        return set(self.cfg.data_nodes) - set(self.cfg.local_nodes) - dead

    def update(self, final: bool = False) -> list[dict]:
        self.events = events = read_jsonl(events_dir(self.cfg.run_dir))
        ends: dict[int, list[dict]] = {}
        for e in events:
            if e.get("event") == "iteration_end":
                ends.setdefault(e["iteration"], []).append(e)
        starts = [e["t"] for e in events if e.get("event") == "ready"]
        remote, awaited = self._remote(events), self._awaited(events)
        new = []
        while True:
            i = len(self.rows)
            got, heard = ends.get(i, []), list(remote.get(i, {}).values())
            if not got or (
                not final
                and (len(got) < self.cfg.expected_nodes(i) or awaited - {e["sender"] for e in heard})
            ):
                break
            prev_end = self.rows[-1]["end_t"] if self.rows else max(starts, default=got[0]["t"])
            end_t = max(e["t"] for e in got + heard)
            losses = [(e["loss_sum"], e["loss_count"]) for e in got + heard if e.get("loss_count")]
            count = sum(c for _, c in losses)
            row = {
                "iteration": i,
                "end_t": end_t,
                "loss": sum(s for s, _ in losses) / count if count else float("nan"),
                "measured_s": Emulation.from_config(self.cfg).scenario_s(end_t - prev_end),
                "predicted_s": self.predicted_s,
            }
            self.rows.append(row)
            new.append(row)
        return new


def format_row(r: dict) -> str:
    return (
        f"iteration {r['iteration']:>3}  loss {r['loss']:7.4f}  measured {r['measured_s']:8.3f} s"
        f"  predicted {r['predicted_s']:8.3f} s  ratio {r['measured_s'] / r['predicted_s']:5.2f}"
    )


def summary(rows: list[dict], cfg: RunConfig | None = None) -> str:
    """The run's summary line; on a host other than node 0's it says whose losses it holds."""
    if not rows:
        return "no iteration finished"
    mine = None  # on a host without node 0: this host's data nodes
    if cfg is not None and 0 not in cfg.local_nodes:
        mine = sorted(set(cfg.data_nodes) & set(cfg.local_nodes))
    steady = rows[1:] or rows  # iteration 0 includes warm-up (first allocations, connections)
    med = statistics.median(r["measured_s"] for r in steady)
    pred = rows[0]["predicted_s"]
    return (
        f"summary: {len(rows)} iterations, loss {rows[0]['loss']:.4f} -> {rows[-1]['loss']:.4f}, "
        f"median iteration {med:.3f} s (scenario time), predicted {pred:.3f} s, "
        f"measured/predicted {med / pred:.2f}"
        + (
            ""
            if mine is None
            else f"; losses of this host's data nodes {mine} only (node 0's host prints the whole run's)"
        )
    )


def run(cfg: RunConfig, nodes: range, predicted_s: float, timeout_s: float, say=print) -> LaunchResult:
    """Start the nodes, report progress until they finish, fail, time out or are interrupted."""
    save_config(cfg)
    events_dir(cfg.run_dir).mkdir(parents=True, exist_ok=True)
    launcher = Launcher(cfg, nodes)
    progress = Progress(cfg, predicted_s)

    def report(final: bool = False) -> None:
        _tell(progress, say, final)

    code = 0
    with supervised(launcher.children):  # however this ends, every node is stopped
        try:
            launcher.start()
            if not launcher.wait(timeout_s, report):
                say(f"run did not finish within {timeout_s:.0f} s; stopping every node")
                code = 1
            elif launcher.failed():
                code = _failed(cfg, launcher, progress, say)
        except (KeyboardInterrupt, Terminated) as e:
            say(
                f"{'interrupted' if isinstance(e, KeyboardInterrupt) else e}: stopping every node "
                f"this launcher started"
            )
            code = interrupted_exit_code(e)
    report(final=True)
    Path(cfg.run_dir, "iterations.json").write_text(json.dumps(progress.rows, indent=1))
    return LaunchResult(verdict(code, progress, say), progress.rows)


def _tell(progress: Progress, say, final: bool = False) -> None:
    """Print the iterations that finished and the news since the last call."""
    for row in progress.update(final):
        say(format_row(row))
    for line in progress.news():
        say(line)


@contextlib.contextmanager
def followed(cfg: RunConfig, predicted_s: float, say=print) -> Iterator[Progress]:
    """Print a run's iterations and news as they happen, from a thread, while the body runs a
    node in this process (the torchrun form's node 0: it hears every data node, gather.py);
    at the end the rest, and iterations.json."""
    progress, stop = Progress(cfg, predicted_s), threading.Event()

    def follow() -> None:
        while not stop.wait(POLL_S):
            _tell(progress, say)

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    try:
        yield progress
    finally:
        stop.set()
        thread.join()
        _tell(progress, say, final=True)
        Path(cfg.run_dir, "iterations.json").write_text(json.dumps(progress.rows, indent=1))


def _failed(cfg: RunConfig, launcher: Launcher, progress: Progress, say) -> int:
    """A node failed: when for want of a quorum, the others of this side stop on their own
    within one peer timeout (writing their state); wait for them, then say why in one line."""
    bad = launcher.failed()
    if set(bad.values()) == {QUORUM_EXIT}:
        wait_until(lambda: not launcher.poll(), cfg.peer_timeout_s + QUORUM_GRACE_S, POLL_S)
        why = progress.quorum_lost()
        if why is not None:
            say(f"error: {why}")
            return QUORUM_EXIT
    say(
        f"node(s) {sorted(bad)} failed (exit codes {sorted(bad.values())}); see "
        f"{cfg.run_dir}/node-N.log; stopping the others"
    )
    return 1


def verdict(code: int, progress: Progress, say) -> int:
    """The run's exit code: a clean exit of every node is not enough when the run split or
    finished no iteration."""
    if code:
        return code
    why = progress.split() or (None if progress.rows else "no iteration finished")
    if why:
        say(f"error: {why}")
        return 1
    return 0


def rejoin(cfg: RunConfig, nodes: range, timeout_s: float, say=print) -> int:
    """Start restarted nodes into the running training of `cfg.run_dir`; wait for them."""
    launcher = Launcher(cfg, nodes, rejoin=True)
    code = 0
    with supervised(launcher.children):
        try:
            launcher.start()
            say(f"rejoining node(s) {list(nodes)} into {cfg.run_dir}")
            if not launcher.wait(timeout_s):
                say(f"rejoined node(s) did not finish within {timeout_s:.0f} s; stopping them")
                code = 1
            elif launcher.failed():
                say(
                    f"rejoined node(s) {sorted(launcher.failed())} failed; see {cfg.run_dir}/node-N-rejoin.log"
                )
                code = 1
        except (KeyboardInterrupt, Terminated) as e:
            code = interrupted_exit_code(e)
    return code
