"""keep_images: each distinct image once on disk, named by its content's hash."""

from __future__ import annotations

import asyncio
from pathlib import Path

from server.store.kept_images import sha256
from server.store.model import ItemOutcome, NewJob
from tests.server.store.support import UtcClock, classification, open_store, scalar

CAT = b"\x89PNG a cat"
DOG = b"\xff\xd8 a dog"


def files(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def test_each_distinct_image_is_kept_once(database_url: str, clock: UtcClock, images_dir: Path) -> None:
    async def scenario() -> None:
        store = await open_store(database_url, clock, keep_images=True, images_dir=images_dir)
        try:
            job = NewJob("alice", "efficientnet_lite0", 5, None, images=[CAT, DOG, CAT], filenames=["a", "b", "c"])
            job_id = await store.create_job(job)
            await store.claim_job("runner", lease_s=30)
            outcomes = [ItemOutcome(index, result=classification("x")) for index in range(3)]
            await store.save_outcomes(job_id, outcomes[:2])
            await store.save_outcomes(job_id, outcomes[2:])
            await store.save_result("req-1", "bob", classification("cat"), image=CAT)
            assert await scalar(database_url, "SELECT count(*) FROM kept_images") == 2
            # The bytes left the database once on disk.
            assert await scalar(database_url, "SELECT count(*) FROM job_items WHERE image IS NOT NULL") == 0
        finally:
            await store.close()

    asyncio.run(scenario())
    cat, dog = sha256(CAT), sha256(DOG)
    assert files(images_dir) == {f"{cat[:2]}/{cat}": CAT, f"{dog[:2]}/{dog}": DOG}


def test_images_are_not_kept_by_default(database_url: str, clock: UtcClock, images_dir: Path) -> None:
    async def scenario() -> None:
        store = await open_store(database_url, clock, images_dir=images_dir)
        try:
            job_id = await store.create_job(NewJob("alice", "m", 5, None, images=[CAT], filenames=[""]))
            await store.save_outcomes(job_id, [ItemOutcome(0, result=classification("cat"))])
            await store.save_result("req-1", "alice", classification("cat"), image=CAT)
            assert await scalar(database_url, "SELECT count(*) FROM kept_images") == 0
        finally:
            await store.close()

    asyncio.run(scenario())
    assert not images_dir.exists()


def test_sqlite_keeps_images_beside_its_file_by_default(tmp_path: Path, clock: UtcClock) -> None:
    async def scenario() -> None:
        store = await open_store(f"sqlite:///{tmp_path / 'data' / 'store.db'}", clock, keep_images=True)
        try:
            await store.save_result("req-1", "alice", classification("cat"), image=CAT)
        finally:
            await store.close()

    asyncio.run(scenario())
    digest = sha256(CAT)
    assert (tmp_path / "data" / "images" / digest[:2] / digest).read_bytes() == CAT
