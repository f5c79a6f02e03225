"""Inserts that may meet a row already there (another process, or the same request again). Both
dialects spell it ON CONFLICT; SQLAlchemy has one construct per dialect."""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from server.store.schema import KeptImage, StoredResult


def _insert(connection: AsyncConnection) -> Any:
    return postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert


async def upsert_result(connection: AsyncConnection, row: dict[str, Any]) -> None:
    """A stored result, replacing the one of the same request id and owner (a request sent again)."""
    statement = _insert(connection)(StoredResult).values(**row)
    replace = {name: row[name] for name in ("created_at", "result", "sha256")}
    await connection.execute(statement.on_conflict_do_update(index_elements=["request_id", "owner"], set_=replace))


async def insert_kept_images(connection: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    """A row per distinct image: one kept before (here or by another process) keeps its row, with
    its time moved on: pruning by size goes oldest first, and an image in use again is not old."""
    if rows:
        insert = _insert(connection)(KeptImage)
        statement = insert.on_conflict_do_update(
            index_elements=["sha256"], set_={"created_at": insert.excluded.created_at}
        )
        await connection.execute(statement, rows)
