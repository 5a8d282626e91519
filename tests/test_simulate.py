"""Event simulator: hand-computed timings on tiny scenarios, plus consistency checks.

Costs are chosen as exact binary fractions (1, 2, 0.5, 0.25, 0.125 s) so sums are exact.
"""

import math
import re

import pytest

from conftest import SETTINGS
from skippipe.cli import main
from skippipe.costs import Costs
from skippipe.network import Link, Network, Node
from skippipe.ops import Op
from skippipe.rules import planned_makespan, violations
from skippipe.scenario import CostConfig, ModelConfig, PipelineConfig, Scenario, TrainingConfig, load_scenario
from skippipe.schedule import Hop, MicrobatchPath, Schedule, VariantSchedule
from skippipe.schedule_file import save_schedule
from skippipe.sim.simulate import SimulationError, simulate

ACT_BYTES = 8  # activation_dtype_bytes 1 x d_model 8 x ctx 1 x 1 sample
F_S, B_S, L_S = 1.0, 2.0, 0.5  # forward, backward (factor 2), loss (factor 0.5)
SER_S, PROP_S = 0.25, 0.125  # default link: serialization and latency
HOP_S = SER_S + PROP_S  # one message on an idle link


def make_scenario(
    stage_sizes,
    *,
    locations=None,
    slots=2,
    mb_per_node=1,
    f_s=F_S,
    backward_factor=B_S / F_S,
    loss_factor=L_S / F_S,
    ser_s=SER_S,
    prop_s=PROP_S,
    same_location=Link(0.0, math.inf),
    path_length=None,
    node_f_s=None,
) -> Scenario:
    """Nodes numbered stage by stage; each node in its own location unless `locations` given.
    One layer per stage, one sample per microbatch, so forward = f_s (node_f_s: per-node
    overrides)."""
    n = sum(stage_sizes)
    locations = locations or [f"loc{i}" for i in range(n)]
    locs = tuple(dict.fromkeys(locations))
    bandwidth = ACT_BYTES / ser_s if ser_s > 0 else math.inf
    links = tuple((a, b, Link(prop_s, bandwidth)) for i, a in enumerate(locs) for b in locs[i + 1 :])
    s = len(stage_sizes)
    return Scenario(
        name="t",
        source="",
        content_hash="h",
        model=ModelConfig(
            d_model=8,
            n_heads=2,
            n_layers=s,
            ffn_hidden=16,
            ctx_tokens=1,
            vocab_size=16,
            activation_dtype_bytes=1,
            param_dtype_bytes=1,
        ),
        pipeline=PipelineConfig(tuple(stage_sizes), path_length or s, slots, mb_per_node, 1, 2, 1, 2, 4),
        costs=CostConfig(backward_factor, loss_factor, 0.0),
        training=TrainingConfig(1, 1e-3, 1.0, 0.0, 0, 1.0),
        network=Network("t", locs, same_location, links),
        nodes=tuple(Node(i, locations[i], (node_f_s or {}).get(i, f_s), slots) for i in range(n)),
    )


def allocation_of(stage_sizes):
    out, nxt = [], 0
    for size in stage_sizes:
        out.append(tuple(range(nxt, nxt + size)))
        nxt += size
    return tuple(out)


def make_schedule(stage_sizes, node_paths, order=None, variant="ca-partial") -> Schedule:
    """node_paths[mb] = node ids visited (origin first); stages come from the allocation."""
    alloc = allocation_of(stage_sizes)
    stage_of = {n: s for s, nodes in enumerate(alloc) for n in nodes}
    paths = tuple(
        MicrobatchPath(mb, nodes[0], tuple(Hop(stage_of[x], x) for x in nodes))
        for mb, nodes in enumerate(node_paths)
    )
    v = VariantSchedule(variant, paths, order)
    return Schedule("t", "h", "", alloc, {variant: v})


def ops(*spec):
    """ops('F0.1', 'L0', 'B0.1') -> a tuple of Op."""
    return tuple(Op.parse(text) for text in spec)


def op_events(result, node=None):
    return [
        e
        for e in result.events
        if e["event"] == "op" and e["kind"] != "AVG" and (node is None or e["node"] == node)
    ]


