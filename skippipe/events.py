"""The routing events the simulator and the nodes write, one dataclass each, so a simulated
run's event log and a node run's log name the same happenings the same way and can be diffed.

Each event has a `name` (its "event" key in a JSONL log) and its fields; both writers add the
time ("t", scenario seconds in the simulator, wall seconds in a run) and the node that wrote it
("node"). `record` gives the simulator's dict, `EventWriter.write(e.name, **e.fields())` the
nodes' line: the same keys.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class Event:
    name: ClassVar[str]

    def fields(self) -> dict:
        """The event's fields as a log line carries them (lists, not tuples)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def record(self, t: float, node: int) -> dict:
        """The event as a log line: time, writer, name, fields."""
        return {"t": t, "node": node, "event": self.name, **self.fields()}


@dataclass(frozen=True)
class StageSetChosen(Event):
    """A swarm-skip origin chose the stages a microbatch visits after stage 0."""

    name: ClassVar[str] = "stage_set_chosen"
    iteration: int
    microbatch: int
    stages: tuple[int, ...]  # ascending; the order is chosen hop by hop


@dataclass(frozen=True)
class Rerouted(Event):
    """A repair rule sent a microbatch's forward past its planned hop (dead, blacklisted or slow)."""

    name: ClassVar[str] = "microbatch_rerouted"
    iteration: int
    microbatch: int
    hop: int  # the hop replaced
    avoided: int  # the planned node
    to: int  # the node chosen instead
    why: str = "online repair"


@dataclass(frozen=True)
class Routed(Event):
    """The path a routed microbatch took, as its loss's input reveals it."""

    name: ClassVar[str] = "routed"
    iteration: int
    microbatch: int
    attempt: int  # a restarted microbatch's attempt (0: its first)
    nodes: tuple[int, ...]


@dataclass(frozen=True)
class Restarted(Event):
    """A data node restarted a microbatch that touched a dead node, on a repaired path (the nodes
    only: the simulator's sessions take failures by whole iterations)."""

    name: ClassVar[str] = "microbatch_restarted"
    iteration: int
    microbatch: int
    attempt: int  # 1 for the first restart
    nodes: tuple[int, ...]  # the repaired path
