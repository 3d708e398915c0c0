"""index what gc's deletes and listing look chunks up by: pins by chunk, unreferenced chunks

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-28

Deleting a chunk row makes PostgreSQL check each foreign key naming chunks; upload_pins had
its chunk_id only second in its primary key, so every chunk gc deleted scanned every pin. gc
now pages through the unreferenced chunks in chunk id order: ix_chunks_unreferenced (partial,
only those rows) gives a page at its own cost, not a walk over the live chunks between.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

UNREFERENCED = sa.text("refcount <= 0")


def upgrade() -> None:
    with op.batch_alter_table("upload_pins", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_upload_pins_chunk_id"), ["chunk_id"], unique=False)
    with op.batch_alter_table("chunks", schema=None) as batch_op:
        batch_op.create_index(
            "ix_chunks_unreferenced",
            ["chunk_id"],
            unique=False,
            sqlite_where=UNREFERENCED,
            postgresql_where=UNREFERENCED,
        )


def downgrade() -> None:
    with op.batch_alter_table("chunks", schema=None) as batch_op:
        batch_op.drop_index("ix_chunks_unreferenced")
    with op.batch_alter_table("upload_pins", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_upload_pins_chunk_id"))
