"""The store's database connection: which async driver a URL gets, SQLite set up for several
processes sharing one file, and write transactions that take SQLite's write lock up front."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

# How long a SQLite writer waits for another process's write to end before "database is locked".
SQLITE_BUSY_TIMEOUT_MS = 15_000

ASYNC_DRIVERS = {"sqlite": "aiosqlite", "postgresql": "asyncpg", "postgres": "asyncpg"}

# Tries to switch a new SQLite file to WAL while other processes do the same (_use_wal).
WAL_ATTEMPTS = 20

_WRITE = "imgserve_write"
_FOREIGN_KEYS = "imgserve_foreign_keys"


def async_url(url: str) -> URL:
    """``sqlite:///FILE`` or ``postgresql://...`` with the async driver the store runs on."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend not in ASYNC_DRIVERS:
        raise ValueError(f"the result store runs on sqlite:/// or postgresql:// URLs, not {parsed.drivername}://")
    name = "postgresql" if backend == "postgres" else backend
    return parsed.set(drivername=f"{name}+{ASYNC_DRIVERS[backend]}")


def sqlite_file(url: URL) -> Path | None:
    """The database file of a SQLite URL; None for PostgreSQL or an in-memory database."""
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database)


def create_store_engine(url: str) -> AsyncEngine:
    parsed = async_url(url)
    path = sqlite_file(parsed)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(parsed)
        event.listen(engine.sync_engine, "connect", _sqlite_connect)
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
        return engine
    # A replica's connections outlive database restarts and failovers: test them on checkout.
    return create_async_engine(parsed, pool_pre_ping=True)


@asynccontextmanager
async def writing(engine: AsyncEngine, *, foreign_keys: bool = True) -> AsyncIterator[AsyncConnection]:
    """A transaction that will write: committed when the block ends, rolled back on an error.

    On SQLite it begins IMMEDIATE, taking the database's write lock before its first read, so
    what it reads cannot change under it (another process's writer waits on the busy timeout);
    a deferred transaction that reads and then writes fails at once instead when another process
    wrote in between. PostgreSQL's row locks need nothing extra.

    ``foreign_keys=False`` is for migrations on SQLite: a table altered in batch mode is copied
    and the old one dropped, and with foreign keys on, dropping ``jobs`` deletes every job item
    (ON DELETE CASCADE). The block must leave no dangling reference (it is checked before the
    commit), and the connection is then discarded rather than pooled with the checks off."""
    async with engine.connect() as connection:
        await connection.execution_options(**{_WRITE: True, _FOREIGN_KEYS: foreign_keys})
        try:
            async with connection.begin():
                yield connection
                if not foreign_keys and connection.dialect.name == "sqlite":
                    dangling = (await connection.exec_driver_sql("PRAGMA foreign_key_check")).fetchall()
                    if dangling:
                        raise RuntimeError(f"rows left referring to no row (table, rowid, parent): {dangling[:5]}")
        finally:
            if not foreign_keys:
                await connection.invalidate()


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # SQLAlchemy emits BEGIN itself (_sqlite_begin): the driver's own transaction handling begins
    # only before DML and always deferred.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        _use_wal(cursor)
        # Off by default in SQLite: job items go with their job (ON DELETE CASCADE).
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _use_wal(cursor: Any) -> None:
    """WAL: readers never block the writer, nor it them (N server processes share the file).

    The file keeps the mode once switched. Switching takes an exclusive lock, and connections
    racing to switch a new file (N workers starting at once) may be refused at once, busy timeout
    or not: SQLite answers "locked" rather than deadlock. So: retry, briefly. Blocking, but only
    on a database's first start, before the server serves anything."""
    for attempt in range(WAL_ATTEMPTS):
        cursor.execute("PRAGMA journal_mode")
        if cursor.fetchone()[0] == "wal":
            return
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or attempt == WAL_ATTEMPTS - 1:
                raise
            time.sleep(0.01 * (attempt + 1))


def _sqlite_begin(connection: Connection) -> None:
    options = connection.get_execution_options()
    if not options.get(_FOREIGN_KEYS, True):
        connection.exec_driver_sql("PRAGMA foreign_keys = OFF")  # a no-op inside a transaction
    connection.exec_driver_sql("BEGIN IMMEDIATE" if options.get(_WRITE, False) else "BEGIN")
