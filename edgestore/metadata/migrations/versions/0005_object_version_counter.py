"""a per-object version counter: a deleted version's number is never handed out again

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27

Version numbers were the highest existing number + 1, so after deleting the latest version
the next upload took its number again, and a saved `?version=N` link named other bytes.
Existing objects start from their highest number (a number deleted before this migration
can still come back once; none can after).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("objects", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("last_version", sa.Integer(), nullable=False, server_default="0")
        )
    op.execute(
        "UPDATE objects SET last_version = COALESCE((SELECT MAX(v.version) FROM "
        "object_versions v WHERE v.object_id = objects.object_id), 0)"
    )


def downgrade() -> None:
    with op.batch_alter_table("objects", schema=None) as batch_op:
        batch_op.drop_column("last_version")