def start_of(result, kind, mb, hop):
    (e,) = [e for e in op_events(result) if (e["kind"], e["microbatch"], e["hop"]) == (kind, mb, hop)]
    return e["t"]


# ----------------------------------------------------------------------------------------------


def test_one_path_alone_is_the_sum_of_ops_and_links():
    sc = make_scenario([1, 1, 1])
    r = simulate(make_schedule([1, 1, 1], [[0, 1, 2]]), "ca-partial", sc)
    # 3 forwards + loss + 3 backwards + 6 messages (0>1, 1>2, 2>0, 0>2, 2>1, 1>0)
    assert r.makespan_s == 3 * F_S + L_S + 3 * B_S + 6 * HOP_S == 11.75
    assert r.iteration_s == r.makespan_s  # one node per stage: no averaging
    assert start_of(r, "F", 0, 2) == 2 * F_S + 2 * HOP_S
    assert start_of(r, "L", 0, 0) == 3 * F_S + 3 * HOP_S
    assert start_of(r, "B", 0, 2) == 3 * F_S + L_S + 4 * HOP_S
    origin = r.per_node[0]
    assert (origin.busy_s, origin.waiting_s) == (F_S + L_S + B_S, 0.0)
    assert origin.idle_s == pytest.approx(11.75 - 3.5)
    sends = [e for e in r.events if e["event"] == "send"]
    links = [(e["node"], e["dst"]) for e in sends]
    assert links == [(0, 1), (1, 2), (2, 0), (0, 2), (2, 1), (1, 0)]
    assert all(e["bytes"] == ACT_BYTES and e["arrive"] == e["t"] + HOP_S for e in sends)


def test_two_microbatches_collide_on_a_node_and_queue():
    sizes = [2, 1]  # data nodes 0 and 1 both send to node 2
    r = simulate(make_schedule(sizes, [[0, 2], [1, 2]]), "ca-partial", make_scenario(sizes))
    # both forwards arrive at node 2 at 1.375; microbatch 0 (lower id) goes first
    assert start_of(r, "F", 0, 1) == 1.375 and start_of(r, "F", 1, 1) == 2.375
    # mb0: back at 2.75, loss to 3.25, gradient at node 2 at 3.625 (node idle since 3.375)
    assert start_of(r, "B", 0, 1) == 3.625
    # mb1: F ends 3.375, loss 3.75-4.25, gradient arrives 4.625 but node 2 is busy until 5.625
    assert start_of(r, "B", 1, 1) == 5.625
    assert start_of(r, "B", 0, 0) == 6.0 and start_of(r, "B", 1, 0) == 8.0
    assert r.makespan_s == 10.0  # alone each path takes 8.0; mb1 lost 1 s twice at node 2
    assert r.per_node[2].waiting_s == 0.0  # it queued while node 2 was busy: not waiting


def test_fcfs_prefers_a_backward_that_arrives_with_a_forward():
    sizes = [2, 1]  # data node 0 forwards in 3.25 s, so mb0's F reaches node 2 at 3.625 ...
    sc = make_scenario(sizes, node_f_s={0: 3.25})
    r = simulate(make_schedule(sizes, [[0, 2], [1, 2]]), "ca-partial", sc)
    # ... exactly when mb1's gradient does (1 + .375 + 1 + .375 + .5 + .375): B goes first
    assert start_of(r, "B", 1, 1) == 3.625 and start_of(r, "F", 0, 1) == 3.625 + B_S


def test_two_messages_on_one_link_queue():
    sizes = [1, 1]
    sc = make_scenario(sizes, ser_s=3.0, prop_s=0.5)
    r = simulate(make_schedule(sizes, [[0, 1], [0, 1]]), "ca-partial", sc)
    first, second = [e for e in r.events if e["event"] == "send" and e["node"] == 0][:2]
    assert (first["t"], first["wire_start"], first["arrive"]) == (1.0, 1.0, 4.5)
    # handed over at 2.0 but the link is busy until 4.0: arrives one serialization later
    assert (second["t"], second["wire_start"], second["arrive"]) == (2.0, 4.0, 7.5)
    assert start_of(r, "F", 1, 1) == 7.5


