"""record a native session's Idempotency-Key, so that a retried creation finds the session

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-27

A client whose `POST /v1/uploads` answer was lost sent it again and opened a second session;
the first, an orphan, reserved quota and pinned chunks until it expired. A session created
with an Idempotency-Key now records it (scoped to its caller, hashed) with a digest of the
request; a repeat finds the session. Unique: two concurrent creations with one key make one
session. Sessions created before this migration have none.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("uploads", schema=None) as batch_op:
        batch_op.add_column(sa.Column("idempotency_key", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("idempotency_request", sa.String(length=64), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_uploads_idempotency_key"), ["idempotency_key"], unique=True
        )


def downgrade() -> None:
    with op.batch_alter_table("uploads", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_uploads_idempotency_key"))
        batch_op.drop_column("idempotency_request")
        batch_op.drop_column("idempotency_key")
