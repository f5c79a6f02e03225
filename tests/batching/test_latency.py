"""The online batch-latency model used for admission and Retry-After."""

from __future__ import annotations

import pytest

from batching import LatencyModel


def test_recovers_per_item_and_fixed_cost_from_clean_timings() -> None:
    model = LatencyModel()
    for size in (1, 4, 8, 16, 32, 2):
        model.observe(size, 0.005 + 0.0001 * size)
    assert model.per_item == pytest.approx(0.0001, rel=1e-6)
    assert model.fixed == pytest.approx(0.005, rel=1e-6)
    assert model.predict(64) == pytest.approx(0.0114, rel=1e-6)


def test_same_sized_batches_charge_everything_per_item() -> None:
    model = LatencyModel()
    for _ in range(5):
        model.observe(4, 0.040)
    assert (model.per_item, model.fixed) == (pytest.approx(0.010), 0.0)
    assert model.predict(8) == pytest.approx(0.080)  # pessimistic until sizes vary


def test_recent_batches_outweigh_old_ones() -> None:
    model = LatencyModel(decay=0.8)
    for size in (1, 8) * 10:
        model.observe(size, 0.001 * size)
    for size in (1, 8) * 10:
        model.observe(size, 0.003 * size)  # the device got three times slower
    assert model.per_item == pytest.approx(0.003, rel=0.05)


def test_not_trusted_before_a_few_batches() -> None:
    model = LatencyModel(min_observations=3)
    model.observe(1, 0.01)
    model.observe(2, 0.02)
    assert not model.ready
    model.observe(3, 0.03)
    assert model.ready


def test_drain_time_counts_full_batches_and_the_remainder() -> None:
    model = LatencyModel()
    for size in (1, 2, 4):
        model.observe(size, 0.010 + 0.001 * size)
    # 10 items in batches of 4: two full (0.014 each) and one of 2 (0.012).
    assert model.drain_seconds(10, max_batch_size=4) == pytest.approx(0.040)
    assert model.drain_seconds(10, max_batch_size=4, concurrency=2) == pytest.approx(0.020)
    assert model.drain_seconds(0, max_batch_size=4) == 0.0


def test_a_steady_run_of_same_sized_batches_keeps_the_last_known_split() -> None:
    """Under steady load every batch may be full; the fixed cost must not fade away."""
    model = LatencyModel(decay=0.5)
    for size in (1, 8, 4):
        model.observe(size, 0.005 + 0.0001 * size)
    for _ in range(200):  # the varied sizes weigh nothing any more
        model.observe(16, 0.005 + 0.0001 * 16)
    assert model.fixed == pytest.approx(0.005, rel=1e-3)
    assert model.per_item == pytest.approx(0.0001, rel=1e-3)
    for _ in range(200):  # the device slows down: the kept split follows today's timings
        model.observe(16, 2 * (0.005 + 0.0001 * 16))
    assert model.predict(16) == pytest.approx(0.0132, rel=1e-3)
    assert model.fixed > 0.005
