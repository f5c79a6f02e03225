"""The store's schema migrations (Alembic, in ``server/store/migrations``), run by the server
when it opens the store, and by hand to write a new one. No alembic.ini: the configuration is
made here.

A new migration, after changing ``server/store/schema.py``, from the repository root::

    python -m server.store.migrate revision -m "what changes" --autogenerate --url sqlite:///scratch.db

``--autogenerate`` first brings that database to head, then writes the difference between it and
the tables in schema.py to ``server/store/migrations/versions/NNNN_what_changes.py`` (read it: a
rename comes out as a drop and an add; then ``ruff format`` it). Without it, an empty migration
to fill in. Revision ids count up: 0001, 0002, ... Bring a database to head by hand (the server
does it when it opens the store)::

    python -m server.store.migrate upgrade --url postgresql://USER:PASSWORD@HOST/DB
"""

from __future__ import annotations

import argparse
import asyncio
import re
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from server.store.connection import create_store_engine, writing

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# Not alembic_version: the store may share a PostgreSQL database with other applications.
VERSION_TABLE = "imgserve_store_version"

# Any constant of our own: the PostgreSQL advisory lock that lets one replica migrate at a time.
_MIGRATION_LOCK = 0x696D6773_746F7265  # "imgstore"


def alembic_config(url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    if url is not None:
        # The options are ConfigParser values: a literal % (an escaped password) is doubled.
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


async def upgrade_to_head(engine: AsyncEngine) -> None:
    """Migrate the database to the newest schema, serialised with every other process doing the
    same (N workers or replicas start at once): the second finds the schema current."""
    async with writing(engine, foreign_keys=False) as connection:
        # On SQLite the write transaction's lock serialises migrations; PostgreSQL needs a lock
        # (its DDL is transactional, so the version table and the tables commit together).
        if connection.dialect.name == "postgresql":
            await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        await connection.run_sync(_run, "upgrade", None)


def next_revision_id() -> str:
    numbers = [int(match.group(1)) for p in MIGRATIONS.glob("versions/*.py") if (match := re.match(r"(\d+)_", p.name))]
    return f"{max(numbers, default=0) + 1:04d}"


def _run(connection: Connection, what: str, message: str | None) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    if what == "upgrade":
        command.upgrade(config, "head")
    else:
        command.revision(config, message=message, autogenerate=True, rev_id=next_revision_id())


async def _autogenerate(url: str, message: str) -> None:
    engine = create_store_engine(url)
    try:
        await upgrade_to_head(engine)
        async with writing(engine) as connection:
            await connection.run_sync(_run, "revision", message)
    finally:
        await engine.dispose()


async def _upgrade(url: str) -> None:
    engine = create_store_engine(url)
    try:
        await upgrade_to_head(engine)
    finally:
        await engine.dispose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m server.store.migrate", description="The result store's migrations."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    revision = commands.add_parser("revision", help="write a new migration")
    revision.add_argument("-m", "--message", required=True)
    revision.add_argument("--autogenerate", action="store_true", help="from the difference with --url's database")
    revision.add_argument("--url", help="a scratch database (sqlite:///FILE), needed with --autogenerate")
    upgrade = commands.add_parser("upgrade", help="bring a database to the newest schema")
    upgrade.add_argument("--url", required=True)
    args = parser.parse_args(argv)
    if args.command == "upgrade":
        asyncio.run(_upgrade(args.url))
    elif args.autogenerate:
        if not args.url:
            parser.error("--autogenerate needs --url")
        asyncio.run(_autogenerate(args.url, args.message))
    else:
        command.revision(alembic_config(), message=args.message, rev_id=next_revision_id())


if __name__ == "__main__":
    main()