def test_forward_waits_for_a_memory_slot():
    sizes = [1, 1]
    r = simulate(make_schedule(sizes, [[0, 1], [0, 1]]), "ca-partial", make_scenario(sizes, slots=1))
    alone = 2 * F_S + L_S + 2 * B_S + 4 * HOP_S  # 8.0
    # the data node's one slot is held by mb0 from its F start to its B end at hop 0
    assert start_of(r, "F", 1, 0) == alone
    assert r.makespan_s == 2 * alone
    # node 0 has F mb1 arrived from t=0 and cannot start it: waits whenever it is not busy
    assert r.per_node[0].waiting_s == alone - (F_S + L_S + B_S)
    assert r.per_node[1].waiting_s == 0.0


@pytest.mark.parametrize("p,m", [(2, 1), (3, 4), (4, 6), (5, 3)])
def test_gpipe_bubble_fraction(p, m):
    """Baseline with one data node and p stages, uniform unit forward = backward, free links and
    a free loss (loss_factor 0), GPipe order (all forwards, then the loss, then all backwards).

    Why (p-1)/(M+p-1): node i runs forward j at [i+j, i+j+1); the loss needs no time and links
    are free, so the ring back to the origin costs nothing; the last stage finishes its forwards
    at M+p-1 and then runs backward j at M+p-1+j; backward j reaches stage i p-1-i steps later,
    so the origin's last backward ends at 2(M+p-1). Every node is busy 2M, so the idle share of
    each node is (2(M+p-1) - 2M) / 2(M+p-1) = (p-1)/(M+p-1). A single node per stage: no
    averaging, so iteration = makespan."""
    sizes = [1] * p
    sc = make_scenario(
        sizes, slots=m, mb_per_node=m, backward_factor=1.0, loss_factor=0.0, ser_s=0.0, prop_s=0.0
    )
    paths = [list(range(p))] * m
    order = {
        0: ops(*[f"F{j}.0" for j in range(m)], *[f"L{j}" for j in range(m)], *[f"B{j}.0" for j in range(m)])
    }
    for i in range(1, p):
        order[i] = ops(*[f"F{j}.{i}" for j in range(m)], *[f"B{j}.{i}" for j in range(m)])
    r = simulate(make_schedule(sizes, paths, order, variant="baseline"), "baseline", sc)
    assert r.used_order
    assert r.makespan_s == r.iteration_s == 2 * (m + p - 1)
    bubble = 1 - r.mean_fraction("busy")
    assert bubble == pytest.approx((p - 1) / (m + p - 1))
    assert all(s.busy_s == 2 * m for s in r.per_node)


def _collision_order(first_mb: int, second_mb: int) -> dict:
    return {
        0: ops("F0.0", "L0", "B0.0"),
        1: ops("F1.0", "L1", "B1.0"),
        2: ops(f"F{first_mb}.1", f"B{first_mb}.1", f"F{second_mb}.1", f"B{second_mb}.1"),
    }


def test_planned_order_is_respected():
    sizes = [2, 1]
    sc = make_scenario(sizes)
    sched = make_schedule(sizes, [[0, 2], [1, 2]], _collision_order(1, 0))
    r = simulate(sched, "ca-partial", sc)
    # node 2 must finish mb1 entirely before mb0's forward, which arrived at 1.375
    assert start_of(r, "F", 1, 1) == 1.375 and start_of(r, "B", 1, 1) == 3.625
    assert start_of(r, "F", 0, 1) == 5.625
    assert r.makespan_s == 12.25
    # F mb0 sat there from 1.375 while node 2 was free during [2.375, 3.625): out-of-order wait
    assert r.per_node[2].waiting_s == 1.25
    fcfs = simulate(sched, "ca-partial", sc, use_order=False)
    assert not fcfs.used_order and fcfs.makespan_s == 10.0


