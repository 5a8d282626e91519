"""Adaptive rebalancing: the rule (rebalance.py), the simulator's sessions (sim/session.py) and a
run in node processes where a node moves and ends with its new stage peers' weights."""

import glob

import pytest
import torch

from skippipe.failures import Condition, FailureSpec
from skippipe.rebalance import MIN_GAIN, Move, Rebalancer, decide, moved, throughputs
from skippipe.runtime.node.control import Load, MoveNotice, decode, encode
from skippipe.schedule_file import load_schedule
from skippipe.sim.session import simulate_session
from test_online_runtime import _train
from test_runtime import _run_dir

ALLOC = ((0, 3), (2, 5), (4,), (1,))  # tiny's swarm allocation
EVEN = {n: 0.01 for n in range(6)}  # every node 100 forwards per second


def test_throughputs_sum_live_node_rates_of_stages_after_the_data_stage():
    assert throughputs(ALLOC, EVEN) == pytest.approx({1: 200, 2: 100, 3: 100})
    assert throughputs(ALLOC, EVEN, dead={5}) == pytest.approx({1: 100, 2: 100, 3: 100})


def test_no_move_when_a_move_would_only_shift_the_bottleneck():
    # stage 1 drains twice as fast as 2 and 3, but giving 2 a node leaves 3 as slow as before
    assert decide(ALLOC, EVEN, threshold=1.5) is None


def test_a_straggler_alone_in_its_stage_gets_a_node_from_the_fastest_stage():
    slow = {**EVEN, 4: 0.03}  # node 4, alone in stage 2, three times slower
    assert decide(ALLOC, slow, threshold=1.5) == (2, 1, 2)  # ties: the lower node id moves
    # the slower of stage 1's nodes moves: the faster one left behind keeps the minimum higher
    assert decide(ALLOC, {**slow, 2: 0.012}, threshold=1.5) == (2, 1, 2)
    assert decide(ALLOC, {**slow, 5: 0.012}, threshold=1.5) == (5, 1, 2)
    assert decide(ALLOC, slow, threshold=10) is None  # within the threshold
    assert decide(ALLOC, slow, threshold=1.5, dead={5}) is None  # the donor would be left empty
    assert decide(ALLOC, EVEN, threshold=1.5, dead={4}) is None  # no live peer holds stage 2's state


def test_a_move_must_raise_the_minimum_by_the_minimum_gain():
    # stage 3 a little slower than a single node of stage 1: moving one there gains under 10%
    forward = {**EVEN, 1: 0.0105}
    rate = throughputs(ALLOC, forward)
    assert rate[2] / rate[3] < MIN_GAIN and decide(ALLOC, forward, threshold=1.5) is None


def test_rebalancer_applies_moves_from_their_iteration_one_at_a_time():
    r = Rebalancer(ALLOC, threshold=1.5)
    slow = {**EVEN, 4: 0.03}
    move = r.after_iteration(1, slow)
    assert move == Move(2, 1, 2, at=3)
    assert r.allocation_at(2) == ALLOC and r.allocation_at(3) == ((0, 3), (5,), (4, 2), (1,))
    assert r.stages_of(3)[2] == (2,) and r.stages_of(2)[2] == (1,)
    assert r.after_iteration(2, slow) is None  # the move is not in effect yet
    assert not r.record(move) and r.record(Move(5, 1, 3, at=6))
    assert moved(ALLOC, move) == r.allocation_at(3)
    assert Rebalancer(ALLOC, threshold=0).after_iteration(1, slow) is None  # disabled


def test_load_and_move_notices_round_trip_and_name_nodes_of_the_run():
    for ctrl in (Load(3, 8123), MoveNotice(2, 2, 5)):
        assert decode(encode(ctrl, 1), n_nodes=6) == ctrl
    with pytest.raises(Exception, match="move"):
        decode(encode(MoveNotice(9, 2, 5), 1), n_nodes=6)


def _session(tiny_schedule, variant, condition, seed=0):
    sched, sc = load_schedule(tiny_schedule)
    return simulate_session(sched, variant, sc, 8, condition, seed=seed)


def test_the_simulator_rebalances_swarm_under_a_straggler_and_not_on_a_static_network(tiny_schedule):
    sched, _ = load_schedule(tiny_schedule)
    alone = next(nodes[0] for nodes in sched.allocation_of("swarm")[1:] if len(nodes) == 1)
    static = _session(tiny_schedule, "swarm", Condition())
    assert static.moves == [] and len(static.iteration_s) == 8
    straggler = Condition((FailureSpec(alone, 1, how="slow", factor=3.0),))
    slowed = _session(tiny_schedule, "swarm", straggler)
    assert [m.target for m in slowed.moves][:1] == [sched.stage_of("swarm")[alone]]
    assert slowed.moves[0].at >= 3 and slowed == _session(tiny_schedule, "swarm", straggler)
    planned = _session(tiny_schedule, "ca-partial", straggler)
    assert planned.moves == [] and planned.iteration_s[1] > planned.iteration_s[0]


