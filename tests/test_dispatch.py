from skippipe.dispatch import Dispatcher, next_hop_op, node_ops
from skippipe.schedule import Op, VariantSchedule

from schedules import make_paths


def test_fcfs_prefers_backward_then_arrival_order():
    d = Dispatcher([("F", 0, 1), ("F", 1, 1), ("B", 2, 1), ("F", 2, 1)], slots=3, planned=False)
    d.arrive(("F", 1, 1))
    d.arrive(("F", 0, 1))
    assert d.next_op() == ("F", 1, 1)  # arrived first
    d.arrive(("B", 2, 1))
    assert d.next_op() == ("B", 2, 1)


def test_forward_waits_for_a_memory_slot():
    d = Dispatcher([("F", 0, 1), ("F", 1, 1), ("B", 0, 1), ("B", 1, 1)], slots=1, planned=False)
    d.arrive(("F", 0, 1))
    d.arrive(("F", 1, 1))
    d.start(("F", 0, 1))
    d.finish(("F", 0, 1))
    assert d.next_op() is None and d.blocked_on_memory()
    d.arrive(("B", 0, 1))
    d.start(d.next_op())
    d.finish(("B", 0, 1))
    assert d.next_op() == ("F", 1, 1)


def test_planned_order_is_followed_strictly():
    ops = [("F", 1, 1), ("F", 0, 1), ("B", 1, 1), ("B", 0, 1)]
    d = Dispatcher(ops, slots=2, planned=True)
    d.arrive(("F", 0, 1))
    assert d.next_op() is None  # F of microbatch 1 comes first
    d.arrive(("F", 1, 1))
    assert d.next_op() == ("F", 1, 1)
    for op in ops:
        d.arrive(op)
        assert d.next_op() == op
        d.start(op)
        d.finish(op)
    assert d.done


def test_forget_frees_memory_of_a_failed_attempt():
    d = Dispatcher([("F", 0, 1), ("B", 0, 1), ("F", 1, 1), ("B", 1, 1)], slots=1, planned=True)
    d.arrive(("F", 0, 1))
    d.start(("F", 0, 1))
    d.finish(("F", 0, 1))
    d.arrive(("F", 1, 1))
    assert d.next_op() is None  # memory full until microbatch 0's backward
    d.forget(0)
    assert d.next_op() == ("F", 1, 1) and not d.planned
    d.add([("F", 0, 1), ("B", 0, 1)])  # the restarted attempt
    d.start(("F", 1, 1))
    d.finish(("F", 1, 1))
    d.arrive(("F", 0, 1))
    assert d.next_op() is None and not d.done


def test_node_ops_and_next_hop():
    paths = make_paths()
    v = VariantSchedule("random", paths)
    ops = node_ops(v, 4)  # stage 2: microbatches 0, 1, 3, 4
    assert sorted({mb for _, mb, _ in ops}) == [0, 1, 3, 4] and len(ops) == 8
    p = paths[0]  # 0 -> node 2 -> node 4 -> back to 0
    assert next_hop_op(p, ("F", 0, 0)) == (("F", 0, 1), 2)
    assert next_hop_op(p, ("F", 0, 2)) == (("L", 0, 0), 0)
    assert next_hop_op(p, ("L", 0, 0)) == (("B", 0, 2), 4)
    assert next_hop_op(p, ("B", 0, 0)) is None
    planned = VariantSchedule("ca-partial", paths, {4: (Op("F", 3, 1), Op("B", 3, 1))})
    assert node_ops(planned, 4) == [("F", 3, 1), ("B", 3, 1)]
