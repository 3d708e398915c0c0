"""Queries on credentials: API keys (stored as SHA-256 hashes) and server-wide secrets.

A key is `esk_` + 256 random bits; only its hash is stored, so a leaked database does not
leak usable keys. Keys are never deleted, only revoked, so "no key at all" means a new store.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from edgestore.errors import InvalidInput, NotFound
from edgestore.metadata.clock import now
from edgestore.metadata.db import Database
from edgestore.metadata.schema import api_keys, server_secrets

UPLOAD, READ, ADMIN = "upload", "read", "admin"
SCOPES = (UPLOAD, READ, ADMIN)
KEY_PREFIX = "esk_"
# Any constant: it only has to be the same on every node sharing a PostgreSQL database.
_PG_BOOTSTRAP_LOCK = 0x6B65_7973  # "keys"


@dataclass(frozen=True, slots=True)
class ApiKey:
    key_id: str
    name: str
    scopes: frozenset[str]
    bucket: str | None
    prefix: str | None
    created_at: float
    revoked_at: float | None
    last_used_at: float | None
    secret_hash: str = field(repr=False)

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def new_secret() -> str:
    """A fresh key: recognisable prefix (for secret scanners), 256 random bits."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


def _record(row: sa.Row) -> ApiKey:
    return ApiKey(
        key_id=row.key_id,
        name=row.name,
        scopes=frozenset(s for s in row.scopes.split(",") if s),
        bucket=row.bucket,
        prefix=row.prefix,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
        secret_hash=row.secret_hash,
    )


def create(
    conn: Connection,
    *,
    name: str,
    scopes: set[str] | frozenset[str],
    bucket: str | None = None,
    prefix: str | None = None,
    secret: str | None = None,
) -> tuple[ApiKey, str]:
    """Store a new key; returns it and its secret, which is never retrievable again."""
    unknown = set(scopes) - set(SCOPES)
    if not scopes or unknown:
        raise InvalidInput(
            f"scopes must be some of {', '.join(SCOPES)}"
            + (f"; unknown: {', '.join(sorted(unknown))}" if unknown else "")
        )
    if not name.strip() or len(name) > 255:
        raise InvalidInput("a key needs a name of 1-255 characters")
    secret = secret or new_secret()
    key_id = secrets.token_hex(6)
    conn.execute(
        api_keys.insert().values(
            key_id=key_id,
            name=name.strip(),
            secret_hash=hash_secret(secret),
            scopes=",".join(s for s in SCOPES if s in scopes),
            bucket=bucket,
            prefix=prefix or None,
            created_at=now(conn),
        )
    )
    return get(conn, key_id), secret


def get(conn: Connection, key_id: str) -> ApiKey:
    row = conn.execute(sa.select(api_keys).where(api_keys.c.key_id == key_id)).first()
    if row is None:
        raise NotFound(f"no API key with id {key_id!r} (see `edgestore keys list`)")
    return _record(row)


def by_hash(conn: Connection, secret_hash: str) -> ApiKey | None:
    row = conn.execute(sa.select(api_keys).where(api_keys.c.secret_hash == secret_hash)).first()
    return None if row is None else _record(row)


def list_keys(conn: Connection, *, include_revoked: bool = False) -> list[ApiKey]:
    query = sa.select(api_keys).order_by(api_keys.c.created_at, api_keys.c.key_id)
    if not include_revoked:
        query = query.where(api_keys.c.revoked_at.is_(None))
    return [_record(r) for r in conn.execute(query)]


def revoke(conn: Connection, key_id: str) -> ApiKey:
    key = get(conn, key_id)
    if key.revoked_at is None:
        revoke = api_keys.update().where(api_keys.c.key_id == key_id)
        conn.execute(revoke.values(revoked_at=now(conn)))
    return get(conn, key_id)


def touch(conn: Connection, key_id: str, t: float) -> None:
    conn.execute(api_keys.update().where(api_keys.c.key_id == key_id).values(last_used_at=t))


def ensure(
    conn: Connection, *, name: str, secret: str, scopes: frozenset[str]
) -> tuple[ApiKey, bool]:
    """The key with this secret, created if missing; (key, created). Never un-revokes one."""
    existing = by_hash(conn, hash_secret(secret))
    if existing is not None:
        return existing, False
    key, _ = create(conn, name=name, scopes=scopes, secret=secret)
    return key, True


def bootstrap(db: Database, conn: Connection) -> tuple[ApiKey, str] | None:
    """On a store with no key at all, create an admin key and return it with its secret.

    Serialised across nodes (SQLite: BEGIN IMMEDIATE; PostgreSQL: an advisory lock held to
    the end of the transaction), so exactly one node creates it and prints it.
    """
    if db.is_postgres:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_BOOTSTRAP_LOCK})
    if conn.execute(sa.select(sa.func.count()).select_from(api_keys)).scalar_one():
        return None
    return create(conn, name="bootstrap admin", scopes=frozenset({ADMIN}))


def server_secret(db: Database, conn: Connection, name: str) -> bytes:
    """A 256-bit secret shared by every node: generated by the first one to ask."""
    conn.execute(
        db.insert(server_secrets)
        .values(name=name, value=secrets.token_hex(32), created_at=now(conn))
        .on_conflict_do_nothing(index_elements=[server_secrets.c.name])
    )
    value = conn.execute(
        sa.select(server_secrets.c.value).where(server_secrets.c.name == name)
    ).scalar_one()
    return bytes.fromhex(value)
