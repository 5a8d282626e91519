"""Typed control messages: each round-trips through the wire; a malformed one is rejected and
logged by the receiver, which goes on with the next message."""

import asyncio
import logging

import pytest

from skippipe.runtime.net import wire
from skippipe.runtime.net.wire import DType, Kind, Message
from skippipe.runtime.node import control
from skippipe.runtime.node.control import (
    ControlError,
    Dead,
    Finished,
    Hello,
    RejoinAt,
    RejoinRequest,
    Report,
    Restart,
    Welcome,
    decode,
    encode,
)
from skippipe.runtime.node.emulation import Emulation
from skippipe.runtime.node.liveness import Liveness
from skippipe.runtime.node.messenger import Messenger
from skippipe.runtime.node.runconfig import EventWriter

TEST_DEADLINE_S = 10.0
ALL = [
    Hello(),
    Finished(3, (4,)),
    RejoinRequest(),
    Dead((3, 5)),
    Restart(4, 2, 7),
    RejoinAt(9, 3),
    Welcome(9, (1,), (0, 4, 4)),
    Report(2, 12.5, 6),
]
MALFORMED = [
    {"dead": [[1]]},  # once killed the receiving task
    {"dead": "3"},
    {"dead": [-1]},
    {"dead": [True]},
    {"dead": [2**40]},
    {"restart": 1},
    {"restart": "1", "attempt": 1, "iteration": 0},
    {"restart": 1, "attempt": 1, "iteration": 0, "colour": 2},
    {"rejoin_at": 3},
    {"welcome": 1, "dead": [], "steps": {}},
    {"hello": 1, "finished": 1},
    {},
    {"colour": 1},
    {"finished": 1},
    {"report": 1, "loss_sum": "6.1", "loss_count": 2},
    {"report": 1, "loss_sum": 1e300, "loss_count": 2},
    {"report": 1, "loss_sum": True, "loss_count": 2},
]


def _wire(body: dict, sender: int = 3) -> Message:
    """A control message as the receiver gets it: encoded to bytes and decoded again."""
    return wire.decode(wire.encode(Message.from_json(Kind.CONTROL, sender, body)))


@pytest.mark.parametrize("ctrl", ALL, ids=lambda c: type(c).__name__)
def test_every_control_message_round_trips(ctrl):
    msg = wire.decode(wire.encode(encode(ctrl, sender=2)))
    assert msg.kind == Kind.CONTROL and msg.sender == 2
    assert decode(msg) == ctrl


def test_wire_format_is_unchanged():
    assert encode(Hello(), 0).json() == {"hello": 1}
    assert encode(Dead((1, 4)), 0).json() == {"dead": [1, 4]}
    assert encode(Restart(2, 1, 5), 0).json() == {"restart": 2, "attempt": 1, "iteration": 5}
    assert encode(Welcome(3, (), (1,)), 0).json() == {"welcome": 3, "dead": [], "steps": [1]}


@pytest.mark.parametrize("body", MALFORMED, ids=str)
def test_malformed_control_messages_are_rejected(body):
    with pytest.raises(ControlError, match="from node 3"):
        decode(_wire(body))


def test_node_ids_must_be_nodes_of_the_run():
    assert decode(_wire({"dead": [5]}), n_nodes=6) == Dead((5,))
    for body in ({"dead": [6]}, {"rejoin_at": 2, "node": 6}, {"welcome": 2, "dead": [9], "steps": []}):
        with pytest.raises(ControlError, match="0..5"):
            decode(_wire(body), n_nodes=6)
    assert decode(_wire({"restart": 60, "attempt": 1, "iteration": 70}), n_nodes=6) == Restart(60, 1, 70)


def test_a_payload_that_is_not_json_is_rejected():
    msg = Message(Kind.CONTROL, 3, dtype=DType.BYTES, shape=(3,), payload=b"\xff{}")
    with pytest.raises(ControlError):
        control.decode(msg)


class FakeTransport:
    """Hands out the queued messages, then blocks like a quiet network."""

    def __init__(self, messages):
        self.queue = asyncio.Queue()
        for m in messages:
            self.queue.put_nowait(m)

    async def recv(self):
        return await self.queue.get()


def test_receiver_logs_a_malformed_message_and_keeps_working(tmp_path, caplog):
    got = []

    async def main():
        msgs = [
            _wire({"dead": [[1]]}),
            _wire({"restart": "x"}),
            _wire({"dead": [99]}),
            _wire({"dead": [4]}, sender=1),
            Message(Kind.DONE, 5, iteration=2),
        ]
        live = Liveness(0, list(range(6)), None, 1.0, lambda peers, why: None)
        m = Messenger(
            0,
            FakeTransport(msgs),
            live,
            EventWriter(tmp_path / "events.jsonl", 0, 0.0),
            Emulation(1.0, links=False),
            peer_timeout_s=1.0,
        )
        m.on_control = lambda ctrl, sender: got.append((ctrl, sender))
        done = asyncio.Event()
        m.handlers[Kind.DONE] = lambda msg: done.set()
        receiver = asyncio.create_task(m.receive_forever())
        await asyncio.wait_for(done.wait(), TEST_DEADLINE_S)
        assert not receiver.done()  # still receiving
        receiver.cancel()

    with caplog.at_level(logging.WARNING, logger="skippipe.runtime.node.messenger"):
        asyncio.run(main())
    assert got == [(Dead((4,)), 1)]
    rejected = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    assert len(rejected) == 3 and all("from node 3" in line for line in rejected)
