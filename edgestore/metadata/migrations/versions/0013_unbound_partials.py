"""mark the partial uploads older releases wrote without a bucket, so their keys can go on

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-28

Releases before partials recorded the bucket they are for (a limited key's partials took its
bucket from then on) wrote every partial with none, and any key could touch one. The rule
since (a bucket-limited key touches only partials of its bucket) refused a key its own
paused parallel upload after an upgrade: 403 on every HEAD, PATCH and final. The partials
open or complete now are listed here; the first bucket-limited key to touch one binds it to
its bucket (metadata/unbound.py). A partial created after this has its bucket or none.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "unbound_partials",
        sa.Column("upload_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(
            ["upload_id"],
            ["uploads.upload_id"],
            name=op.f("fk_unbound_partials_upload_id_uploads"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("upload_id", name=op.f("pk_unbound_partials")),
    )
    op.execute(
        "INSERT INTO unbound_partials (upload_id) SELECT upload_id FROM uploads "
        "WHERE is_partial AND bucket IS NULL AND state IN ('open', 'complete')"
    )


def downgrade() -> None:
    op.drop_table("unbound_partials")
