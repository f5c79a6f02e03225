"""Alembic's environment for the result store, run by every Alembic command that touches a
database (``server/store/migrate.py`` says how to run them).

The server hands in the connection it opened (``config.attributes["connection"]``, inside its
own write transaction: see ``migrate.upgrade_to_head``); with only a URL (``sqlalchemy.url``),
this opens one on the store's async engine; ``--sql`` (offline) writes the SQL out instead.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from server.store.connection import async_url, create_store_engine, writing
from server.store.migrate import VERSION_TABLE
from server.store.schema import Base


def run_migrations(connection: Connection) -> None:
    # Batch mode lets a later migration ALTER a SQLite table (it copies the table).
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        version_table=VERSION_TABLE,
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_on_url(url: str) -> None:
    engine = create_store_engine(url)
    try:
        async with writing(engine, foreign_keys=False) as connection:
            await connection.run_sync(run_migrations)
    finally:
        await engine.dispose()


def run_offline(url: str) -> None:
    context.configure(
        url=async_url(url),
        target_metadata=Base.metadata,
        version_table=VERSION_TABLE,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    config = context.config
    connection = config.attributes.get("connection")
    if connection is not None:
        run_migrations(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database: hand in a connection, or set sqlalchemy.url")
    if context.is_offline_mode():
        run_offline(url)
    else:
        asyncio.run(run_on_url(url))


main()
