"""The paper's workflow on separate addresses: three network namespaces ("hosts") joined by veth
links to a bridge in a fourth, on a private test subnet. `measure` runs across them, the measured
scenario is planned, and six nodes (two per host) train through `--rendezvous`: the loss equals
the same schedule on loopback. Then a partition: one host's link goes down mid-run, and only the
majority trains on.

Root only (skipped with the reason where namespaces cannot be made). Everything made here
(namespaces, links, processes) is removed at the end, also on failure."""

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, SETTINGS
from skippipe.recovery import quorum_verdict as verdict
from skippipe.runtime.node.quorum import QUORUM_EXIT
from skippipe.scenario import load_scenario
from skippipe.schedule_file import load_schedule
from skippipe.timeline import read_jsonl
from skippipe.util.procs import signal_session

# private test subnet, host i at SUBNET.(i+1)/24; per pid: ports are locked per address (util/ports.py)
SUBNET = f"10.231.{os.getpid() % 250}"
HOSTS = 3
PER_HOST = 2  # nodes per host
BASE_PORT = 29500  # every host has its own address, so each may use the same ports
RENDEZVOUS_PORT = 29400
STEP_DEADLINE_S = 300  # one command (measure, a run) on 2 shared cores, 6 processes importing torch
PLAN_S = 5

pytestmark = [pytest.mark.swarm, pytest.mark.slow]


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


class Hosts:
    """The namespaces and links of one test run; names carry the pid (concurrent runs differ)."""

    def __init__(self):
        tag = f"sp{os.getpid()}"
        self.bridge = f"{tag}br"
        self.names = [f"{tag}h{i}" for i in range(HOSTS)]
        self.ports = [f"{tag}p{i}" for i in range(HOSTS)]  # bridge-side ends, in the bridge namespace
        self.procs: list[subprocess.Popen] = []

    def address(self, host: int) -> str:
        return f"{SUBNET}.{host + 1}"

    def create(self) -> None:
        self._must("netns", "add", self.bridge)
        self._must("-n", self.bridge, "link", "add", "br0", "type", "bridge")
        self._must("-n", self.bridge, "link", "set", "br0", "up")
        for i, (ns, port) in enumerate(zip(self.names, self.ports)):
            self._must("netns", "add", ns)
            self._must(
                "link", "add", port, "netns", self.bridge, "type", "veth", "peer", "name", "eth0", "netns", ns
            )
            self._must("-n", self.bridge, "link", "set", port, "master", "br0", "up")
            self._must("-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", "eth0")
            self._must("-n", ns, "link", "set", "eth0", "up")
            self._must("-n", ns, "link", "set", "lo", "up")

    def link(self, host: int, state: str) -> None:
        """Take host's link up or down at the bridge: a partition, its processes keep running."""
        self._must("-n", self.bridge, "link", "set", self.ports[host], state)

    def start(self, host: int | None, args: list[str], cwd, env: dict | None = None) -> subprocess.Popen:
        """`python -m skippipe ARGS` in host's namespace (None: this one), in its own session."""
        where = [] if host is None else ["ip", "netns", "exec", self.names[host]]
        proc = subprocess.Popen(
            [*where, sys.executable, "-m", "skippipe", *args],
            cwd=cwd,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def remove(self) -> None:
        """Stop every process started here, then delete the namespaces (and with them the links)."""
        for p in self.procs:
            if p.poll() is None:
                signal_session(p, signal.SIGKILL)
            p.communicate()
        for ns in [*self.names, self.bridge]:
            _ip("netns", "del", ns)

    def _must(self, *args: str) -> None:
        r = _ip(*args)
        if r.returncode:
            raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip()}")


@pytest.fixture(scope="module")
def hosts():
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2's ip")
    made = Hosts()
    try:
        made.create()
    except (RuntimeError, OSError) as e:
        made.remove()
        pytest.skip(f"cannot create network namespaces here: {e}")
    try:
        yield made
    finally:
        made.remove()
    assert not set(made.names) & set(_ip("netns", "list").stdout.split())


