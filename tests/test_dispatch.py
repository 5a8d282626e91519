"""The one dispatch rule: unit cases, and the simulator and a runtime-style loop agreeing."""

from schedules import make_paths, make_schedule, tiny
from skippipe.costs import Costs
from skippipe.dispatch import Dispatcher
from skippipe.ops import B, F, L, OpKind, W, next_op, node_of
from skippipe.schedule import VariantSchedule
from skippipe.sim.simulate import simulate


def test_fcfs_takes_the_earliest_arrival_then_backward_first():
    d = Dispatcher([F(0, 1), F(1, 1), B(2, 1), F(2, 1), L(3)], slots=3, planned=False)
    d.arrive(F(1, 1), 1.0)
    d.arrive(B(2, 1), 2.0)
    assert d.next_op() == F(1, 1)  # arrived first, although a backward waits too
    d.arrive(F(0, 1), 3.0)
    d.arrive(L(3), 3.0)
    d.start(F(1, 1))
    d.finish(F(1, 1))
    assert d.next_op() == B(2, 1)
    d.start(B(2, 1))
    d.finish(B(2, 1))
    assert d.next_op() == L(3)  # same instant as F(0, 1): the loss first


def test_forward_waits_for_a_memory_slot():
    d = Dispatcher([F(0, 1), F(1, 1), B(0, 1), B(1, 1)], slots=1, planned=False)
    d.arrive(F(0, 1), 0.0)
    d.arrive(F(1, 1), 0.0)
    d.start(F(0, 1))
    d.finish(F(0, 1))
    assert d.next_op() is None and d.blocked_on_memory()
    d.arrive(B(0, 1), 1.0)
    d.start(B(0, 1))
    d.finish(B(0, 1))
    assert d.next_op() == F(1, 1)


def test_a_detour_added_to_a_plan_holds_memory_beyond_the_slots():
    d = Dispatcher([F(0, 1), B(0, 1)], slots=1, planned=True)
    d.add([F(5, 1), B(5, 1)], beyond_slots=True)  # a microbatch re-routed here
    d.arrive(F(5, 1), 0.0)
    d.start(F(5, 1))
    d.finish(F(5, 1))
    d.arrive(F(0, 1), 1.0)
    assert d.next_op() == F(0, 1)  # the detour's activation does not take the plan's slot
    d.start(F(0, 1))
    d.finish(F(0, 1))
    assert d.peak == 2 and d.memory_full()
    online = Dispatcher([F(0, 0)], slots=1, planned=False)
    online.add([F(1, 1), F(2, 1)])  # online routing: every op added, all within the slots
    for op in (F(1, 1), F(2, 1)):
        online.arrive(op, 0.0)
    online.start(F(1, 1))
    online.finish(F(1, 1))
    assert online.next_op() is None and online.blocked_on_memory()


def test_planned_order_is_followed_strictly():
    d = Dispatcher([F(1, 1), F(0, 1), B(1, 1), B(0, 1)], slots=2, planned=True)
    d.arrive(F(0, 1), 0.0)
    assert d.next_op() is None and d.next_planned() == F(1, 1)
    d.arrive(F(1, 1), 1.0)
    assert d.next_op() == F(1, 1)


def test_forget_and_add_turn_to_fcfs():
    d = Dispatcher([F(0, 1), B(0, 1), F(1, 1), B(1, 1)], slots=1, planned=True)
    d.arrive(F(0, 1), 0.0)
    d.start(F(0, 1))
    d.finish(F(0, 1))
    d.arrive(F(1, 1), 1.0)
    d.forget(0)  # microbatch 0's attempt failed: its slot is free again
    assert d.next_op() == F(1, 1) and not d.planned
    d.add([F(0, 1), B(0, 1)])  # the restarted attempt
    d.start(F(1, 1))
    d.finish(F(1, 1))
    d.arrive(F(0, 1), 2.0)
    assert d.next_op() is None and not d.done  # memory full until B(1, 1)


def test_actions_of_a_variant():
    paths = make_paths()
    assert len(VariantSchedule("random", paths).actions(4)) == 8
    planned = VariantSchedule("ca-partial", paths, {4: (F(3, 1), B(3, 1))})
    assert planned.actions(4) == [F(3, 1), B(3, 1)] and planned.planned


