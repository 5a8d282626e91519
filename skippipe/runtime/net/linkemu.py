"""Link emulation, applied on the sending side.

A message of B bytes on the directed link i -> j is handed to the real socket at

    deliver = start + (B / bandwidth) * time_scale + (latency + per_hop_overhead) * time_scale
    start   = max(now, time the link finished serializing the previous message)

so messages on one link queue behind each other (serialization occupies the link; latency and
the per-hop overhead are added after it), while different links run in parallel. The real
loopback wire then adds its own (small) time. All times are seconds on a monotonic clock.

`LinkTimeline` is the pure timing rule (no clock, no sleeping) and is what tests check;
`LinkEmulator` applies it with asyncio for one sending node, one timeline per destination, and
releases messages of a link strictly in FIFO order. emulation.py builds them from the scenario
and the run's time scale.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass

Clock = Callable[[], float]  # monotonic seconds
SleepUntil = Callable[[float], Awaitable[None]]  # wait until a clock time, seconds


@dataclass(frozen=True)
class LinkModel:
    """One directed link as emulated: seconds and bytes per second, before time scaling."""

    latency_s: float
    bandwidth_bytes_per_s: float
    per_hop_overhead_s: float
    time_scale: float  # emulated times are multiplied by this

    def serialization_s(self, nbytes: int) -> float:
        """Scaled seconds the link is busy sending `nbytes`."""
        return nbytes / self.bandwidth_bytes_per_s * self.time_scale

    def propagation_s(self) -> float:
        """Scaled seconds added after serialization: latency plus the per-hop overhead."""
        return (self.latency_s + self.per_hop_overhead_s) * self.time_scale

    def delay_s(self, nbytes: int) -> float:
        """Scaled seconds for one message on an idle link."""
        return self.serialization_s(nbytes) + self.propagation_s()


@dataclass(frozen=True)
class Reservation:
    """When one message uses a link (clock seconds)."""

    seq: int  # position on this link, from 0
    nbytes: int
    enqueued_s: float  # send was asked
    start_s: float  # link starts serializing it
    link_free_s: float  # serialization done; the next message may start
    deliver_s: float  # handed to the real socket


class LinkTimeline:
    """FIFO occupancy of one directed link. Pure timing: the caller passes the time."""

    def __init__(self, model: LinkModel) -> None:
        self.model = model
        self._free_s = float("-inf")
        self._next_seq = 0

    def reserve(self, nbytes: int, now_s: float) -> Reservation:
        """Book the link for a message of `nbytes` asked to be sent at `now_s`."""
        if nbytes < 0:
            raise ValueError(f"nbytes must be non-negative, got {nbytes}")
        start = max(now_s, self._free_s)
        self._free_s = start + self.model.serialization_s(nbytes)
        res = Reservation(
            self._next_seq, nbytes, now_s, start, self._free_s, self._free_s + self.model.propagation_s()
        )
        self._next_seq += 1
        return res


async def sleep_until_monotonic(deadline_s: float) -> None:
    """Wait until `time.monotonic()` reaches `deadline_s` (the asyncio loop uses that clock)."""
    delay = deadline_s - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


class _Link:
    """A timeline plus the future of the last message handed out, for FIFO release."""

    def __init__(self, model: LinkModel) -> None:
        self.timeline = LinkTimeline(model)
        self.tail: asyncio.Future | None = None


class LinkEmulator:
    """Sender-side link emulation for node `src`: one FIFO timeline per destination."""

    def __init__(
        self,
        src: int,
        models: Mapping[int, LinkModel],
        clock: Clock = time.monotonic,
        sleep_until: SleepUntil = sleep_until_monotonic,
    ) -> None:
        self.src = src
        self._links = {dst: _Link(m) for dst, m in models.items()}
        self._clock = clock
        self._sleep_until = sleep_until

    def model(self, dst: int) -> LinkModel:
        try:
            return self._links[dst].timeline.model
        except KeyError:
            raise KeyError(f"no emulated link from node {self.src} to node {dst}") from None

    @contextlib.asynccontextmanager
    async def transmit(self, dst: int, nbytes: int) -> AsyncIterator[Reservation]:
        """Wait until a message of `nbytes` may leave for `dst`, then run the body (the real
        write). Bodies on one link run one after another in the order transmit was entered;
        a cancelled message still occupies its slot of the link's time."""
        self.model(dst)  # clear error for an unknown destination
        link = self._links[dst]
        res = link.timeline.reserve(nbytes, self._clock())
        prev, mine = link.tail, asyncio.get_running_loop().create_future()
        link.tail = mine
        try:
            await self._sleep_until(res.deliver_s)
            if prev is not None:
                await asyncio.shield(prev)  # the previous message on this link is written first
            yield res
        finally:
            _release_after(prev, mine)


def _release_after(prev: asyncio.Future | None, mine: asyncio.Future) -> None:
    """Mark `mine` done once `prev` is, so later messages never overtake earlier ones."""

    def done(_: object = None) -> None:
        if not mine.done():
            mine.set_result(None)

    if prev is None or prev.done():
        done()
    else:
        prev.add_done_callback(done)
