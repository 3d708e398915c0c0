"""Alembic environment: runs on the connection edgestore hands over (see metadata/db.py)."""

from __future__ import annotations

from alembic import context

from edgestore.metadata.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("edgestore runs its migrations itself at start; there is no alembic.ini")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
