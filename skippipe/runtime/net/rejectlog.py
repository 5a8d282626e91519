"""The log of refused connections and frames, rate-limited: a flood of them (anyone can open
connections to a node's port) must not fill the disk with one line each.

The first refusal after a quiet interval is logged in full, so a single stray connection is
still explained; those that follow within the interval are only counted, and the interval ends
with one summary line (how many, by reason, the last one's detail). A steady flood thus writes
one line per interval, whatever its rate."""

from __future__ import annotations

import asyncio
import collections
import logging
import time

SUMMARY_INTERVAL_S = 10.0


class RejectionLog:
    """Counts every refusal (`counts`, for tests and reports) and logs them at a bounded rate."""

    def __init__(
        self, log: logging.LoggerAdapter | logging.Logger, interval_s: float = SUMMARY_INTERVAL_S
    ) -> None:
        self.log, self.interval_s = log, interval_s
        self.counts: collections.Counter[str] = collections.Counter()  # every refusal, ever
        self.held: collections.Counter[str] = collections.Counter()  # refusals not yet logged
        self.last_detail = ""
        self.quiet_from = 0.0  # monotonic time from which a refusal is logged in full
        self.timer: asyncio.TimerHandle | None = None

    def refused(self, reason: str, detail: str) -> None:
        self.counts[reason] += 1
        now = time.monotonic()
        if now >= self.quiet_from and not self.held:
            self.log.warning("rejected (%s): %s", reason, detail)
            self.quiet_from = now + self.interval_s
            return
        self.held[reason] += 1
        self.last_detail = detail
        if self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(self.quiet_from - now, self.flush)

    def flush(self) -> None:
        """Log what was held back in one line (and start a new interval)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.held:
            return
        total, reasons = sum(self.held.values()), ", ".join(f"{r} {n}" for r, n in self.held.most_common())
        self.log.warning(
            "rejected %d more connection(s) or frame(s) in the last %g s (%s); last: %s",
            total,
            self.interval_s,
            reasons,
            self.last_detail,
        )
        self.held.clear()
        self.quiet_from = time.monotonic() + self.interval_s
