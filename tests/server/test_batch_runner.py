"""The batch runner: items in, one output row per item out, failures of either step to the caller."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from batching import BatchingConfig
from server.batch_runner import BatchRunner
from tests.fakes import GatedRuntime


def runner(runtime: GatedRuntime, **batching: object) -> BatchRunner:
    config = BatchingConfig(max_batch_size=8, **batching)  # type: ignore[arg-type]
    return BatchRunner("m", runtime, (4, 4, 3), np.dtype(np.uint8), config)


def image(first_pixel: int) -> np.ndarray:
    pixels = np.zeros((4, 4, 3), np.uint8)
    pixels[0, 0, 0] = first_pixel
    return pixels


def test_each_item_gets_its_own_row_in_order_and_padding_never_reaches_the_caller() -> None:
    runtime = GatedRuntime()
    batch_runner = runner(runtime, allowed_batch_sizes=[4, 8])

    async def scenario() -> list[np.ndarray]:
        try:
            return await batch_runner.run([image(1), image(2), image(3)])
        finally:
            await batch_runner.close(5)

    rows = asyncio.run(scenario())
    assert runtime.batch_sizes == [4]  # padded up to an allowed size
    assert [int(row.argmax()) for row in rows] == [1, 2, 3]


def test_a_model_failure_reaches_the_caller() -> None:
    batch_runner = runner(GatedRuntime(poison=13))

    async def scenario() -> None:
        try:
            with pytest.raises(RuntimeError, match="poisoned"):
                await batch_runner.run([image(1), image(13)])
        finally:
            await batch_runner.close(5)

    asyncio.run(scenario())


def test_a_batch_that_cannot_be_assembled_fails_without_running_the_model() -> None:
    runtime = GatedRuntime()
    batch_runner = runner(runtime)

    async def scenario() -> None:
        try:
            with pytest.raises(ValueError):
                await batch_runner.run([image(1), np.zeros((5, 5, 3), np.uint8)])
        finally:
            await batch_runner.close(5)

    asyncio.run(scenario())
    assert runtime.entered == 0