def test_averaging_starts_per_stage_without_a_global_barrier():
    sizes = [1, 2]  # nodes 1 and 2 share a location whose local link has 0.25 s latency
    sc = make_scenario(sizes, locations=["west", "east", "east"], same_location=Link(0.25, math.inf))
    r = simulate(make_schedule(sizes, [[0, 1], [0, 2]]), "ca-partial", sc)
    assert r.averaging_s == (0.0, 2 * 0.25)  # ring of 2: 2 steps of latency (no bytes cost)
    # stage 1: mb0's B at node 1 ends 5.625, mb1's B at node 2 runs [4.625, 6.625)
    assert r.stage_done_s == (10.0, 6.625)
    avg = [e for e in r.events if e.get("kind") == "AVG" and e["stage"] == 1]
    assert sorted((e["node"], e["t"], e["dur"]) for e in avg) == [(1, 6.625, 0.5), (2, 6.625, 0.5)]
    assert r.makespan_s == 10.0 and r.iteration_s == 10.0  # stage 1 averaged while stage 0 ran
    assert r.per_node[1].averaging_s == 0.5
    for s in r.per_node:
        total = s.busy_s + s.averaging_s + s.waiting_s + s.idle_s
        assert total == pytest.approx(r.iteration_s)


def test_crossed_paths_with_one_slot_deadlock_in_fcfs():
    sizes = [2, 1, 1]  # mb0: 0 -> 2 -> 3, mb1: 1 -> 3 -> 2; nodes 2 and 3 hold one slot each
    sched = make_schedule(sizes, [[0, 2, 3], [1, 3, 2]])
    with pytest.raises(SimulationError) as err:
        simulate(sched, "ca-partial", make_scenario(sizes, slots=1))
    msg = str(err.value)
    assert "deadlock" in msg and "node 2" in msg and "node 3" in msg and "memory full" in msg
    assert "F mb1 hop2" in msg  # node 2 holds mb0's slot and cannot take mb1


def test_impossible_planned_order_deadlocks():
    sizes = [1, 1]
    order = {0: ops("F0.0", "L0", "B0.0"), 1: ops("B0.1", "F0.1")}
    stuck = r"node 1: next in order B mb0 hop1: input not arrived"
    with pytest.raises(SimulationError, match=stuck):
        simulate(make_schedule(sizes, [[0, 1]], order), "ca-partial", make_scenario(sizes))


def test_incomplete_planned_order_is_rejected():
    sizes = [1, 1]
    order = {0: ops("F0.0", "L0", "B0.0"), 1: ops("F0.1")}
    with pytest.raises(SimulationError, match="node 1's planned order"):
        simulate(make_schedule(sizes, [[0, 1]], order), "ca-partial", make_scenario(sizes))


# ----------------------------------------------------------------------------------------------
# Consistency on a real settings file


def _baseline_schedule(sc: Scenario) -> Schedule:
    """Full pipelines, microbatches dealt round robin over each stage's nodes (balanced)."""
    alloc = allocation_of(sc.pipeline.stage_sizes)
    paths, mb = [], 0
    for origin in alloc[0]:
        for _ in range(sc.pipeline.microbatches_per_node):
            hops = (Hop(0, origin),) + tuple(
                Hop(s, nodes[mb % len(nodes)]) for s, nodes in enumerate(alloc) if s > 0
            )
            paths.append(MicrobatchPath(mb, origin, hops))
            mb += 1
    return Schedule(
        sc.name, sc.content_hash, sc.source, alloc, {"baseline": VariantSchedule("baseline", tuple(paths))}
    )


def test_fcfs_run_passes_the_validator_and_replays_exactly():
    sc = load_scenario(SETTINGS / "tiny.toml")
    sched = _baseline_schedule(sc)
    assert violations(sched, sc) == []
    fcfs = simulate(sched, "baseline", sc)  # no order in the schedule: fcfs
    assert not fcfs.used_order
    v = VariantSchedule("baseline", sched.variants["baseline"].paths, fcfs.order)
    planned = Schedule(sched.scenario_name, sched.scenario_hash, "", sched.allocation, {"baseline": v})
    # the simulated start times obey TC1 (memory), TC2 (no overlap) and link precedence
    assert violations(planned, sc) == []
    assert planned_makespan(v, Costs(sc)) == pytest.approx(fcfs.makespan_s)
    replay = simulate(planned, "baseline", sc)
    assert replay.used_order
    assert replay.makespan_s == fcfs.makespan_s and replay.iteration_s == fcfs.iteration_s
    assert sum(s.waiting_s for s in replay.per_node) == pytest.approx(sum(s.waiting_s for s in fcfs.per_node))