def test_the_simulator_loses_a_down_origin_s_microbatches_and_repairs_planned_paths(tiny_schedule):
    sched, _ = load_schedule(tiny_schedule)
    origin = sched.allocation_of("ca-partial")[0][0]
    own = sum(1 for p in sched.variants["ca-partial"].paths if p.origin == origin)
    got = _session(tiny_schedule, "ca-partial", Condition((FailureSpec(origin, 2),), back={origin: 4}))
    assert got.lost == 2 * own  # iterations 2 and 3
    relay = sched.allocation_of("ca-partial")[1][0]
    down = _session(tiny_schedule, "ca-partial", Condition((FailureSpec(relay, 2),)))
    assert down.lost == 0 and len(down.iteration_s) == 8


@pytest.mark.swarm
def test_a_moved_node_ends_with_its_new_stage_peers_weights(tmp_path, tiny_schedule):
    sched, _ = load_schedule(tiny_schedule)
    stage_of = sched.stage_of("swarm")
    alone = next(nodes[0] for nodes in sched.allocation_of("swarm")[1:] if len(nodes) == 1)
    rows, events = _train(
        tmp_path,
        tiny_schedule,
        "swarm",
        "--iterations",
        "5",
        "--time-scale",
        "4",
        "--checkpoint",
        "--fail",
        f"node={alone},iteration=1,phase=start,how=slow,factor=3",
    )
    assert len(rows) == 5
    moved_ = [e for e in events if e["event"] == "moved"]
    decided = [e for e in events if e["event"] == "rebalance"]
    assert moved_ and decided and decided[0]["target"] == stage_of[alone]
    mover = moved_[0]["node"]
    assert moved_[0]["target"] == stage_of[alone] and stage_of[mover] != stage_of[alone]
    nodes = _run_dir(tmp_path) / "checkpoint" / "nodes"
    files = sorted(glob.glob(str(nodes / "node-*" / f"stage-{stage_of[alone]}.pt")))
    assert str(nodes / f"node-{mover}" / f"stage-{stage_of[alone]}.pt") in files and len(files) == 2
    a, b = (torch.load(f, weights_only=True) for f in files)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_simulate_command_runs_a_session_and_shows_the_moves(tiny_schedule, capsys):
    from skippipe.cli import main

    sched, _ = load_schedule(tiny_schedule)
    alone = next(nodes[0] for nodes in sched.allocation_of("swarm")[1:] if len(nodes) == 1)
    argv = [
        "simulate",
        str(tiny_schedule),
        "--variant",
        "swarm",
        "--variant",
        "ca-partial",
        "--iterations",
        "6",
        "--fail",
        f"node={alone},iteration=1,how=slow,factor=3",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "swarm: rebalancing moves node" in out and "6 iterations" in out
    assert [line.split()[0] for line in out.splitlines()[-2:]] == ["swarm", "ca-partial"]
    assert main(["simulate", str(tiny_schedule), "--iterations", "3", "--rejoin", f"{alone}:2"]) == 2
    assert "has no crash or hang to come back from" in capsys.readouterr().err


def test_the_decider_tells_a_node_coming_back_of_a_move_directly():
    import asyncio
    from types import SimpleNamespace as NS

    from skippipe.runtime.node.membership import Membership
    from skippipe.runtime.node.moves import Moves

    told, direct, written = [], [], []

    async def tell_direct(dst, ctrl):
        direct.append((dst, ctrl))

    live = NS(dead={1})  # node 1 (stage 3) crashed and is planned in again from iteration 4
    m = NS(
        id=0,
        live=live,
        tell=lambda dst, c: None,
        tell_live=told.append,
        tell_direct=tell_direct,
        events=NS(write=lambda name, **kw: written.append(name)),
    )
    members = Membership(0, ALLOC, {}, rebalance=1.5)
    members.plan_join(1, at=4)
    routes = NS(router=NS(own_forward_s=0.01))
    moves = Moves(NS(iterations=10, peer_timeout_s=1.0), 0, members, routes, m, rejoin=None)
    moves.forward_s = {2: 0.01, 5: 0.01, 4: 0.03}

    async def decide():
        moves.after_step(3)
        await asyncio.sleep(0)  # the direct notice is a task

    asyncio.run(decide())
    assert told == [MoveNotice(2, 2, 5)] and direct == [(1, MoveNotice(2, 2, 5))]
    assert written == ["rebalance"] and members.allocation_at(5)[2] == (4, 2)
