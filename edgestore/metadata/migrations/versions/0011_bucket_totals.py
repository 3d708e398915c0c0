"""per-bucket totals of the versions' sizes, so a quota check does not sum every version

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-28

With a quota on, every upload creation (and length declaration, and deferred-length append)
summed the size of every version in its bucket: ~50-60 ms for 200k versions, held under the
bucket's advisory lock on PostgreSQL. `bucket_totals` keeps the sum (and the count) per
bucket, changed with each version insert and delete; filled here from the existing versions.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bucket_totals",
        sa.Column("bucket", sa.String(length=63), nullable=False),
        sa.Column("bytes", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("versions", sa.BigInteger(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("bucket", name=op.f("pk_bucket_totals")),
    )
    op.execute(
        "INSERT INTO bucket_totals (bucket, bytes, versions) "
        "SELECT o.bucket, COALESCE(SUM(v.size), 0), COUNT(*) "
        "FROM object_versions v JOIN objects o ON o.object_id = v.object_id GROUP BY o.bucket"
    )


def downgrade() -> None:
    op.drop_table("bucket_totals")
