"""a store epoch, mirrored in each data dir, so gc sees a restored (older) metadata backup

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-28

After an older backup of the metadata is restored, the shards of chunks written since have no
rows, and gc's orphan sweep took them for garbage. The epoch goes up at every gc round and
after every `edgestore backup`, and each data dir records the highest it has seen
(`.edgestore-epoch`): a database behind its data dirs is a restored one (maintenance/
restore_guard.py). Stores created before this begin at 0.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "store_epoch",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("advanced_at", sa.Float(precision=53), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_store_epoch")),
    )
    op.bulk_insert(table, [{"id": 1, "epoch": 0, "advanced_at": None}])


def downgrade() -> None:
    op.drop_table("store_epoch")
