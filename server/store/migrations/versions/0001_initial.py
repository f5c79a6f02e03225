"""The result store's first schema: jobs and their items, stored results, kept images.

Revision ID: 0001
Revises:
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written out rather than imported from schema.py: a migration is a snapshot and must not change
# when the tables' declarations do.
TIME = sa.DateTime(timezone=True)
STATUS = sa.String(16)
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("owner", sa.Text(), nullable=False),
        sa.Column("status", STATUS, nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("top_k", sa.Integer(), nullable=False),
        sa.Column("callback_url", sa.Text(), nullable=True),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("started_at", TIME, nullable=True),
        sa.Column("finished_at", TIME, nullable=True),
        sa.Column("images_total", sa.Integer(), nullable=False),
        sa.Column("images_done", sa.Integer(), nullable=False),
        sa.Column("claimed_by", sa.Text(), nullable=True),
        sa.Column("lease_until", TIME, nullable=True),
        sa.Column("callback_status", STATUS, nullable=False),
        sa.Column("callback_attempts", sa.Integer(), nullable=False),
        sa.Column("callback_error", sa.Text(), nullable=True),
        sa.Column("callback_next_attempt_at", TIME, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_jobs"),
    )
    op.create_index("ix_jobs_status_created_at", "jobs", ["status", "created_at"])
    op.create_index("ix_jobs_owner_status", "jobs", ["owner", "status"])
    op.create_index(
        "ix_jobs_callback_status_callback_next_attempt_at", "jobs", ["callback_status", "callback_next_attempt_at"]
    )
    op.create_index("ix_jobs_finished_at", "jobs", ["finished_at"])

    op.create_table(
        "job_items",
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("item_index", sa.Integer(), nullable=False),
        sa.Column("filename", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("image", sa.LargeBinary(), nullable=True),
        sa.Column("status", STATUS, nullable=False),
        sa.Column("result", JSON, nullable=True),
        sa.Column("error", JSON, nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_job_items_job_id_jobs", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", "item_index", name="pk_job_items"),
    )

    op.create_table(
        "results",
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("owner", sa.Text(), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("result", JSON, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("request_id", "owner", name="pk_results"),
    )
    op.create_index("ix_results_created_at", "results", ["created_at"])

    op.create_table(
        "kept_images",
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("sha256", name="pk_kept_images"),
    )
    op.create_index("ix_kept_images_created_at", "kept_images", ["created_at"])


def downgrade() -> None:
    op.drop_table("kept_images")
    op.drop_table("results")
    op.drop_table("job_items")
    op.drop_table("jobs")
