from schedules import TINY_ALLOCATION, make_paths, timed_schedule, tiny
from skippipe.recovery import live_variant, repair_path
from skippipe.runtime.node.datamsg import pack_path, unpack_path
from skippipe.schedule import Hop


def test_dead_node_is_replaced_by_a_live_stage_peer():
    p = make_paths()[0]  # 0 -> node 2 (stage 1) -> node 4 (stage 2)
    fixed = repair_path(p, {2}, TINY_ALLOCATION)
    assert fixed.hops == (Hop(0, 0), Hop(1, 3), Hop(2, 4))


def test_a_dead_stage_is_skipped_and_a_dead_origin_loses_the_microbatch():
    p = make_paths()[0]
    assert repair_path(p, {4}, TINY_ALLOCATION).stages == (0, 1)
    assert repair_path(p, {0}, TINY_ALLOCATION) is None
    assert repair_path(p, {2, 3, 4}, TINY_ALLOCATION) is None  # nothing but stage 0 left


def test_live_variant_drops_the_planned_order_and_lost_paths():
    sc = tiny()
    v = timed_schedule(sc).variants["ca-partial"]
    assert live_variant(v, set(), TINY_ALLOCATION) is v
    live = live_variant(v, {1, 5}, TINY_ALLOCATION)
    assert live.order is None and {p.origin for p in live.paths} == {0}
    assert all(5 not in p.nodes for p in live.paths)


def test_paths_travel_in_wire_tags():
    for nodes in [(0,), (3, 7, 1), tuple(range(8)), (32765, 0, 12)]:
        assert unpack_path(*pack_path(nodes)) == nodes


def test_a_simulated_session_stops_where_the_quorum_rule_stops_the_nodes(tiny_schedule):
    """A crash that empties a stage stops the session before that iteration, as the nodes stop
    (runtime/node/quorum.py); a crash a stage survives does not."""
    from skippipe.failures import Condition, FailureSpec
    from skippipe.schedule_file import load_schedule
    from skippipe.sim.session import simulate_session

    sched, sc = load_schedule(tiny_schedule)
    alloc = sched.allocation_of("ca-partial")
    alone = next(nodes[0] for nodes in alloc[1:] if len(nodes) == 1)
    shared = next(nodes[-1] for nodes in alloc[1:] if len(nodes) > 1)
    survived = simulate_session(sched, "ca-partial", sc, 4, Condition((FailureSpec(shared, 1),)))
    assert survived.stopped is None and len(survived.iteration_s) == 4
    stopped = simulate_session(sched, "ca-partial", sc, 4, Condition((FailureSpec(alone, 2),)))
    stage = next(s for s, nodes in enumerate(alloc) if alone in nodes)
    assert stopped.stopped == f"iteration 2: stage {stage} has no live node"
    assert len(stopped.iteration_s) == 2
