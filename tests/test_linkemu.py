"""Link emulation timing (pure, injected clock)."""

import asyncio
import time

import pytest

from skippipe.runtime.net.linkemu import LinkEmulator, LinkModel, LinkTimeline

TEST_DEADLINE_S = 10.0  # an async test that takes longer than this has hung


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, TEST_DEADLINE_S))


def test_one_message_timing_is_scaled():
    model = LinkModel(latency_s=0.01, bandwidth_bytes_per_s=1e6, per_hop_overhead_s=0.002, time_scale=2.0)
    res = LinkTimeline(model).reserve(500_000, now_s=10.0)
    assert res.start_s == 10.0
    assert res.link_free_s == pytest.approx(10.0 + 0.5 * 2)
    assert res.deliver_s == pytest.approx(10.0 + (0.5 + 0.01 + 0.002) * 2)


def test_messages_on_one_link_queue():
    timeline = LinkTimeline(LinkModel(0.05, 1e6, 0.0, 1.0))
    first, second = timeline.reserve(100_000, 0.0), timeline.reserve(100_000, 0.0)
    assert second.seq == first.seq + 1
    assert second.start_s == pytest.approx(first.link_free_s)
    assert second.deliver_s - first.deliver_s == pytest.approx(0.1)  # one serialization time


def test_idle_link_starts_at_once():
    timeline = LinkTimeline(LinkModel(0.05, 1e6, 0.0, 1.0))
    timeline.reserve(100_000, 0.0)
    later = timeline.reserve(100_000, 5.0)
    assert later.start_s == 5.0 and later.deliver_s == pytest.approx(5.15)


class FakeTime:
    """Injected clock: time stands still; sleep_until records the deadline and yields."""

    def __init__(self) -> None:
        self.now, self.waited = 0.0, []

    def clock(self) -> float:
        return self.now

    async def sleep_until(self, deadline_s: float) -> None:
        self.waited.append(deadline_s)
        await asyncio.sleep(0)


def test_two_links_run_in_parallel():
    model = LinkModel(0.05, 1e6, 0.0, 1.0)
    fake = FakeTime()
    emu = LinkEmulator(0, {1: model, 2: model}, clock=fake.clock, sleep_until=fake.sleep_until)

    async def send(dst):
        async with emu.transmit(dst, 100_000) as res:
            return res

    async def main():
        return await asyncio.gather(send(1), send(2), send(1))

    a, b, c = run(main())
    assert a.deliver_s == pytest.approx(0.15) and b.deliver_s == pytest.approx(0.15)
    assert c.deliver_s == pytest.approx(0.25)  # queued behind `a`, not behind `b`
    assert sorted(fake.waited) == pytest.approx([0.15, 0.15, 0.25])


def test_release_is_fifo_per_link_even_if_sleeps_end_out_of_order():
    ticks = iter(range(100))
    gates: dict[float, asyncio.Event] = {}
    order: list[int] = []

    async def sleep_until(deadline_s):
        await gates.setdefault(deadline_s, asyncio.Event()).wait()

    instant = LinkModel(0.0, 1e12, 0.0, 1.0)
    emu = LinkEmulator(0, {1: instant}, clock=lambda: float(next(ticks)), sleep_until=sleep_until)

    async def send():
        async with emu.transmit(1, 0) as res:
            order.append(res.seq)

    async def main():
        tasks = [asyncio.create_task(send()) for _ in range(3)]
        await asyncio.sleep(0)
        for t in (2.0, 1.0):
            gates.setdefault(t, asyncio.Event()).set()
        await asyncio.sleep(0)
        assert order == []  # 1 and 2 are due but wait for 0
        gates.setdefault(0.0, asyncio.Event()).set()
        await asyncio.wait_for(asyncio.gather(*tasks), TEST_DEADLINE_S)

    run(main())
    assert order == [0, 1, 2]


def test_cancelled_message_does_not_block_the_link():
    ticks = iter(range(100))

    async def sleep_until(deadline_s):
        if deadline_s == 0.0:
            await asyncio.Event().wait()  # the first message never becomes due

    instant = LinkModel(0.0, 1e12, 0.0, 1.0)
    emu = LinkEmulator(0, {1: instant}, clock=lambda: float(next(ticks)), sleep_until=sleep_until)
    sent: list[int] = []

    async def send():
        async with emu.transmit(1, 0) as res:
            sent.append(res.seq)

    async def main():
        first, second = asyncio.create_task(send()), asyncio.create_task(send())
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert sent == []  # the second waits for the first
        first.cancel()
        await asyncio.wait_for(second, TEST_DEADLINE_S)
        with pytest.raises(asyncio.CancelledError):
            await first

    run(main())
    assert sent == [1]


def test_real_clock_never_releases_early():
    model = LinkModel(latency_s=0.03, bandwidth_bytes_per_s=1e6, per_hop_overhead_s=0.01, time_scale=1.0)
    emu = LinkEmulator(0, {1: model})

    async def main():
        times = []

        async def send():
            async with emu.transmit(1, 20_000) as res:
                times.append((time.monotonic(), res))

        await asyncio.gather(send(), send())
        return times

    (t1, r1), (t2, r2) = run(main())
    assert t1 >= r1.deliver_s and t2 >= r2.deliver_s and t2 >= t1
    assert r2.deliver_s - r1.deliver_s == pytest.approx(0.02)


def test_unknown_destination_is_a_clear_error():
    emu = LinkEmulator(4, {1: LinkModel(0.0, 1.0, 0.0, 1.0)})
    with pytest.raises(KeyError, match="node 4 to node 9"):
        emu.model(9)
