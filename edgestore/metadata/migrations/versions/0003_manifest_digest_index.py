"""index object versions by manifest digest

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25

The native API's finalize looks up a stored version with the same manifest digest, whose
whole-file SHA-256 it can then reuse instead of reading the object back.
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("object_versions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_object_versions_manifest_digest"), ["manifest_digest"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("object_versions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_object_versions_manifest_digest"))
