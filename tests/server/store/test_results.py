"""Synchronous answers kept by request id, for their owner only."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.server.store.support import UtcClock, classification, open_store


def test_a_result_is_fetched_by_its_request_id_and_owner(database_url: str, clock: UtcClock) -> None:
    async def scenario() -> None:
        store = await open_store(database_url, clock)
        try:
            await store.save_result("req-1", "alice", classification("cat"), image=b"photo")
            assert await store.result("req-1", "alice") == classification("cat")
            assert await store.result("req-1", "mallory") is None
            assert await store.result("req-2", "alice") is None
        finally:
            await store.close()

    asyncio.run(scenario())


def test_two_clients_may_choose_the_same_request_id(database_url: str, clock: UtcClock) -> None:
    # X-Request-ID is the client's choice: one client's id must not reach another's answer.
    async def scenario() -> None:
        store = await open_store(database_url, clock)
        try:
            await store.save_result("retry-me", "alice", classification("cat"), image=None)
            await store.save_result("retry-me", "bob", classification("dog"), image=None)
            assert await store.result("retry-me", "alice") == classification("cat")
            assert await store.result("retry-me", "bob") == classification("dog")
            await store.save_result("retry-me", "alice", classification("lynx"), image=None)  # sent again
            assert await store.result("retry-me", "alice") == classification("lynx")
        finally:
            await store.close()

    asyncio.run(scenario())


def test_results_survive_a_restart(database_url: str, clock: UtcClock) -> None:
    async def scenario() -> None:
        store = await open_store(database_url, clock)
        await store.save_result("req-1", "alice", classification("cat"), image=None)
        await store.close()
        reopened = await open_store(database_url, clock)
        try:
            assert await reopened.result("req-1", "alice") == classification("cat")
        finally:
            await reopened.close()

    asyncio.run(scenario())


def test_nothing_is_saved_when_results_are_not_kept(database_url: str, clock: UtcClock, images_dir: Path) -> None:
    async def scenario() -> None:
        store = await open_store(database_url, clock, keep_results=False, keep_images=True, images_dir=images_dir)
        try:
            await store.save_result("req-1", "alice", classification("cat"), image=b"photo")
            assert await store.result("req-1", "alice") is None
            assert not images_dir.exists()
        finally:
            await store.close()

    asyncio.run(scenario())
