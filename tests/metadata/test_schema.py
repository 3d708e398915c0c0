"""Every foreign key's referencing columns lead an index: deleting a referenced row (gc
deleting chunks) makes PostgreSQL look them up in the referencing table, a scan of it per
row deleted when no index leads with them."""

from __future__ import annotations

import sqlalchemy as sa

from edgestore.metadata.db import Database


def _leading_columns(inspector: sa.Inspector, table: str) -> list[list[str]]:
    """Column lists of the table's primary key, unique constraints and indexes."""
    found = [list(inspector.get_pk_constraint(table)["constrained_columns"])]
    found += [list(u["column_names"]) for u in inspector.get_unique_constraints(table)]
    found += [[c for c in i["column_names"] if c] for i in inspector.get_indexes(table)]
    return found


def test_every_foreign_key_leads_an_index(db_url: str) -> None:
    db = Database(db_url)
    try:
        db.migrate()
        with db.engine.connect() as conn:
            inspector = sa.inspect(conn)
            unindexed = []
            for table in inspector.get_table_names():
                indexed = _leading_columns(inspector, table)
                for fk in inspector.get_foreign_keys(table):
                    cols = list(fk["constrained_columns"])
                    if not any(ix[: len(cols)] == cols for ix in indexed):
                        unindexed.append(f"{table}({', '.join(cols)})")
        assert unindexed == []
    finally:
        db.close()
