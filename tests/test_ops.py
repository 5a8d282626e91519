import pytest

from schedules import make_paths
from skippipe.ops import (
    B,
    F,
    L,
    Op,
    OpKind,
    W,
    chain,
    frees_slot,
    local_next,
    next_op,
    node_of,
    node_ops,
    op_chain,
    prev_op,
    takes_slot,
)


def test_op_prints_and_parses():
    for op in (F(3, 1), L(3), B(12, 0)):
        assert Op.parse(str(op)) == op
    assert str(F(3, 1)) == "F3.1" and str(L(3)) == "L3"
    assert f"waiting for {[B(0, 2), L(3)]}" == "waiting for [B0.2, L3]"  # in logs: not Op(kind=...)
    for bad in ("X1.0", "F1", "L1.0", "F-1.0", ""):
        with pytest.raises(ValueError):
            Op.parse(bad)


def test_start_time_is_not_identity():
    assert F(1, 2).at(3.5) == F(1, 2) and hash(F(1, 2).at(3.5)) == hash(F(1, 2))
    assert Op("B", 1, 2).kind is OpKind.B  # kinds from JSON and planners become OpKind


def test_chain_next_and_previous():
    ops = op_chain(7, 3)
    assert [str(o) for o in ops] == ["F7.0", "F7.1", "F7.2", "L7", "B7.2", "B7.1", "B7.0"]
    assert [(k.value, h) for k, h in chain(2)] == [("F", 0), ("F", 1), ("L", 0), ("B", 1), ("B", 0)]
    for a, b in zip(ops, ops[1:]):
        assert next_op(a, 3) == b and prev_op(b, 3) == a
    assert next_op(ops[-1], 3) is None and prev_op(ops[0], 3) is None


def test_nodes_and_memory():
    p = make_paths()[0]  # origin 0 -> node 2 -> node 4
    assert [node_of(o, p.nodes) for o in op_chain(0, 3)] == [0, 2, 4, 0, 4, 2, 0]
    by_node = node_ops(make_paths())
    assert sorted({o.microbatch for o in by_node[4]}) == [0, 1, 3, 4] and len(by_node[4]) == 8
    assert takes_slot(F(0, 1)) and not takes_slot(B(0, 1)) and frees_slot(B(0, 1)) == F(0, 1)
    assert frees_slot(L(0)) is None


def test_split_backward_chain_and_memory():
    assert str(W(3, 1)) == "W3.1" and Op.parse("W3.1") == W(3, 1)
    ops = op_chain(7, 2, split=True)
    assert [str(o) for o in ops] == ["F7.0", "F7.1", "L7", "B7.1", "W7.1", "B7.0", "W7.0"]
    # W is a side branch: B's output goes on down the chain, W's goes nowhere
    assert next_op(B(7, 1), 2) == B(7, 0) and next_op(W(7, 1), 2) is None
    assert local_next(B(7, 1), split=True) == W(7, 1) and local_next(B(7, 1), split=False) is None
    assert prev_op(W(7, 0), 2) == B(7, 0)
    assert frees_slot(W(7, 1), split=True) == F(7, 1) and frees_slot(B(7, 1), split=True) is None
    assert len(node_ops(make_paths(), split=True)[4]) == 12  # + one W per visit
