"""record the partial upload URLs a final upload was created with, as the client sent them

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-28

tus concatenation: a HEAD of a final upload "MUST include the Upload-Concat header and its
value as received in the upload creation request"; the URLs "MAY be absolute or relative".
Only the partials' ids were kept, so relative URLs came back absolute. Finals created before
this migration have none recorded and are still described by absolute URLs.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("uploads", schema=None) as batch_op:
        batch_op.add_column(sa.Column("concat_urls", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("uploads", schema=None) as batch_op:
        batch_op.drop_column("concat_urls")