def _outputs(procs, deadline_s: float) -> list[tuple[int, str]]:
    """Each process's exit code and output, all waited on within one deadline."""
    end = time.monotonic() + deadline_s
    results = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=max(1.0, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            signal_session(p, signal.SIGKILL)
            out, _ = p.communicate()
            raise AssertionError(f"{' '.join(p.args)} did not finish in {deadline_s} s:\n{out}") from None
        results.append((p.returncode, out))
    return results


def _node_of(host: int, k: int) -> int:
    return host * PER_HOST + k


def _measure(hosts: Hosts, work) -> str:
    """`measure` across the hosts: the scenario file node 0 writes."""
    peers = {
        _node_of(h, k): f"{hosts.address(h)}:{BASE_PORT + k}" for h in range(HOSTS) for k in range(PER_HOST)
    }
    (work / "peers.json").write_text(json.dumps(peers))
    out = work / "measured.toml"
    coordinator = [
        "--template",
        str(SETTINGS / "tiny.toml"),
        "--out",
        str(out),
        "--repeat",
        "1",
        "--warmup",
        "0",
        "--payload-mib",
        "0.25",
    ]
    procs = [
        hosts.start(
            h,
            [
                "measure",
                "--node-id",
                str(_node_of(h, k)),
                "--peers",
                "peers.json",
                "--timeout",
                str(STEP_DEADLINE_S),
                *(coordinator if h == k == 0 else []),
            ],
            work,
        )
        for h in range(HOSTS)
        for k in range(PER_HOST)
    ]
    for code, text in _outputs(procs, STEP_DEADLINE_S):
        assert code == 0, text
    return str(out)


def _plan(scenario: str, work) -> str:
    out = work / "measured.json"
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "create_schedule.py"),
            scenario,
            "--out",
            str(out),
            "--time-limit",
            str(PLAN_S),
            "--workers",
            "1",
            "--quiet",
        ],
        cwd=work,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=STEP_DEADLINE_S,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return str(out)


def _run_args(first: int, last: int, scenario: str, schedule: str, runs: str, *extra: str) -> list[str]:
    return [
        "run",
        str(first),
        str(last),
        "ca-partial",
        "0",
        "--scenario",
        scenario,
        "--schedule",
        schedule,
        "--runs",
        runs,
        "--iterations",
        "2",
        *extra,
    ]


def _losses(runs) -> list[float]:
    """Each iteration's loss over every data node of the run, from all its run directories."""
    ends = [e for d in runs.iterdir() for e in read_jsonl(d / "events") if e["event"] == "iteration_end"]
    its = sorted({e["iteration"] for e in ends})
    return [
        sum(e["loss_sum"] for e in ends if e["iteration"] == i)
        / sum(e["loss_count"] for e in ends if e["iteration"] == i)
        for i in its
    ]


def _train_across(hosts: Hosts, work, scenario: str, schedule: str, runs: str, *extra: str):
    """Start one launcher per host, nodes 2h and 2h+1, meeting at host 0's rendezvous."""
    env = {"SKIPPIPE_RUN_KEY": secrets.token_hex(32)}
    rendezvous = f"{hosts.address(0)}:{RENDEZVOUS_PORT}"
    return [
        hosts.start(
            h,
            _run_args(
                _node_of(h, 0),
                _node_of(h, PER_HOST),
                scenario,
                schedule,
                runs,
                "--rendezvous",
                rendezvous,
                "--base-port",
                str(BASE_PORT),
                *extra,
            ),
            work,
            env,
        )
        for h in range(HOSTS)
    ]


def test_measure_plan_train_across_namespaces_equals_loopback(hosts, tmp_path):
    scenario = _measure(hosts, tmp_path)
    schedule = _plan(scenario, tmp_path)
    launchers = _train_across(hosts, tmp_path, scenario, schedule, "runs-hosts")
    results = _outputs(launchers, STEP_DEADLINE_S)
    for code, text in results:
        assert code == 0, text
        assert "all 6 nodes registered, on 3 address(es)" in text
    assert "(served here)" in results[0][1]

    from skippipe.util.ports import free_port_range

    loopback = hosts.start(
        None,
        _run_args(0, 6, scenario, schedule, "runs-loopback", "--base-port", str(free_port_range(6))),
        tmp_path,
    )
    [(code, text)] = _outputs([loopback], STEP_DEADLINE_S)
    assert code == 0, text
    across, local = _losses(tmp_path / "runs-hosts"), _losses(tmp_path / "runs-loopback")
    assert len(across) == 2 and across == local, (across, local)


def _wait_for(predicate, deadline_s: float, what: str) -> None:
    end = time.monotonic() + deadline_s
    while not predicate():
        assert time.monotonic() < end, f"no {what} within {deadline_s} s"
        time.sleep(0.1)  # polling files other processes write


