"""whole-file SHA-256 states per manifest entry and upload part

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27

An upload whose first chunks are those of a stored version takes the version's running
SHA-256 state after them instead of hashing them again (engine/prefix.py). Older rows stay
null: their versions are never followed, their uploads hash as before.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("manifests", "upload_parts"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("sha_state", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    for table in ("manifests", "upload_parts"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("sha_state")
