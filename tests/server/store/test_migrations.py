"""Opening the store migrates its database: from empty, again (nothing to do), by several
processes at once, and to exactly the tables that ``schema.py`` declares."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from server.settings import StoreSettings
from server.store import migrate
from server.store.connection import async_url, create_store_engine
from server.store.migrate import VERSION_TABLE
from server.store.schema import Base
from server.store.sql import SqlResultStore
from tests.server.store.support import UtcClock, new_job, open_store, scalar

TABLES = {"jobs", "job_items", "results", "kept_images", VERSION_TABLE}


async def _tables(url: str) -> set[str]:
    engine = create_store_engine(url)
    try:
        async with engine.connect() as connection:
            return set(await connection.run_sync(lambda sync: inspect(sync).get_table_names()))
    finally:
        await engine.dispose()


def test_opening_an_empty_database_creates_the_schema(database_url: str, clock: UtcClock) -> None:
    async def scenario() -> None:
        assert not TABLES & await _tables(database_url)
        store = await open_store(database_url, clock)
        await store.close()
        assert await _tables(database_url) >= TABLES
        assert await scalar(database_url, f"SELECT version_num FROM {VERSION_TABLE}") == "0001"

    asyncio.run(scenario())


def test_a_second_open_changes_nothing(database_url: str, clock: UtcClock) -> None:
    async def scenario() -> None:
        first = await open_store(database_url, clock)
        job_id = await first.create_job(new_job())
        await first.close()
        second = await open_store(database_url, clock)
        view = await second.job(job_id, "alice", items=(0, 1000))
        await second.close()
        assert view is not None and view.images_total == 3
        assert await scalar(database_url, f"SELECT count(*) FROM {VERSION_TABLE}") == 1

    asyncio.run(scenario())


def test_processes_starting_together_migrate_once(database_url: str, clock: UtcClock) -> None:
    # N workers (or replicas) open the same empty database at once: one migrates, the others wait
    # and find the schema current, instead of failing on "table already exists".
    async def scenario() -> None:
        stores = await asyncio.gather(*(open_store(database_url, clock) for _ in range(4)))
        for store in stores:
            await store.close()
        assert await scalar(database_url, f"SELECT version_num FROM {VERSION_TABLE}") == "0001"

    asyncio.run(scenario())


def test_the_migrations_build_what_schema_py_declares(database_url: str, clock: UtcClock) -> None:
    # Changing schema.py without a migration fails here (autogenerate would find a difference).
    def differences(connection: Connection) -> list[Any]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return [
            change
            for change in compare_metadata(context, Base.metadata)
            if not (change[0] == "remove_table" and change[1].name == VERSION_TABLE)
        ]

    async def scenario() -> None:
        store = await open_store(database_url, clock)
        await store.close()
        engine = create_store_engine(database_url)
        try:
            async with engine.connect() as connection:
                assert await connection.run_sync(differences) == []
        finally:
            await engine.dispose()

    asyncio.run(scenario())


def test_urls_get_the_async_drivers() -> None:
    assert async_url("sqlite:///data/imgserve.db").drivername == "sqlite+aiosqlite"
    assert async_url("postgresql://u:p@db/imgserve").drivername == "postgresql+asyncpg"
    assert async_url("postgres://u:p@db/imgserve").drivername == "postgresql+asyncpg"
    with pytest.raises(ValueError, match="sqlite"):
        async_url("mysql://u:p@db/imgserve")


def test_keeping_images_without_a_folder_is_refused_before_connecting() -> None:
    # PostgreSQL has no file to put images/ beside; nothing listens on port 1.
    settings = StoreSettings.model_validate({"keep_images": True})
    with pytest.raises(ValueError, match="images_dir"):
        asyncio.run(SqlResultStore.open("postgresql://nobody@127.0.0.1:1/none", settings))


LATER_MIGRATION = """
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    # What a later migration that changes jobs does: on SQLite, batch mode copies the table
    # and drops the old one.
    with op.batch_alter_table("jobs", recreate="always") as batch:
        batch.add_column(sa.Column("note", sa.Text(), nullable=True))
"""


def test_a_later_migration_that_rebuilds_jobs_keeps_their_items(
    database_url: str, clock: UtcClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With foreign keys on, SQLite would turn the drop of the old ``jobs`` into a delete of
    every job item (ON DELETE CASCADE): migrations run with them off, and checked."""
    migrations = tmp_path / "migrations"
    shutil.copytree(migrate.MIGRATIONS, migrations, ignore=shutil.ignore_patterns("__pycache__"))
    (migrations / "versions" / "0002_rebuild_jobs.py").write_text(LATER_MIGRATION)

    async def scenario() -> None:
        store = await open_store(database_url, clock)
        job_id = await store.create_job(new_job(images=3))
        await store.close()
        monkeypatch.setattr(migrate, "MIGRATIONS", migrations)
        reopened = await open_store(database_url, clock)
        view = await reopened.job(job_id, "alice", items=(0, 10))
        await reopened.close()
        assert await scalar(database_url, f"SELECT version_num FROM {VERSION_TABLE}") == "0002"
        assert await scalar(database_url, "SELECT count(*) FROM job_items") == 3
        assert view is not None and len(view.items) == 3

    asyncio.run(scenario())
