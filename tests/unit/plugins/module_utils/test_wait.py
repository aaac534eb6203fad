"""The one poll loop (_wait): looks, sleeps and deadlines, driven by a fake clock."""

from __future__ import annotations

import itertools
import time

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils._wait import (
    SYSTEM,
    Clock,
    Deadline,
    FakeClock,
    backoff,
    wait_until,
)


def after(looks: int, value="done"):
    """A predicate that is false ``looks`` times, then returns ``value``; ``calls`` counts the looks."""
    calls = []

    def predicate():
        calls.append(1)
        return value if len(calls) > looks else None

    predicate.calls = calls
    return predicate


def test_the_system_clock_is_the_machines_monotonic_time():
    before = time.monotonic()
    assert before <= SYSTEM.now() <= time.monotonic()
    seen = []
    assert Clock(lambda: 5.0, seen.append).now() == 5.0
    Clock(lambda: 5.0, seen.append).sleep(0.5)
    assert seen == [0.5]


def test_a_fake_clock_moves_only_when_slept_and_records_the_sleeps():
    woke = []
    clock = FakeClock(100.0, on_sleep=woke.append)
    assert clock.now() == clock.now() == 100.0
    clock.sleep(2)
    clock.sleep(0.5)
    assert clock.now() == 102.5 and clock.sleeps == [2, 0.5] and woke == [2, 0.5]


def test_the_predicates_value_is_returned_as_soon_as_it_is_truthy():
    clock = FakeClock()
    predicate = after(3, value={"address": "192.0.2.1"})
    assert wait_until(predicate, Deadline(10, clock), 0.25) == {"address": "192.0.2.1"}
    assert len(predicate.calls) == 4 and clock.sleeps == [0.25] * 3


def test_a_true_predicate_never_sleeps():
    clock = FakeClock()
    assert wait_until(lambda: True, Deadline(0, clock)) is True
    assert clock.sleeps == []


def test_the_deadline_passing_returns_none_after_a_last_look():
    clock = FakeClock()
    predicate = after(10**6)
    assert wait_until(predicate, Deadline(1, clock), 0.25) is None
    # looks at 0, 0.25, 0.5, 0.75 and 1.0: the look at the deadline itself still counts
    assert len(predicate.calls) == 5 and clock.sleeps == [0.25] * 4 and clock.now() == 1.0


def test_a_deadline_already_past_still_looks_once():
    clock = FakeClock()
    predicate = after(10**6)
    assert wait_until(predicate, Deadline(0, clock)) is None
    assert len(predicate.calls) == 1 and clock.sleeps == []


def test_without_cap_the_last_sleep_may_go_past_the_deadline():
    clock = FakeClock()
    assert wait_until(after(10**6), Deadline(5, clock), 2) is None
    assert clock.sleeps == [2, 2, 2] and clock.now() == 6


def test_with_cap_no_sleep_goes_past_the_deadline():
    clock = FakeClock()
    assert wait_until(after(10**6), Deadline(5, clock), 2, cap=True) is None
    assert clock.sleeps == [2, 2, 1] and clock.now() == 5


def test_intervals_can_back_off():
    assert list(itertools.islice(backoff(0.01, 0.25), 7)) == [0.01, 0.02, 0.04, 0.08, 0.16, 0.25, 0.25]
    clock = FakeClock()
    assert wait_until(after(4), Deadline(60, clock), backoff(0.01, 0.25)) == "done"
    assert clock.sleeps == [0.01, 0.02, 0.04, 0.08]


def test_a_deadline_without_timeout_never_passes():
    clock = FakeClock()
    deadline = Deadline(None, clock)
    clock.sleep(10**9)
    assert not deadline.passed() and deadline.remaining() == float("inf")
    assert wait_until(after(100), deadline, 3600) == "done" and len(clock.sleeps) == 101


def test_a_deadline_says_what_is_left_and_what_went_by():
    clock = FakeClock(50.0)
    deadline = Deadline(3, clock)
    assert deadline.start == 50.0 and deadline.remaining() == 3 and deadline.elapsed() == 0
    clock.sleep(2)
    assert not deadline.passed() and deadline.remaining() == 1 and deadline.elapsed() == 2
    clock.sleep(2)
    assert deadline.passed() and deadline.remaining() == 0.0 and deadline.elapsed() == 4
    assert deadline.passed(53.0) and not deadline.passed(52.9)


def test_a_failing_predicate_stops_the_wait():
    clock = FakeClock()

    def broken():
        raise ValueError("gone")

    with pytest.raises(ValueError, match="gone"):
        wait_until(broken, Deadline(10, clock))
    assert clock.sleeps == []