# ----------------------------------------------------------------------------------------------
# Command

TINY_TOML = """
name = "cmd"
[model]
d_model = 8
n_heads = 2
n_layers = 3
ffn_hidden = 16
ctx_tokens = 4
vocab_size = 32
[pipeline]
stage_sizes = [1, 1, 1]
path_length = 2
memory_slots = 2
microbatches_per_node = 2
samples_per_microbatch = 1
[costs]
per_hop_overhead_s = 0.001
[network]
locations = ["a", "b"]
compute_s_per_sample_per_layer = { a = 0.01, b = 0.02 }
same_location_link = { latency_ms = 1, bandwidth_gib_s = 1 }
links = [{ a = "a", b = "b", latency_ms = 10, bandwidth_gib_s = 0.001 }]
[node_generator]
count = 3
"""


def _command_schedule(tmp_path):
    settings = tmp_path / "cmd.toml"
    settings.write_text(TINY_TOML)
    sc = load_scenario(settings)
    base = VariantSchedule(
        "baseline", tuple(MicrobatchPath(mb, 0, (Hop(0, 0), Hop(1, 1), Hop(2, 2))) for mb in range(2))
    )
    partial = VariantSchedule(
        "ca-partial",
        (MicrobatchPath(0, 0, (Hop(0, 0), Hop(1, 1))), MicrobatchPath(1, 0, (Hop(0, 0), Hop(2, 2)))),
    )
    sched = Schedule(
        sc.name, sc.content_hash, str(settings), ((0,), (1,), (2,)), {"baseline": base, "ca-partial": partial}
    )
    path = tmp_path / "sched.json"
    save_schedule(sched, path)
    return path


def test_command_prints_a_table_and_writes_outputs(tmp_path, capsys):
    path = _command_schedule(tmp_path)
    png, jsonl, trace = tmp_path / "g.png", tmp_path / "t.jsonl", tmp_path / "t.json"
    rc = main(
        [
            "simulate",
            str(path),
            "--gantt",
            str(png),
            "--timeline",
            str(jsonl),
            "--trace",
            str(trace),
            "--per-node",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()}
    assert rows["baseline"][-1] == "1.000"
    assert float(rows["ca-partial"][-1]) < 1.0  # shorter paths beat the full pipeline here
    assert png.read_bytes().startswith(b"\x89PNG")
    assert (tmp_path / "t.baseline.jsonl").is_file() and (tmp_path / "t.ca-partial.json").is_file()


def test_command_single_variant_fcfs(tmp_path, capsys):
    path = _command_schedule(tmp_path)
    assert (
        main(
            [
                "simulate",
                str(path),
                "--variant",
                "ca-partial",
                "--fcfs",
                "--timeline",
                str(tmp_path / "one.jsonl"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert re.search(r"^ca-partial\s+fcfs", out, re.M) and not re.search(r"^baseline", out, re.M)
    assert (tmp_path / "one.jsonl").is_file()


def test_command_bad_schedule_is_one_line_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["simulate", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err


def test_split_backward_runs_w_after_b_on_the_same_node():
    """weight_grad_share 0.5 of a 2 s backward: B 1 s (sent on at once), then W 1 s."""
    import dataclasses

    sizes = [1, 1]
    sched = make_schedule(sizes, [[0, 1]])
    v = dataclasses.replace(sched.variants["ca-partial"], split_backward=True)
    sched = dataclasses.replace(sched, variants={"ca-partial": v})
    r = simulate(sched, "ca-partial", make_scenario(sizes))
    assert start_of(r, "B", 0, 1) == 3.625 and start_of(r, "W", 0, 1) == 4.625
    assert start_of(r, "B", 0, 0) == 5.0 and start_of(r, "W", 0, 0) == 6.0  # not after W at 1
    assert r.makespan_s == r.iteration_s == 7.0
    assert [s.peak_activations for s in r.per_node] == [1, 1]
