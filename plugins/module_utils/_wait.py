# Private to the virtops.kvm collection: not a public API, may change without notice.
"""The one poll loop of the collection: look, sleep, look again, until a predicate holds or a deadline passes.

Every bounded wait (a domain shutting down, a boot marker, a block job, a
daemon, a guestmount exiting, the clone lock, addresses) goes through
``wait_until`` with a ``Deadline`` made from one ``Clock``: the clock is the
only time seam, passed as ``clock`` everywhere, and unit tests give a
``FakeClock`` whose time moves only when something sleeps. Callers keep their
own messages: ``wait_until`` returns the predicate's first truthy value, or
None when the deadline passed first, and the caller says what timed out.
Standard library only, so any layer may use it.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterable, Iterator


class Clock:
    """``now()`` and ``sleep(seconds)``: time.monotonic and time.sleep unless others are given."""

    def __init__(self, now: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        self._now = now
        self._sleep = sleep

    def now(self) -> float:
        return self._now()

    def sleep(self, seconds: float) -> None:
        self._sleep(seconds)


#: the real time of the machine the module runs on
SYSTEM = Clock()


class FakeClock(Clock):
    """A clock for tests: time starts at ``start`` and moves only by what is slept; ``sleeps`` records them."""

    def __init__(self, start: float = 0.0, on_sleep: Callable[[float], None] | None = None):
        super().__init__(self._read, self._advance)
        self.time = start
        self.sleeps: list[float] = []
        self.on_sleep = on_sleep

    def _read(self) -> float:
        return self.time

    def _advance(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.time += seconds
        if self.on_sleep is not None:
            self.on_sleep(seconds)


class Deadline:
    """``timeout`` seconds from now on ``clock`` (None: never passes); ``start`` is when it was made."""

    def __init__(self, timeout: float | None, clock: Clock = SYSTEM):
        self.clock = clock
        self.start = clock.now()
        self.at = math.inf if timeout is None else self.start + timeout

    def passed(self, now: float | None = None) -> bool:
        return (self.clock.now() if now is None else now) >= self.at

    def remaining(self) -> float:
        """Seconds left, never below 0 (for a ``join`` or ``wait`` that takes a timeout)."""
        return max(0.0, self.at - self.clock.now())

    def elapsed(self) -> float:
        return self.clock.now() - self.start


def backoff(first: float, most: float) -> Iterator[float]:
    """Intervals that start at ``first`` and double up to ``most`` (look soon, then back off)."""
    delay = first
    while True:
        yield delay
        delay = min(delay * 2, most)


def wait_until(
    predicate: Callable[[], object],
    deadline: Deadline,
    interval: float | Iterable[float] = 0.25,
    cap: bool = False,
):
    """The first truthy value of ``predicate()``, looked at every ``interval`` seconds; None once ``deadline`` passed.

    The predicate is always looked at once, even with a deadline already past.
    ``interval`` is a number or an iterable of successive intervals (``backoff``);
    with ``cap`` no sleep goes past the deadline.
    """
    intervals = itertools.repeat(interval) if isinstance(interval, (int, float)) else iter(interval)
    clock = deadline.clock
    while True:
        value = predicate()
        if value:
            return value
        now = clock.now()
        if deadline.passed(now):
            return None
        delay = next(intervals)
        clock.sleep(min(delay, max(deadline.at - now, 0)) if cap else delay)