def _events(runs) -> list[dict]:
    return [e for d in runs.glob("*/events") for e in read_jsonl(d)] if runs.exists() else []


def _reachable(hosts: Hosts, src: int, dst: int) -> bool:
    """Whether a TCP connection from host src reaches host dst (a refused port answers too)."""
    probe = (
        f"import socket\ntry: socket.create_connection(({hosts.address(dst)!r}, 9), timeout=2)\n"
        f"except ConnectionRefusedError: pass\nexcept OSError: raise SystemExit(1)"
    )
    return (
        subprocess.run(
            ["ip", "netns", "exec", hosts.names[src], sys.executable, "-c", probe], timeout=30
        ).returncode
        == 0
    )


def _cut_host(schedule) -> int:
    """A host other than the rendezvous's whose loss leaves the others every stage of
    ca-partial's allocation (the planned allocation depends on machine speed)."""
    sched, _ = load_schedule(schedule, load_scenario(SETTINGS / "tiny.toml"))
    allocation = sched.allocation_of("ca-partial")
    ok = [
        h
        for h in range(HOSTS - 1, 0, -1)
        if verdict(HOSTS * PER_HOST, {_node_of(h, k) for k in range(PER_HOST)}, allocation) is None
    ]
    if not ok:
        pytest.skip(f"allocation {allocation}: every host's loss takes a whole stage")
    return ok[0]


def test_a_partition_stops_the_minority_and_the_majority_finishes(hosts, tmp_path, tiny_schedule):
    """One host's link goes down after iteration 1 (its processes keep running). Each side
    misses the other's heartbeats and declares it dead after the peer timeout. The cut host's
    two nodes hold 2 of 6 nodes, no majority: they stop (quorum.py) and their launcher exits
    non-zero with one line. The four others hold every stage and the majority: they finish
    all 8 iterations, agree on who is dead, and exit 0. No split brain."""
    runs = tmp_path / "runs"
    cut = _cut_host(tiny_schedule)
    launchers = _train_across(
        hosts,
        tmp_path,
        str(SETTINGS / "tiny.toml"),
        str(tiny_schedule),
        "runs",
        "--iterations",
        "8",
        "--peer-timeout",
        "5",
    )
    minority = {_node_of(cut, k) for k in range(PER_HOST)}
    majority = set(range(HOSTS * PER_HOST)) - minority
    try:
        _wait_for(
            lambda: any(e["event"] == "iteration_end" and e["iteration"] == 1 for e in _events(runs)),
            STEP_DEADLINE_S,
            "iteration 1",
        )
        hosts.link(cut, "down")
        assert not _reachable(hosts, cut, 0)
        results = _outputs(launchers, STEP_DEADLINE_S)
    finally:
        hosts.link(cut, "up")
    # the test's own network mends: the port needs a moment to carry traffic again
    _wait_for(lambda: _reachable(hosts, cut, 0), 20, "route back to the cut host")
    for h, (code, text) in enumerate(results):
        if h == cut:
            assert code == QUORUM_EXIT, text
            errors = [line for line in text.splitlines() if line.startswith("error:")]
            stopped = ", ".join(map(str, sorted(minority)))
            assert len(errors) == 1, text
            assert errors[0].startswith(f"error: the run lost its quorum and node(s) {stopped} stopped: "), (
                text
            )
            # which reason each cut node saw first depends on the order of its verdicts (a
            # stage whose node sits across the cut, or the majority): either names what is lost
            assert "no live node" in errors[0] or "not a majority" in errors[0], text
        else:
            assert code == 0, text
    events = _events(runs)
    finished = {e["node"]: set(e["dead"]) for e in events if e["event"] == "finished"}
    assert finished == {n: minority for n in majority}
    assert {e["node"] for e in events if e["event"] == "quorum_lost"} == minority
    declared = [e for e in events if e["event"] == "peer_dead"]
    # across the cut only silence is evidence; a cut node that stopped first closes its port,
    # which its host peer rightly takes as a death
    assert all(
        e["why"].startswith("silent for more than 5 s")
        for e in declared
        if any((e["node"] in minority) != (p in minority) for p in e["peers"])
    )
    last = {e["node"] for e in events if e["event"] == "iteration_end" and e["iteration"] == 7}
    assert last == majority  # only the majority trained on
