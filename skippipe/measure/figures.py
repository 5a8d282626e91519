"""What a measurement produces: settings, the compute task, per-node and per-link figures, and
the statistics that turn repetitions into one figure (median, bandwidth, significant digits)."""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import SkipPipeError

MIB = 1024**2
GIB = 1024**3
TRANSFER_FLOOR_FRACTION = 0.1  # elapsed - RTT counts as at least this share of the elapsed time
SIGNIFICANT_DIGITS = 6  # figures written to the scenario file


class MeasureError(SkipPipeError):
    """A measurement that could not be completed (peer silent, gone, or failing)."""


@dataclass(frozen=True)
class Settings:
    """How much to measure. Times in seconds, sizes in bytes."""

    repeat: int = 5  # timed repetitions of every measurement (the median is kept)
    warmup: int = 1  # untimed repetitions before them
    payload_bytes: int = 4 * MIB  # bandwidth probe size
    timeout_s: float = 900.0  # the whole measurement, start-up included

    def __post_init__(self) -> None:
        if self.repeat < 1 or self.warmup < 0 or self.payload_bytes < 1 or self.timeout_s <= 0:
            raise SkipPipeError("measure: repeat and payload must be >= 1, warmup >= 0, timeout > 0")


@dataclass(frozen=True)
class ComputeTask:
    """What every node times: one stage of `model` (a ModelConfig as a dict) in `n_stages`."""

    model: dict
    n_stages: int
    samples: int  # sequences per timed forward/backward
    seed: int


@dataclass(frozen=True)
class NodeFigures:
    """One node's compute measurement (seconds per sample per layer, per timed repetition)."""

    node: int
    host: str
    device: str
    device_name: str
    samples: int
    layers: int
    forward_s: tuple[float, ...]
    backward_s: tuple[float, ...]
    peak_memory_bytes: int
    memory_kind: str  # how peak_memory_bytes was obtained
    activation_bytes: int  # saved for backward by one forward of `samples` sequences
    capacity_bytes: int  # device memory (CUDA) or host memory (CPU); 0 when unknown
    threads: int = 1  # torch CPU threads during the measurement

    @property
    def forward_median_s(self) -> float:
        return median(self.forward_s)

    @property
    def backward_median_s(self) -> float:
        return median(self.backward_s)


@dataclass(frozen=True)
class LinkFigures:
    """Measurements of the link a -> b (a < b): RTTs and transfer times in seconds."""

    a: int
    b: int
    rtt_s: tuple[float, ...]
    transfer_s: tuple[float, ...]  # send of the payload until its acknowledgement
    payload_bytes: int

    @property
    def rtt_median_s(self) -> float:
        return median(self.rtt_s)

    @property
    def latency_s(self) -> float:
        return self.rtt_median_s / 2

    @property
    def bandwidth_bytes_per_s(self) -> float:
        return bandwidth(self.payload_bytes, self.transfer_s, self.rtt_median_s)


@dataclass(frozen=True)
class Measurements:
    nodes: tuple[NodeFigures, ...]  # by node id
    links: tuple[LinkFigures, ...]  # every unordered pair, a < b
    wall_s: float


def link_from_dict(d: dict) -> LinkFigures:
    """LinkFigures from their JSON form (dataclasses.asdict sent over the wire)."""
    return LinkFigures(
        int(d["a"]),
        int(d["b"]),
        tuple(map(float, d["rtt_s"])),
        tuple(map(float, d["transfer_s"])),
        int(d["payload_bytes"]),
    )


def node_from_dict(d: dict) -> NodeFigures:
    """NodeFigures from their JSON form (dataclasses.asdict sent over the wire)."""
    fields = {f.name: d[f.name] for f in dataclasses.fields(NodeFigures)}
    fields["forward_s"], fields["backward_s"] = tuple(d["forward_s"]), tuple(d["backward_s"])
    return NodeFigures(**fields)


# ----------------------------------------------------------------------------------------------
# Aggregation.


def median(values: Sequence[float]) -> float:
    """Median of a non-empty sequence."""
    if not values:
        raise MeasureError("no measurements to aggregate")
    return float(statistics.median(values))


def bandwidth(payload_bytes: int, transfer_s: Sequence[float], rtt_s: float) -> float:
    """Bytes per second: median over transfers of payload / (elapsed - RTT). The elapsed time
    includes the data's first-byte latency and the acknowledgement's way back (one RTT); jitter
    can make the difference tiny, so it counts as at least TRANSFER_FLOOR_FRACTION of it."""
    rates = [payload_bytes / max(t - rtt_s, t * TRANSFER_FLOOR_FRACTION) for t in transfer_s]
    return median(rates)


def significant(x: float, digits: int = SIGNIFICANT_DIGITS) -> float:
    """x rounded to `digits` significant digits (positive stays positive)."""
    return float(f"{x:.{digits}g}")
