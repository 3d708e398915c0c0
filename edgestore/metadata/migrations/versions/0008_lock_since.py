"""record when an upload's write lease was taken, so gc spares the chunks its writer holds

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27

An append stores chunks (rows with no reference yet) before the checkpoint that references
them; `gc --grace 0` (or any grace shorter than a long append) took them in between, and
the checkpoint failed. gc now spares every chunk unreferenced since the oldest live lease
was taken. Leases taken before this migration (or by an older node) have none.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("uploads", schema=None) as batch_op:
        batch_op.add_column(sa.Column("lock_since", sa.Float(precision=53), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("uploads", schema=None) as batch_op:
        batch_op.drop_column("lock_since")
