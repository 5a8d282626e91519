"""Online routing in node processes on loopback: swarm and swarm-skip train on tiny with every
next hop chosen as the microbatch travels (the origins record the realized paths, which keep
the variant's rules), and the hybrid ca-repair routes around a node slowed by failure injection."""

import dataclasses
import json
import math

import pytest

from runtime_util import run_skippipe
from skippipe.events import StageSetChosen
from skippipe.rules import violations
from skippipe.schedule import Hop, MicrobatchPath
from skippipe.schedule_file import load_schedule
from skippipe.timeline import read_jsonl
from test_runtime import RUN_DEADLINE_S, _run, _run_dir


def _train(tmp_path, schedule, variant, *extra):
    _, args = _run(tmp_path, schedule, variant, *extra)
    r = run_skippipe(args, cwd=tmp_path, timeout_s=RUN_DEADLINE_S)
    assert r.returncode == 0, r.stdout
    run_dir = _run_dir(tmp_path)
    return json.loads((run_dir / "iterations.json").read_text()), read_jsonl(run_dir / "events")


def _realized(events, iteration, stage_of):
    got = sorted(
        (e["microbatch"], tuple(e["nodes"]))
        for e in events
        if e["event"] == "routed" and e["iteration"] == iteration
    )
    return tuple(MicrobatchPath(mb, nodes[0], tuple(Hop(stage_of[n], n) for n in nodes)) for mb, nodes in got)


@pytest.mark.swarm
@pytest.mark.parametrize("variant", ["swarm", "swarm-skip"])
def test_online_variants_train_along_paths_chosen_online(tmp_path, tiny_schedule, variant):
    rows, events = _train(tmp_path, tiny_schedule, variant, "--iterations", "2")
    assert len(rows) == 2 and all(math.isfinite(r["loss"]) for r in rows)
    assert rows[1]["loss"] < rows[0]["loss"]
    sched, sc = load_schedule(tiny_schedule)
    v = sched.variants[variant]
    for it in range(2):
        paths = _realized(events, it, sched.stage_of(variant))
        assert [p.microbatch for p in paths] == list(range(len(v.paths)))
        checked = dataclasses.replace(
            sched, variants={variant: dataclasses.replace(v, paths=paths, order=None)}
        )
        assert violations(checked, sc) == []  # CC1-CC3 and TC1 (swarm: the full pipeline)
        chosen = {
            e["microbatch"]: e["stages"]
            for e in events
            if e["event"] == StageSetChosen.name and e["iteration"] == it
        }
        sets = {p.microbatch: sorted(p.stages[1:]) for p in paths} if variant == "swarm-skip" else {}
        assert chosen == sets  # the origins logged the stage sets the paths kept to


@pytest.mark.swarm
def test_hybrid_routes_around_a_slowed_node(tmp_path, tiny_schedule):
    sched, _ = load_schedule(tiny_schedule)
    plan = sched.variants["ca-repair"]
    stage_of = sched.stage_of("ca-repair")
    # a node of a stage with another node to go to, that a planned path sends a forward to
    slow = next(
        h.node for p in plan.paths for h in p.hops[1:] if len(sched.allocation_of("ca-repair")[h.stage]) > 1
    )
    rows, events = _train(
        tmp_path,
        tiny_schedule,
        "ca-repair",
        "--iterations",
        "3",
        "--time-scale",
        "4",
        "--fail",
        f"node={slow},iteration=1,how=slow,factor=8",
    )
    assert len(rows) == 3 and all(math.isfinite(r["loss"]) for r in rows)
    around = [
        e
        for e in events
        if e["event"] == "microbatch_rerouted" and e["iteration"] >= 1 and e["avoided"] == slow
    ]
    assert around and all(stage_of[e["to"]] == stage_of[slow] for e in around)
    routed = _realized(events, 2, stage_of)
    assert len(routed) == len(plan.paths) and any(
        slow not in p.nodes for p in routed if p.nodes != plan.path(p.microbatch).nodes
    )
