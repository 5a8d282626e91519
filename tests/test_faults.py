"""Training survives failures: kill -9 of a node in each phase, a hang, survivors exit cleanly,
no process is left behind. Uses a hand-built tiny schedule (no planner needed)."""

import dataclasses
import json
import math
import time

import pytest
import torch

from conftest import SETTINGS
from runtime_util import alive, finish, free_base_port, run_skippipe, start_skippipe
from schedules import make_paths, make_schedule, timed_schedule, tiny
from skippipe.failures import (
    DEFAULT_SLOW_FACTOR,
    Condition,
    FailurePlanError,
    FailureSpec,
    parse_failures,
    parse_spec,
    random_plan,
)
from skippipe.planner.families import family_variant
from skippipe.runtime.node.runconfig import RunConfig, load_config, save_config
from skippipe.schedule import VariantSchedule
from skippipe.schedule_file import save_schedule
from skippipe.timeline import read_jsonl

RUN_DEADLINE_S = 240
PEER_TIMEOUT_S = 3.0  # detection deadline in these tests (wall seconds)


@pytest.fixture(scope="module")
def schedule_file(tmp_path_factory):
    sc = tiny()
    s = make_schedule(sc, make_paths())
    baseline = VariantSchedule(
        "baseline", make_paths([(g // 3, [(1, 2 + g % 2), (2, 4), (3, 5)]) for g in range(6)])
    )
    variants = {
        "random": s.variants["random"],
        "baseline": baseline,
        "ca-partial": timed_schedule(sc).variants["ca-partial"],
        "zb-h1": family_variant("zb-h1", sc, s.allocation),
    }  # split backward
    path = tmp_path_factory.mktemp("faults") / "tiny.json"
    save_schedule(dataclasses.replace(s, variants=variants), path)
    return path


def _train_with(tmp_path, schedule_file, fail: str, variant="random", seed=0):
    base = free_base_port(6, seed=seed)
    r = run_skippipe(
        [
            "run",
            "0",
            "6",
            variant,
            "0",
            "--scenario",
            str(SETTINGS / "tiny.toml"),
            "--schedule",
            str(schedule_file),
            "--iterations",
            "3",
            "--base-port",
            str(base),
            "--runs",
            str(tmp_path / "runs"),
            "--peer-timeout",
            str(PEER_TIMEOUT_S),
            "--fail",
            fail,
        ],
        cwd=tmp_path,
        timeout_s=RUN_DEADLINE_S,
    )
    runs = list((tmp_path / "runs").iterdir()) if (tmp_path / "runs").is_dir() else []
    assert runs, f"no run directory (exit {r.returncode}): {r.stdout}"
    return r, runs[0], read_jsonl(runs[0] / "events")


def _survivors_finished_cleanly(events, dead: int):
    pids = {e["node"]: e["pid"] for e in events if e["event"] == "ready"}
    finished = {e["node"] for e in events if e["event"] == "finished"}
    assert finished == set(range(6)) - {dead}
    assert not any(alive(p) for p in pids.values())


# every failed node leaves its stage a live node (quorum.py; tests/test_quorum.py loses a stage)
@pytest.mark.parametrize(
    "node,phase,variant",
    [
        (3, "forward", "random"),
        (1, "backward", "ca-partial"),
        (2, "averaging", "random"),
        (3, "backward", "zb-h1"),
    ],
)
@pytest.mark.swarm
def test_training_survives_kill_9(tmp_path, schedule_file, node, phase, variant):
    r, run_dir, events = _train_with(
        tmp_path,
        schedule_file,
        f"node={node},iteration=1,phase={phase},how=crash",
        variant,
        seed=1000 + 10 * node + len(variant),
    )  # distinct ports per case
    assert r.returncode == 0, r.stdout
    rows = json.loads((run_dir / "iterations.json").read_text())
    assert len(rows) == 3 and all(math.isfinite(x["loss"]) for x in rows)
    assert any(e["event"] == "fault" and e["node"] == node for e in events)
    assert {e["node"] for e in events if e["event"] == "peer_dead" and node in e["peers"]} >= set(
        range(6)
    ) - {node}
    _survivors_finished_cleanly(events, node)


@pytest.mark.swarm
def test_hung_node_is_detected_within_the_deadline(tmp_path, schedule_file):
    r, run_dir, events = _train_with(
        tmp_path, schedule_file, "node=3,iteration=1,phase=forward,how=hang", seed=9
    )
    assert r.returncode == 0, r.stdout
    hung_at = next(e["t"] for e in events if e["event"] == "fault" and e["node"] == 3)
    detected = [e["t"] for e in events if e["event"] == "peer_dead" and e["peers"] == [3] and e["node"] != 3]
    assert detected and min(detected) - hung_at < 2 * PEER_TIMEOUT_S
    dead_reports = {p for e in events if e["event"] == "peer_dead" and e["node"] != 3 for p in e["peers"]}
    assert dead_reports == {3}  # no live node is falsely declared dead
    _survivors_finished_cleanly(events, 3)


def _wait_for_event(run_parent, node: int, event: str, deadline_s: float):
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        for f in run_parent.glob(f"*/events/node-{node}.jsonl"):
            if f'"{event}"' in f.read_text():
                return f.parent.parent
        time.sleep(0.1)  # polling a file another process writes, until the deadline
    raise AssertionError(f"node {node} wrote no {event!r} event within {deadline_s} s")


@pytest.mark.swarm
def test_restarted_node_rejoins_with_its_stage_peers_weights(tmp_path, schedule_file):
    base = free_base_port(6, seed=11)
    main = start_skippipe(
        [
            "run",
            "0",
            "6",
            "random",
            "0",
            "--scenario",
            str(SETTINGS / "tiny.toml"),
            "--schedule",
            str(schedule_file),
            "--iterations",
            "10",
            "--time-scale",
            "8",
            "--base-port",
            str(base),
            "--runs",
            str(tmp_path / "runs"),
            "--checkpoint",
            "--peer-timeout",
            str(PEER_TIMEOUT_S),
            "--fail",
            "node=3,iteration=1,how=crash",
        ],
        cwd=tmp_path,
    )
    try:
        run_dir = _wait_for_event(tmp_path / "runs", 3, "fault", RUN_DEADLINE_S)
        back = run_skippipe(
            ["run", "3", "4", "random", "0", "--rejoin", str(run_dir)], cwd=tmp_path, timeout_s=RUN_DEADLINE_S
        )
    finally:
        r = finish(main, RUN_DEADLINE_S)
    assert back.returncode == 0, back.stdout
    assert r.returncode == 0, r.stdout
    events = read_jsonl(run_dir / "events")
    joined = [e for e in events if e["event"] == "rejoined"]
    assert joined and joined[0]["sponsor"] == 2  # node 2 is node 3's stage peer
    nodes = run_dir / "checkpoint" / "nodes"
    a = torch.load(nodes / "node-2" / "stage-1.pt", weights_only=True)
    b = torch.load(nodes / "node-3" / "stage-1.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # inference with failed nodes: through the live ones only, equal to single-process evaluation
    # with the same stages omitted (node 4 is stage 2's only node: stage 2 is jumped over)
    inf = run_skippipe(
        ["infer", str(run_dir), "--failed", "4", "--max-batches", "2"], cwd=tmp_path, timeout_s=RUN_DEADLINE_S
    )
    assert inf.returncode == 0, inf.stdout
    assert "stages omitted [2]" in inf.stdout
    diff = float(inf.stdout.split("relative difference")[1].split()[0])
    assert diff < 1e-4


def test_failure_specs():
    sc = tiny()
    f = parse_spec("node=3,iteration=1,phase=backward,how=crash", sc)
    assert f == FailureSpec(node=3, iteration=1, phase="backward", how="crash") and f.stops
    slow = parse_spec("node=2,how=slow", sc)
    assert slow.factor == DEFAULT_SLOW_FACTOR > 1 and not slow.stops
    assert parse_spec("node=2,how=slow,factor=2.5", sc).factor == 2.5
    for bad in (
        "node=9",
        "node=1,phase=lunch",
        "node=1,how=explode",
        "node=1,colour=red",
        "iteration=2",
        "node=x",
        "node=1,factor=0.5",
        "node=1,after_ops=-1",
        "node=1;how=hang",
    ):
        with pytest.raises(FailurePlanError, match="--fail"):
            parse_spec(bad, sc)
    plan = random_plan(sc, rate=0.5, iterations=4, seed=1, protect=frozenset({0, 1}))
    assert plan == random_plan(sc, rate=0.5, iterations=4, seed=1, protect=frozenset({0, 1}))
    assert all(isinstance(f, FailureSpec) and f.node not in (0, 1) for f in plan)


def test_failure_spec_fires_once_its_phase_and_ops_are_reached():
    f = FailureSpec(node=1, iteration=2, phase="backward", after_ops=3)
    assert not f.fires(1, "backward", 5) and not f.fires(2, "forward", 5)
    assert not f.fires(2, "backward", 2) and f.fires(2, "backward", 3)
    start = FailureSpec(node=1, iteration=0, phase="start")
    assert start.fires(0, "forward", 0) and start.fires(0, "averaging", 0)


def test_a_simulated_session_sees_the_same_specs_by_whole_iterations():
    sc = tiny()
    plan = parse_failures(
        [
            "node=3,iteration=1,phase=backward,how=crash",
            "node=2,iteration=2,how=slow,factor=3",
            "node=5,how=hang",
        ],
        sc,
    )
    cond = Condition(tuple(plan), back={3: 3})
    assert [cond.down(it) for it in range(4)] == [{5}, {3, 5}, {3, 5}, {5}]
    assert cond.factors(1) == {} and cond.factors(2) == cond.factors(9) == {2: 3.0}
    with pytest.raises(FailurePlanError, match="node 2 has no crash or hang"):
        Condition(tuple(plan), back={2: 3})


def test_failure_plans_from_files_and_run_configs(tmp_path):
    sc = tiny()
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps([{"node": 4, "how": "hang", "iteration": 1}]))
    assert parse_failures([f"@{plan}"], sc) == [FailureSpec(node=4, iteration=1, how="hang")]
    plan.write_text(json.dumps({"node": 4}))
    with pytest.raises(FailurePlanError, match="list"):
        parse_failures([f"@{plan}"], sc)
    plan.write_text(json.dumps(["node=4"]))
    with pytest.raises(FailurePlanError, match="object"):
        parse_failures([f"@{plan}"], sc)
    specs = (FailureSpec(node=4, iteration=1, how="hang"), FailureSpec(node=2, how="slow", factor=3.0))
    cfg = RunConfig(
        run_dir=str(tmp_path),
        scenario_path="",
        scenario_overrides={},
        schedule_path="",
        variant="random",
        iterations=3,
        time_scale=1.0,
        emulate_compute=True,
        emulate_links=True,
        peers={0: ("127.0.0.1", 1)},
        local_nodes=(0, 1, 2, 3, 4),
        data_nodes=(0, 1),
        epoch=0.0,
        seed=0,
        peer_timeout_s=1.0,
        connect_timeout_s=1.0,
        failures=specs,
    )
    back = load_config(save_config(cfg))
    assert back.failures == specs and back == cfg
    assert back.planned_crashes() == {4} and back.expected_nodes(0) == 5 and back.expected_nodes(1) == 4


def test_a_moved_run_directory_still_loads(tmp_path):
    """config.json names what lies inside the run directory relative to it."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "schedule.json").write_text("{}")
    cfg = RunConfig(
        run_dir=str(run),
        scenario_path="/settings/tiny.toml",
        scenario_overrides={},
        schedule_path=str(run / "schedule.json"),
        variant="random",
        iterations=1,
        time_scale=1.0,
        emulate_compute=True,
        emulate_links=True,
        peers={0: ("127.0.0.1", 1)},
        local_nodes=(0,),
        data_nodes=(0,),
        epoch=0.0,
        seed=0,
        peer_timeout_s=1.0,
        connect_timeout_s=1.0,
    )
    save_config(cfg)
    moved = tmp_path / "moved"
    run.rename(moved)
    back = load_config(moved / "config.json")
    assert back.run_dir == str(moved.resolve()) and back.schedule_path == str(
        moved.resolve() / "schedule.json"
    )
    assert back.scenario_path == "/settings/tiny.toml"
