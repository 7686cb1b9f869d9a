"""Progress lines and time-left estimates for long work (prepare, training, evaluation)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable


class Progress:
    """Prints one progress line at most every `every` seconds (and always when forced)."""

    def __init__(self, label: str, every: float = 5.0, stream=None,  # type: ignore[no-untyped-def]
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.label = label
        self.every = every
        self.stream = stream or sys.stderr
        self.clock = clock
        self.t0 = clock()
        self._last = self.t0

    def elapsed(self) -> float:
        return self.clock() - self.t0

    def maybe(self, render: Callable[[float], str], force: bool = False) -> None:
        now = self.clock()
        if force or now - self._last >= self.every:
            self._last = now
            print(f"[{self.label}] {render(now - self.t0)}", file=self.stream, flush=True)


class Rate:
    """Throughput and time left from the recent pace, not the average since the start.

    The first unit of work is slow (imports, allocation, kernel compilation, warm-up), so an
    average since the start carries that cost to the end and overshoots the time left by a
    wide margin early on. The first update is therefore only a starting mark, and the pace is
    an exponential moving average of later updates, weighting time and work alike so that
    updates of different sizes (bytes of a chunk) count by their size.
    """

    def __init__(self, total: float, clock: Callable[[], float] = time.monotonic,
                 smoothing: float = 0.2) -> None:
        self.total = total
        self.clock = clock
        self.smoothing = smoothing
        self.done = 0.0
        self._start = clock()
        self._mark: tuple[float, float] | None = None  # (done, time) of the last update
        self._seconds = self._units = 0.0  # moving averages of time and work per update

    def update(self, done: float) -> None:
        """Record that `done` units (a running total) are finished now."""
        now = self.clock()
        if self._mark is not None and done > self._mark[0]:
            a = self.smoothing if self._units else 1.0
            self._seconds += a * (now - self._mark[1] - self._seconds)
            self._units += a * (done - self._mark[0] - self._units)
        if self._mark is None or done > self._mark[0]:
            self._mark = (done, now)
        self.done = done

    def _recent(self) -> float | None:
        return self._units / max(self._seconds, 1e-9) if self._units else None

    def per_second(self) -> float | None:
        """Units per second at the recent pace (before a second update: since the start)."""
        recent = self._recent()
        if recent is not None or self._mark is None:
            return recent
        return self.done / max(self._mark[1] - self._start, 1e-9)

    def remaining(self) -> float | None:
        """Seconds left at the recent pace; None until two updates were seen."""
        rate = self._recent()
        return None if rate is None else max(self.total - self.done, 0.0) / rate

    def eta(self) -> str:
        left = self.remaining()
        return "?" if left is None else duration(left)


def duration(seconds: float) -> str:
    """Short and parseable: 42s, 7m05s, 2h03m."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"

