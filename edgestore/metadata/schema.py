"""The metadata schema (SQLAlchemy Core), one for SQLite and PostgreSQL.

It extends the seed's `chunks` / `object_manifests` tables: a chunk is stored once, keyed by
its SHA-256; an object version is an ordered manifest of chunk references. Reference counts
change in the same transaction as the manifests that hold them. Times are Unix seconds.
Changes go through an Alembic migration in metadata/migrations/versions/.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

ChunkIdType = sa.String(64)
UuidType = sa.String(36)
Time = sa.Float(precision=53)

# Parameters fixed at first use (chunker, hash, EC), so changing the config never makes old
# data unreadable: each chunk also records how it was stored.
store_params = sa.Table(
    "store_params",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

chunks = sa.Table(
    "chunks",
    metadata,
    sa.Column("chunk_id", ChunkIdType, primary_key=True),
    sa.Column("raw_size", sa.BigInteger, nullable=False),
    sa.Column("stored_size", sa.BigInteger, nullable=False),
    sa.Column("compression", sa.String(8), nullable=False),
    sa.Column("layout", sa.String(8), nullable=False),
    sa.Column("ec_k", sa.SmallInteger, nullable=False),
    sa.Column("ec_m", sa.SmallInteger, nullable=False),
    sa.Column("shard_size", sa.BigInteger, nullable=False),
    sa.Column("generation", sa.String(16), nullable=False),
    sa.Column("inline_data", sa.LargeBinary, nullable=True),
    sa.Column("tier", sa.String(8), nullable=False, server_default="hot"),
    sa.Column("refcount", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("created_at", Time, nullable=False),
    sa.Column("zero_since", Time, nullable=True),
    sa.Column("last_read_at", Time, nullable=True),
    sa.Index(None, "refcount", "zero_since"),
    # gc pages through the unreferenced chunks in chunk id order (metadata/garbage.py): in
    # this index a page is its length, not a walk over every live chunk between two garbage
    # ones (the primary key's order). Partial, `WHERE refcount <= 0`, as migration 0014
    # makes it; the condition is not repeated here: a dialect's keyword (postgresql_where)
    # imports that dialect, in every CLI command on SQLite too (tests/cli/test_startup.py),
    # and alembic's comparison does not look at it.
    sa.Index("ix_chunks_unreferenced", "chunk_id"),
)

shards = sa.Table(
    "shards",
    metadata,
    sa.Column(
        "chunk_id",
        ChunkIdType,
        sa.ForeignKey("chunks.chunk_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("shard_index", sa.SmallInteger, primary_key=True),
    sa.Column("backend", sa.String(64), nullable=False),
    sa.Column("key", sa.String(255), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("checksum", sa.String(32), nullable=False),
    sa.Index(None, "backend", "key"),
)

objects = sa.Table(
    "objects",
    metadata,
    sa.Column("object_id", UuidType, primary_key=True),
    sa.Column("bucket", sa.String(63), nullable=False),
    sa.Column("key", sa.String(1024), nullable=False),
    sa.Column("created_at", Time, nullable=False),
    # The highest version number ever given out: a deleted version's number is not reused.
    sa.Column("last_version", sa.Integer, nullable=False, server_default="0"),
    sa.UniqueConstraint("bucket", "key"),
)

object_versions = sa.Table(
    "object_versions",
    metadata,
    sa.Column("version_id", UuidType, primary_key=True),
    sa.Column(
        "object_id",
        UuidType,
        sa.ForeignKey("objects.object_id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=True),  # null until computed (concatenations)
    sa.Column("manifest_digest", sa.String(64), nullable=False),
    sa.Column("content_type", sa.String(255), nullable=True),
    sa.Column("filename", sa.String(1024), nullable=True),
    sa.Column("user_metadata", sa.JSON, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("created_at", Time, nullable=False),
    sa.UniqueConstraint("object_id", "version"),
    sa.Index(None, "manifest_digest"),  # finding a known manifest's SHA-256 (native API)
)

# Per bucket, the size and number of its object versions, changed in the same transaction as
# every version insert and delete (metadata/totals.py): a quota check reads one row instead of
# summing every version of the bucket.
bucket_totals = sa.Table(
    "bucket_totals",
    metadata,
    sa.Column("bucket", sa.String(63), primary_key=True),
    sa.Column("bytes", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("versions", sa.BigInteger, nullable=False, server_default="0"),
)

manifests = sa.Table(
    "manifests",
    metadata,
    sa.Column(
        "version_id",
        UuidType,
        sa.ForeignKey("object_versions.version_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("chunk_id", ChunkIdType, sa.ForeignKey("chunks.chunk_id"), nullable=False),
    sa.Column("offset", sa.BigInteger, nullable=False),
    sa.Column("length", sa.BigInteger, nullable=False),
    # The whole-file SHA-256 state after this entry's bytes (null where the server did not
    # hash the stream itself): an upload that repeats this version's first chunks takes it
    # instead of hashing them again (engine/prefix.py).
    sa.Column("sha_state", sa.LargeBinary, nullable=True),
    sa.Index(None, "version_id", "offset"),
    sa.Index(None, "chunk_id"),
)

# An upload in progress (tus, native session or local put). Its durable bytes are the chunks
# in upload_parts plus the staged tail (the bytes after the last chunk boundary, in a small
# file on two data dirs: tail_key, tail_backends, tail_checksum); `hash_state` is the
# whole-file SHA-256 state at `committed_offset`, so the digest is ready when the last byte
# lands.
uploads = sa.Table(
    "uploads",
    metadata,
    sa.Column("upload_id", UuidType, primary_key=True),
    sa.Column("kind", sa.String(8), nullable=False),
    sa.Column("state", sa.String(12), nullable=False),
    sa.Column("bucket", sa.String(63), nullable=True),
    sa.Column("key", sa.String(1024), nullable=True),
    sa.Column("length", sa.BigInteger, nullable=True),  # null while deferred
    sa.Column("committed_offset", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("tail_length", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("tail_key", sa.String(255), nullable=True),
    sa.Column("tail_backends", sa.JSON, nullable=True),
    sa.Column("tail_checksum", sa.String(32), nullable=True),
    sa.Column("next_seq", sa.Integer, nullable=False, server_default="0"),
    sa.Column("hash_state", sa.LargeBinary, nullable=True),
    sa.Column("expected_sha256", sa.String(64), nullable=True),
    sa.Column("content_type", sa.String(255), nullable=True),
    sa.Column("filename", sa.String(1024), nullable=True),
    sa.Column("user_metadata", sa.JSON, nullable=False),
    sa.Column("is_partial", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("concat_of", sa.JSON, nullable=True),
    # A final's partials as its client named them (URLs, absolute or relative): tus echoes
    # them as received. Null for finals made before migration 0010.
    sa.Column("concat_urls", sa.JSON, nullable=True),
    # A final upload's request, hashed (metadata/concat.py): a retried POST finds it.
    sa.Column("concat_key", sa.String(64), nullable=True),
    # A native session's creation, by the client's Idempotency-Key scoped to its caller, and
    # what it asked for, hashed (metadata/idempotency.py): a retried POST finds the session.
    # Cleared when the session ends: the key lives as long as its session.
    sa.Column("idempotency_key", sa.String(64), nullable=True),
    sa.Column("idempotency_request", sa.String(64), nullable=True),
    sa.Column("version_id", UuidType, nullable=True),
    sa.Column("lock_owner", sa.String(64), nullable=True),
    sa.Column("lock_expires", Time, nullable=True),
    # When the current lease was taken: chunks its writer stored or found since then may be
    # unreferenced until its checkpoint, and gc spares them (maintenance/gc.py).
    sa.Column("lock_since", Time, nullable=True),
    sa.Column("created_at", Time, nullable=False),
    sa.Column("updated_at", Time, nullable=False),
    sa.Column("expires_at", Time, nullable=True),
    sa.Index(None, "state", "expires_at"),
    sa.Index(None, "concat_key"),
    sa.Index(None, "idempotency_key", unique=True),
)

upload_parts = sa.Table(
    "upload_parts",
    metadata,
    sa.Column(
        "upload_id",
        UuidType,
        sa.ForeignKey("uploads.upload_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("chunk_id", ChunkIdType, sa.ForeignKey("chunks.chunk_id"), nullable=False),
    sa.Column("offset", sa.BigInteger, nullable=False),
    sa.Column("length", sa.BigInteger, nullable=False),
    sa.Column("sha_state", sa.LargeBinary, nullable=True),  # as manifests.sha_state
    sa.Index(None, "chunk_id"),
)

# Chunks a native upload session holds (pinned: counted in refcount) before its manifest.
upload_pins = sa.Table(
    "upload_pins",
    metadata,
    sa.Column(
        "upload_id",
        UuidType,
        sa.ForeignKey("uploads.upload_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("chunk_id", ChunkIdType, sa.ForeignKey("chunks.chunk_id"), primary_key=True),
    # Deleting a chunk row makes PostgreSQL look its id up here (the foreign key): through
    # this index, not a scan of every pin per chunk gc deletes.
    sa.Index(None, "chunk_id"),
)

# Partial uploads an older release wrote without their bucket (any key could touch them
# then), marked by migration 0013: the first bucket-limited key to touch one binds it to its
# bucket (metadata/unbound.py). A partial created since is bound at creation, or is for none.
unbound_partials = sa.Table(
    "unbound_partials",
    metadata,
    sa.Column(
        "upload_id",
        UuidType,
        sa.ForeignKey("uploads.upload_id", ondelete="CASCADE"),
        primary_key=True,
    ),
)

# Chunks found with missing or corrupt shards on read or scrub, for repair.
repair_queue = sa.Table(
    "repair_queue",
    metadata,
    sa.Column("chunk_id", ChunkIdType, primary_key=True),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("bad_shards", sa.JSON, nullable=False),
    sa.Column("first_seen", Time, nullable=False),
    sa.Column("last_seen", Time, nullable=False),
    sa.Column("count", sa.Integer, nullable=False, server_default="1"),
    # Repairs that found fewer than k intact shards, and when the server's upkeep may try
    # again (it backs off; `edgestore repair` tries every chunk), or till when a node that is
    # repairing the chunk has it; null: now.
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt", Time, nullable=True),
)

# Where a background job that goes round the whole store (the scrub) is, shared by every
# node: one node at a time holds it (`owner` until `lease_expires`) and moves `position` (the
# last chunk id done; null: the start), so nodes take turns rather than each doing all of it,
# and a restart goes on where the last slice stopped.
job_cursors = sa.Table(
    "job_cursors",
    metadata,
    sa.Column("job", sa.String(32), primary_key=True),
    sa.Column("position", ChunkIdType, nullable=True),
    sa.Column("passes", sa.Integer, nullable=False, server_default="0"),
    sa.Column("owner", sa.String(64), nullable=True),
    sa.Column("lease_expires", Time, nullable=True),
    sa.Column("updated_at", Time, nullable=False),
)

# API keys (docs/security.md). Only the SHA-256 of a key is kept: keys are 256-bit random, so
# a fast hash is as good as a slow one. `scopes` is a comma-separated subset of
# upload,read,admin; `bucket` and `prefix`, when set, bound what the key may touch.
api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("key_id", sa.String(16), primary_key=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("secret_hash", sa.String(64), nullable=False),
    sa.Column("scopes", sa.String(64), nullable=False),
    sa.Column("bucket", sa.String(63), nullable=True),
    sa.Column("prefix", sa.String(1024), nullable=True),
    sa.Column("created_at", Time, nullable=False),
    sa.Column("revoked_at", Time, nullable=True),
    sa.Column("last_used_at", Time, nullable=True),
    sa.UniqueConstraint("secret_hash"),
)

# Secrets generated once per store and shared by every node (invariant 5: nodes are
# stateless), e.g. the HMAC key of pre-signed URLs. Kept apart from store_params, which are
# shown to operators.
server_secrets = sa.Table(
    "server_secrets",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(128), nullable=False),
    sa.Column("created_at", Time, nullable=False),
)

# One row (id 1): the store's epoch, raised at every gc round and after every backup; each
# data dir records the highest it has seen, so a database behind its data dirs is known for
# a restored older backup (maintenance/restore_guard.py).
store_epoch = sa.Table(
    "store_epoch",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("epoch", sa.BigInteger, nullable=False),
    sa.Column("advanced_at", Time, nullable=True),
)
