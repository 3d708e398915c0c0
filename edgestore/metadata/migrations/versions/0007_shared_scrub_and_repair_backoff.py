"""a shared, persistent scrub cursor under a lease; a backoff for chunks repair cannot rebuild

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27

Each node scrubbed the whole store on its own, from the start again after every restart (the
position was in memory): `job_cursors` holds the position, and the lease of the one node
scrubbing now. A queued chunk with fewer than k intact shards was read and logged again by
every upkeep round: `repair_queue.attempts` and `next_attempt` let the upkeep back off (and
claim a chunk while it repairs it). Existing entries are due at once, with no attempts yet.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("repair_queue", schema=None) as batch_op:
        batch_op.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("next_attempt", sa.Float(precision=53), nullable=True))
    op.create_table(
        "job_cursors",
        sa.Column("job", sa.String(length=32), nullable=False),
        sa.Column("position", sa.String(length=64), nullable=True),
        sa.Column("passes", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("owner", sa.String(length=64), nullable=True),
        sa.Column("lease_expires", sa.Float(precision=53), nullable=True),
        sa.Column("updated_at", sa.Float(precision=53), nullable=False),
        sa.PrimaryKeyConstraint("job", name=op.f("pk_job_cursors")),
    )


def downgrade() -> None:
    op.drop_table("job_cursors")
    with op.batch_alter_table("repair_queue", schema=None) as batch_op:
        batch_op.drop_column("next_attempt")
        batch_op.drop_column("attempts")
