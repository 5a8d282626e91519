"""A multi-host run's output (runtime/node/gather.py): node 0's host prints every data node's loss
per iteration and the summary, another host says its lines hold its own data nodes only; under
torchrun rank 0 prints the same and writes iterations.json."""

import json
import re
import signal
from pathlib import Path

import pytest

from conftest import SETTINGS
from runtime_util import finish, run_torchrun, start_skippipe
from skippipe.runtime.launch.supervisor import Progress, summary
from skippipe.runtime.node.runconfig import RunConfig
from skippipe.timeline import read_jsonl
from skippipe.util.ports import free_port
from skippipe.util.procs import signal_session
from test_faults import schedule_file  # noqa: F401 (the hand-built tiny schedule, a fixture)

RUN_DEADLINE_S = 240
DATA_NODES = (0, 1)  # of the hand-built schedule (tests/schedules.py)


def _cfg(tmp_path, local_nodes) -> RunConfig:
    return RunConfig(
        run_dir=str(tmp_path),
        scenario_path="",
        scenario_overrides={},
        schedule_path="",
        variant="random",
        iterations=2,
        time_scale=1.0,
        emulate_compute=True,
        emulate_links=True,
        peers={n: ("127.0.0.1", 1 + n) for n in range(6)},
        local_nodes=local_nodes,
        data_nodes=(0, 3),
        epoch=0.0,
        seed=0,
        peer_timeout_s=1.0,
        connect_timeout_s=1.0,
    )


def _events(tmp_path, events: list[dict]) -> None:
    (tmp_path / "events").mkdir(parents=True)
    with open(tmp_path / "events" / "node-0.jsonl", "w") as f:
        for e in events:
            f.write(json.dumps({"node": 0, **e}) + "\n")


def test_the_first_host_waits_for_and_adds_every_data_nodes_loss(tmp_path):
    end = {"event": "iteration_end", "iteration": 0, "loss_sum": 12.0, "loss_count": 2, "t": 1.0}
    report = {"event": "report", "sender": 3, "iteration": 0, "loss_sum": 6.0, "loss_count": 2, "t": 1.5}
    _events(tmp_path, [{"event": "ready", "t": 0.0}, end])
    progress = Progress(_cfg(tmp_path, (0,)), predicted_s=1.0)
    assert progress.update() == []  # node 3 (another host's data node) has not reported yet
    with open(tmp_path / "events" / "node-0.jsonl", "a") as f:
        f.write(json.dumps({"node": 0, **report}) + "\n")
    [row] = progress.update()
    assert row["loss"] == pytest.approx(18.0 / 4) and row["end_t"] == 1.5
    assert summary(progress.rows, progress.cfg).startswith("summary: 1 iterations, loss 4.5000")


def test_another_host_says_its_losses_are_its_own(tmp_path):
    end = {"event": "iteration_end", "iteration": 0, "loss_sum": 6.0, "loss_count": 2, "t": 1.0}
    _events(tmp_path, [{"event": "ready", "t": 0.0}, end])
    progress = Progress(_cfg(tmp_path, (3,)), predicted_s=1.0)
    [row] = progress.update()
    assert row["loss"] == 3.0
    assert summary(progress.rows, progress.cfg).endswith(
        "; losses of this host's data nodes [3] only (node 0's host prints the whole run's)"
    )


def _whole_run_losses(runs: Path) -> list[float]:
    """Per iteration, the loss over every data node's iteration_end, from all run directories."""
    ends = [e for d in runs.iterdir() for e in read_jsonl(d / "events") if e["event"] == "iteration_end"]
    its = sorted({e["iteration"] for e in ends})
    return [
        sum(e["loss_sum"] for e in ends if e["iteration"] == i)
        / sum(e["loss_count"] for e in ends if e["iteration"] == i)
        for i in its
    ]


def _printed_losses(text: str) -> list[float]:
    """The losses of the printed iteration lines (torchrun's --tee prefixes them with the rank)."""
    return [float(m) for m in re.findall(r"^(?:\[\w+\]:)?iteration +\d+ +loss +(\S+)", text, re.M)]


@pytest.mark.swarm
def test_two_launchers_the_first_prints_the_whole_runs_loss(tmp_path, schedule_file):  # noqa: F811
    """The hand-built schedule's data nodes are 0 and 1: one launcher runs node 0, the other
    nodes 1..5, so each holds one data node. The first prints the loss over both."""
    port = free_port()
    env = {"SKIPPIPE_RUN_KEY": "7c" * 32}
    common = [
        "random",
        "0",
        "--scenario",
        str(SETTINGS / "tiny.toml"),
        "--schedule",
        str(schedule_file),
        "--rendezvous",
        f"127.0.0.1:{port}",
        "--base-port",
        "0",
        "--iterations",
        "2",
        "--runs",
        str(tmp_path / "runs"),
    ]
    procs = [
        start_skippipe(["run", first, last, *common], tmp_path, env)
        for first, last in (("0", "1"), ("1", "6"))
    ]
    try:
        first, second = (finish(p, RUN_DEADLINE_S) for p in procs)
    finally:  # the first timed out: the second must not outlive the test
        for p in procs:
            if p.poll() is None:
                signal_session(p, signal.SIGKILL)
                p.communicate()
    both = f"first launcher:\n{first.stdout}\nsecond launcher:\n{second.stdout}"
    assert first.returncode == second.returncode == 0, both
    whole = _whole_run_losses(tmp_path / "runs")
    assert len(whole) == 2
    assert _printed_losses(first.stdout) == pytest.approx(whole, abs=1e-4)
    run0 = next(d for d in (tmp_path / "runs").iterdir() if (d / "events" / "node-0.jsonl").exists())
    assert [r["loss"] for r in json.loads((run0 / "iterations.json").read_text())] == pytest.approx(whole)
    assert "summary: 2 iterations" in first.stdout and "only" not in first.stdout
    assert "losses of this host's data nodes [1] only" in second.stdout


@pytest.mark.swarm
def test_under_torchrun_rank_0_prints_the_whole_run(tmp_path, schedule_file):  # noqa: F811
    node_args = [str(SETTINGS / "tiny.toml"), "--variant", "random", "--schedule", str(schedule_file)]
    r = run_torchrun(
        tmp_path,
        [*node_args, "--iterations", "2"],
        RUN_DEADLINE_S,
        ("--tee", "3", "--local-ranks-filter", "0"),
    )
    assert r.returncode == 0, r.stdout
    whole = _whole_run_losses(tmp_path / "runs")
    run0 = next((tmp_path / "runs").glob("*-node0-*"))
    rows = json.loads((run0 / "iterations.json").read_text())
    assert [row["loss"] for row in rows] == pytest.approx(whole) and len(rows) == 2
    assert _printed_losses(r.stdout) == pytest.approx(whole, abs=1e-4), r.stdout
    assert r.stdout.count("summary: 2 iterations") == 1, r.stdout
