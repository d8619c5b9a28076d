"""``--timeout N%``: stop a try that runs longer than N% of the median runtime of the successes.

GNU parallel's dynamic timeout: the limit follows the median runtime of the tries that
succeeded so far (no limit until one has), and applies to tries already running as well, so a
straggler started early is stopped as soon as the median says it runs too long. The median
is the exact lower median of every success (GNU parallel approximates it with a remedian).
A stopped try fails as timed out, and is retried like any failure (``--retries``).

(``asyncio`` is imported where the watching starts: parsing ``--timeout`` is part of the CLI's
start-up, which imports no event loop before it runs anything.)
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, TypeVar

import attrs

if TYPE_CHECKING:
    import asyncio

T = TypeVar("T")

_PERCENT = re.compile(r"(\d+(?:\.\d*)?|\.\d+)%")


@attrs.frozen
class Timeout:
    """``--timeout``: fixed seconds, or a percentage of the median runtime of the successes."""

    seconds: float | None = None
    percent: float | None = None


def parse_timeout(text: str) -> Timeout:
    """``30`` / ``2.5`` (seconds) or ``200%``; ``ValueError`` with the reason otherwise."""
    text = text.strip()
    match = _PERCENT.fullmatch(text)
    if match:
        percent = float(match.group(1))
        if not percent > 0:
            raise ValueError(f"{text!r}: a percentage must be above 0")
        return Timeout(percent=percent)
    try:
        seconds = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number of seconds or a percentage (N%)") from None
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"{text!r}: seconds must be above 0 and finite")
    return Timeout(seconds=seconds)


class RunningMedian:
    """The lower median of the values added so far (two heaps: O(log n) per value)."""

    def __init__(self) -> None:
        self._low: list[float] = []  # negated: a max-heap of the lower half (one more when odd)
        self._high: list[float] = []  # a min-heap of the upper half

    def __len__(self) -> int:
        return len(self._low) + len(self._high)

    def add(self, value: float) -> None:
        if self._low and value > -self._low[0]:
            heapq.heappush(self._high, value)
        else:
            heapq.heappush(self._low, -value)
        if len(self._low) > len(self._high) + 1:
            heapq.heappush(self._high, -heapq.heappop(self._low))
        elif len(self._high) > len(self._low):
            heapq.heappush(self._low, -heapq.heappop(self._high))

    @property
    def median(self) -> float | None:
        """The ``(n - 1) // 2``-th smallest value (GNU parallel's pick for an even count)."""
        return -self._low[0] if self._low else None


class DynamicTimeouts(Generic[T]):
    """Watches running tries (any ``T``: the runner's task handles) and calls ``stop(try,
    detail)`` for each that has run longer than ``percent`` % of the median success runtime.

    One timer on the loop, set for the oldest running try's deadline; tries are kept in the
    order they started, so each check stops at the first one still within the limit.
    """

    def __init__(self, percent: float, stop: Callable[[T, str], object]) -> None:
        self.percent = percent
        self._stop = stop
        self._median = RunningMedian()
        #: Running tries, oldest first, with their start (loop time), by the caller's token.
        self._running: dict[object, tuple[T, float]] = {}
        self._timer: asyncio.TimerHandle | None = None

    @property
    def limit(self) -> float | None:
        """Seconds a try may run now; ``None`` until a try has succeeded."""
        median = self._median.median
        return None if median is None else median * self.percent / 100

    def started(self, token: object, attempt: T) -> None:
        import asyncio

        self._running.pop(token, None)  # a new try of the same line goes to the end
        self._running[token] = (attempt, asyncio.get_running_loop().time())
        if len(self._running) == 1:
            self._arm()

    def ended(self, token: object, succeeded_in: float | None) -> None:
        """A try ended; ``succeeded_in``: its runtime if it succeeded (it joins the median)."""
        self._running.pop(token, None)
        if succeeded_in is not None:
            self._median.add(max(0.0, succeeded_in))
        self._arm()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self) -> None:
        self.close()
        limit = self.limit
        if limit is None or not self._running:
            return
        import asyncio

        _, started = next(iter(self._running.values()))
        loop = asyncio.get_running_loop()
        self._timer = loop.call_at(started + limit, self._check)

    def _check(self) -> None:
        import asyncio

        self._timer = None
        limit = self.limit
        assert limit is not None
        median = self._median.median
        now = asyncio.get_running_loop().time()
        while self._running:
            token, (attempt, started) = next(iter(self._running.items()))
            if now - started < limit:
                break
            del self._running[token]  # stopped once; its end comes later through ended()
            self._stop(
                attempt,
                f"timed out after {limit:.3g}s ({self.percent:g}% of the median runtime"
                f" of {len(self._median)} success(es), {median:.3g}s)",
            )
        self._arm()
