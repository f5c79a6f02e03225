"""What the store's tests share: a clock moved by hand, a way to open a store, test jobs, and a
look straight into the database."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import text

from server.settings import StoreSettings
from server.store.connection import create_store_engine
from server.store.model import NewJob
from server.store.sql import SqlResultStore


class UtcClock:
    """The store's "now", moved by hand."""

    def __init__(self) -> None:
        self.current = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.current

    def advance(self, seconds: float) -> None:
        self.current += timedelta(seconds=seconds)


async def open_store(url: str, clock: UtcClock, callback_claim_s: float = 60.0, **settings: Any) -> SqlResultStore:
    return await SqlResultStore.open(
        url, StoreSettings.model_validate(settings), now=clock, callback_claim_s=callback_claim_s
    )


async def scalar(url: str, sql: str, **params: Any) -> Any:
    """One value read straight from the database: what the store keeps, not what it answers."""
    engine = create_store_engine(url)
    try:
        async with engine.connect() as connection:
            return (await connection.execute(text(sql), params)).scalar_one()
    finally:
        await engine.dispose()


def new_job(
    owner: str = "alice", images: int = 3, callback_url: str | None = None, model: str = "efficientnet_lite0"
) -> NewJob:
    payloads = [f"image {index}".encode() for index in range(images)]
    return NewJob(
        owner=owner,
        model=model,
        top_k=5,
        callback_url=callback_url,
        images=payloads,
        filenames=[f"{index}.jpg" for index in range(images)],
    )


def classification(label: str) -> dict[str, Any]:
    return {"model": "efficientnet_lite0", "predictions": [{"label": label, "score": 0.9}]}
