"""index final uploads by their request, so that a retried final POST finds the first

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27

tus creation is not idempotent: a client whose final POST's answer was lost sends it again,
and each one made a version of the same partials. A final upload now records a digest of its
request (partials, bucket, key, metadata); a repeat finds the upload it made. Finals created
before this migration have none and are not found (a retry of one makes a version, as before).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("uploads", schema=None) as batch_op:
        batch_op.add_column(sa.Column("concat_key", sa.String(length=64), nullable=True))
        batch_op.create_index(batch_op.f("ix_uploads_concat_key"), ["concat_key"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("uploads", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_uploads_concat_key"))
        batch_op.drop_column("concat_key")
