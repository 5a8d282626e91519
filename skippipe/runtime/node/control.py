"""Typed CONTROL messages: what nodes tell each other besides tensors.

On the wire a control message is a CONTROL frame whose payload is a JSON object; which message
it is follows from its keys (the wire format predates these types and stays as it was):

  {"hello": 1}                                   Hello          start-up greeting
  {"finished": i, "dead": [...]}                 Finished       the sender ran its i iterations; its view
  {"dead": [3, 5]}                               Dead           gossip: these peers are dead
  {"restart": mb, "attempt": a, "iteration": i}  Restart        a data node re-routed microbatch mb
  {"reroute": mb, "iteration": i}                Reroute        online repair: mb will not come to you
  {"rejoin": 1}                                  RejoinRequest  a restarted node asks to come back
  {"rejoin_at": i, "node": n}                    RejoinAt       node n is planned in from iteration i
  {"welcome": i, "dead": [...], "steps": [...]}  Welcome        a sponsor's answer to a rejoining node
  {"load": i, "forward_us": f}                   Load           after iteration i: the sender's forward EMA
  {"move": n, "stage": s, "at": i}               MoveNotice     rebalancing: node n serves stage s from i on
  {"report": i, "loss_sum": x, "loss_count": c}  Report         a node's iteration i, for the run's summary

`decode` checks every field's type and range and raises ControlError for anything else: a
malformed message is rejected by its receiver, never trusted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, make_dataclass
from typing import ClassVar

from ...errors import SkipPipeError
from ..net.wire import Kind, Message, WireError

MAX_ID = 2**31 - 1  # iterations, microbatches, attempts, step counts
_NODE_FIELDS = {"dead", "node", "move"}  # fields that name nodes: must be nodes of the run


class ControlError(SkipPipeError):
    """A CONTROL message that is not one of the known, well-formed messages."""


def _flag(name: str, key: str, doc: str) -> type:
    """A message without fields: its key alone says it all."""
    return make_dataclass(
        name, [], namespace={"key": key, "__doc__": doc, "__module__": __name__}, frozen=True
    )


Hello = _flag("Hello", "hello", "Start-up greeting.")
RejoinRequest = _flag("RejoinRequest", "rejoin", "A restarted node asks to come back.")


@dataclass(frozen=True)
class Dead:
    key: ClassVar[str] = "dead"
    dead: tuple[int, ...]


@dataclass(frozen=True)
class Finished:
    key: ClassVar[str] = "finished"
    finished: int  # iterations the sender ran
    dead: tuple[int, ...]  # its membership view at the end: the end-of-run check compares them


@dataclass(frozen=True)
class Report:
    key: ClassVar[str] = "report"
    report: int  # iteration
    loss_sum: float  # the sender's summed microbatch losses (0 on nodes without data)
    loss_count: int


@dataclass(frozen=True)
class Restart:
    key: ClassVar[str] = "restart"
    restart: int  # microbatch
    attempt: int
    iteration: int


@dataclass(frozen=True)
class Reroute:
    key: ClassVar[str] = "reroute"
    reroute: int  # microbatch
    iteration: int


@dataclass(frozen=True)
class RejoinAt:
    key: ClassVar[str] = "rejoin_at"
    rejoin_at: int  # iteration
    node: int


@dataclass(frozen=True)
class Welcome:
    key: ClassVar[str] = "welcome"
    welcome: int  # iteration the rejoining node starts at
    dead: tuple[int, ...]
    steps: tuple[int, ...]  # AdamW step count per parameter of the stage


@dataclass(frozen=True)
class Load:
    key: ClassVar[str] = "load"
    load: int  # the iteration after which it was measured
    forward_us: int  # the sender's moving average of its forward time, scenario microseconds


@dataclass(frozen=True)
class MoveNotice:  # the announcement of a rebalance.Move
    key: ClassVar[str] = "move"
    move: int  # node
    stage: int  # the stage it serves from iteration `at` on
    at: int


Control = (
    Hello
    | Finished
    | RejoinRequest
    | Dead
    | Restart
    | Reroute
    | RejoinAt
    | Welcome
    | Load
    | MoveNotice
    | Report
)
# Welcome and Finished before Dead: they also carry a "dead" list
_TYPES = (Welcome, Finished, Restart, Reroute, RejoinAt, Dead, Load, MoveNotice, Report, Hello, RejoinRequest)
_FLAGS = (Hello, RejoinRequest)  # no fields: the key's value is 1
MAX_LOSS = 1e30  # a loss sum beyond this is no loss


def encode(ctrl: Control, sender: int) -> Message:
    body = (
        {ctrl.key: 1}
        if isinstance(ctrl, _FLAGS)
        else {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(ctrl).items()}
    )
    return Message.from_json(Kind.CONTROL, sender, body)


def decode(msg: Message, n_nodes: int = MAX_ID + 1) -> Control:
    """The typed message in a CONTROL frame; ControlError if it is malformed or names a node
    outside 0..n_nodes-1."""
    try:
        body = msg.json()
    except WireError as e:
        raise ControlError(f"control message from node {msg.sender}: {e}") from None
    cls = next((c for c in _TYPES if c.key in body), None)
    if cls is None:
        raise ControlError(f"control message from node {msg.sender}: unknown {sorted(body)[:3]}")
    names = {f.name for f in fields(cls)} or {cls.key}
    if set(body) != names:
        raise ControlError(
            f"control message from node {msg.sender}: {cls.__name__} needs keys "
            f"{sorted(names)}, got {sorted(body)}"
        )
    if cls in _FLAGS:
        return cls()
    return cls(
        **{
            f.name: _value(
                msg.sender, f.name, body[f.name], f.type, n_nodes - 1 if f.name in _NODE_FIELDS else MAX_ID
            )
            for f in fields(cls)
        }
    )


def _value(sender: int, name: str, value, typ: str, high: int):
    """Check one field: a finite float, an integer in 0..high, or a list of them (as a tuple)."""
    if typ == "float":
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not -MAX_LOSS <= value <= MAX_LOSS
        ):
            raise ControlError(
                f"control message from node {sender}: {name} must be a finite number, got {value!r}"
            )
        return float(value)
    if typ == "int":
        return _id(sender, name, value, high)
    if not isinstance(value, list):
        raise ControlError(f"control message from node {sender}: {name} must be a list, got {value!r}")
    return tuple(_id(sender, name, v, high) for v in value)


def _id(sender: int, name: str, value, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
        raise ControlError(
            f"control message from node {sender}: {name} must be an integer 0..{high}, got {value!r}"
        )
    return value