def runtime_style_order(sched, name, sc, node, arrivals):
    """Drive one node's Dispatcher the way runtime/node/node.py does: whenever the node is free,
    hand it every input that has arrived, ask next_op(), run the op for its duration."""
    v = sched.variant(name)
    costs = Costs(sc)
    d = Dispatcher(v.actions(node), sc.nodes[node].memory_slots, v.planned)
    pending = sorted(arrivals, key=lambda a: (a[0], a[1].sort_key))  # (time, op)
    now, started = 0.0, []
    while pending or d.arrived:
        while pending and pending[0][0] <= now + 1e-9:
            t, op = pending.pop(0)
            d.arrive(op, t)
        op = d.next_op()
        if op is None:
            assert pending, f"node {node} stuck"
            now = pending[0][0]  # nothing runnable: wait for the next input
            continue
        d.start(op)
        started.append((now, op))
        now += costs.op_s(op.kind, node)
        d.finish(op)
    return started


def test_simulator_and_runtime_loop_pick_the_same_order():
    """The simulator's inputs for each node (arrival times) fed to a runtime-style loop give
    the same start order and start times as the simulator's own run."""
    sc = tiny()
    sched = make_schedule(sc, make_paths(), "random")
    result = simulate(sched, "random", sc)
    v = sched.variant("random")
    arrivals = {}
    starts = {op: op.start_s for ops in result.order.values() for op in ops}
    costs = Costs(sc)
    for ops in result.order.values():  # where each op's output goes and when it gets there
        for op in ops:
            p = v.path(op.microbatch)
            nxt = next_op(op, len(p.hops))
            if nxt is None:
                continue
            src, dst = node_of(op, p.nodes), node_of(nxt, p.nodes)
            arrivals.setdefault(dst, []).append((op.start_s + costs.op_s(op.kind, src), nxt))
    sends = {(e["dst"], e["microbatch"], e["t"]): e["arrive"] for e in result.events if e["event"] == "send"}
    for dst, items in arrivals.items():  # messages arrive after link time (queued per link)
        items[:] = [(sends.get((dst, op.microbatch, t), t), op) for t, op in items]
    for p in v.paths:
        arrivals.setdefault(p.origin, []).append((0.0, F(p.microbatch, 0)))
    compared = 0
    for node, ops in result.order.items():
        got = runtime_style_order(sched, "random", sc, node, arrivals[node])
        assert [op for _, op in got] == list(ops), f"node {node}"
        assert all(abs(t - starts[op]) < 1e-9 for t, op in got)
        compared += len(ops)
    assert compared == sum(len(ops) for ops in result.order.values()) > 0


def test_split_backward_frees_the_slot_at_w_and_limits_may_be_lifted():
    d = Dispatcher([F(0, 1), F(1, 1), B(0, 1), W(0, 1), B(1, 1), W(1, 1)], slots=1, planned=False, split=True)
    for op in (F(0, 1), F(1, 1)):
        d.arrive(op, 0.0)
    d.start(F(0, 1))
    d.finish(F(0, 1))
    d.arrive(B(0, 1), 1.0)
    d.start(B(0, 1))
    d.finish(B(0, 1))
    assert d.next_op() is None and d.blocked_on_memory()  # B ran, W still holds the slot
    d.arrive(W(0, 1), 2.0)
    d.start(W(0, 1))
    d.finish(W(0, 1))
    assert d.next_op() == F(1, 1) and d.peak == 1
    free = Dispatcher([F(0, 1), F(1, 1)], slots=None, planned=False)  # unlimited
    for op in (F(0, 1), F(1, 1)):
        free.arrive(op, 0.0)
        free.start(op)
        free.finish(op)
    assert free.peak == 2 and not free.blocked_on_memory()


def test_floating_kinds_run_ahead_of_the_planned_list():
    d = Dispatcher([F(0, 0), F(1, 0), L(0), B(0, 0)], slots=2, planned=True, floating=frozenset({OpKind.L}))
    d.arrive(F(0, 0), 0.0)
    d.arrive(F(1, 0), 0.0)
    d.start(F(0, 0))
    d.finish(F(0, 0))
    d.arrive(L(0), 1.0)  # listed after F(1, 0), but it floats
    assert d.next_op() == L(0)
    d.start(L(0))
    d.finish(L(0))
    assert d.next_op() == F(1, 0) and d.next_planned() == F(1, 0)
