"""The store's tests run against a real SQLite file, and against a real PostgreSQL server when
``IMGSERVE_TEST_POSTGRES_URL`` names one (``postgresql://USER:PASSWORD@127.0.0.1:PORT/DB``; every
test drops the store's tables there first, so give it a database of its own)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from sqlalchemy import text

from server.store.connection import create_store_engine
from server.store.migrate import VERSION_TABLE
from tests.server.store.support import UtcClock

POSTGRES_URL_VARIABLE = "IMGSERVE_TEST_POSTGRES_URL"
STORE_TABLES = ("job_items", "jobs", "results", "kept_images", VERSION_TABLE)


async def _empty_postgres(url: str) -> None:
    engine = create_store_engine(url)
    try:
        async with engine.begin() as connection:
            for table in STORE_TABLES:
                await connection.execute(text(f"DROP TABLE IF EXISTS {table} CASCADE"))
    finally:
        await engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    url = os.environ.get(POSTGRES_URL_VARIABLE)
    if not url:
        pytest.skip(f"{POSTGRES_URL_VARIABLE} is not set: no PostgreSQL server to test against")
    asyncio.run(_empty_postgres(url))
    return url


@pytest.fixture
def clock() -> UtcClock:
    return UtcClock()


@pytest.fixture
def images_dir(tmp_path: Path) -> Path:
    return tmp_path / "kept"
