"""The count of work ready soon after the runner frees, which the adaptive wait relies on."""

from __future__ import annotations

import pytest

from batching import ArrivalTracker


def test_nothing_is_expected_before_a_batch_has_finished() -> None:
    tracker = ArrivalTracker(window=0.002)
    tracker.arrival(1.0, 5)
    assert tracker.freed_at is None
    assert tracker.expected == 0.0


def test_counts_what_was_queued_and_what_arrived_within_the_window() -> None:
    tracker = ArrivalTracker(window=0.002)
    tracker.runner_freed(1.0, queued=3, busy_seconds=0.006)  # 3 arrived in 6 ms: 1 per 2 ms
    tracker.arrival(1.001, 2)
    tracker.arrival(1.002, 1)
    tracker.arrival(1.0021, 7)  # too late to have joined a batch held for the window
    tracker.runner_freed(1.010, queued=0, busy_seconds=0.005)
    assert tracker.freed_at == 1.010
    assert tracker.expected == 6.0  # 3 queued + 3 in the window
    assert tracker.surge == pytest.approx(2.0)  # 3 arrived where a steady stream brings 1


def test_answered_callers_coming_back_surge_and_a_steady_stream_does_not() -> None:
    closed, open_ = ArrivalTracker(window=0.002), ArrivalTracker(window=0.002)
    for k in range(30):
        # Closed loop: nothing arrives while the batch runs, all 16 come back at once after.
        closed.runner_freed(k * 0.006, queued=0, busy_seconds=0.005)
        closed.arrival(k * 0.006 + 0.0005, 16)
        # Open loop: one item per millisecond, whatever the runner does.
        open_.runner_freed(k * 0.006, queued=5, busy_seconds=0.005)
        open_.arrival(k * 0.006 + 0.001, 1)
        open_.arrival(k * 0.006 + 0.002, 1)
    assert (closed.expected, closed.surge) == (pytest.approx(16.0), pytest.approx(16.0))
    assert (open_.expected, open_.surge) == (pytest.approx(7.0), pytest.approx(0.0))


def test_the_averages_follow_the_load() -> None:
    tracker = ArrivalTracker(window=0.002, smoothing=0.5)
    tracker.runner_freed(0.0, queued=8, busy_seconds=0.005)
    tracker.runner_freed(1.0, queued=0, busy_seconds=0.005)  # first window: 8
    tracker.runner_freed(2.0, queued=0, busy_seconds=0.005)  # then nothing arrived: 8 -> 4
    assert tracker.expected == pytest.approx(4.0)


@pytest.mark.parametrize("kwargs", [{"window": -1.0}, {"window": 0.1, "smoothing": 0.0}])
def test_invalid_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ArrivalTracker(**kwargs)
