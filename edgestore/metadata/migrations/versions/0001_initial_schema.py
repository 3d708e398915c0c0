"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-25 19:18:20.733664
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "chunks",
        sa.Column("chunk_id", sa.String(length=64), nullable=False),
        sa.Column("raw_size", sa.BigInteger(), nullable=False),
        sa.Column("stored_size", sa.BigInteger(), nullable=False),
        sa.Column("compression", sa.String(length=8), nullable=False),
        sa.Column("layout", sa.String(length=8), nullable=False),
        sa.Column("ec_k", sa.SmallInteger(), nullable=False),
        sa.Column("ec_m", sa.SmallInteger(), nullable=False),
        sa.Column("shard_size", sa.BigInteger(), nullable=False),
        sa.Column("generation", sa.String(length=16), nullable=False),
        sa.Column("inline_data", sa.LargeBinary(), nullable=True),
        sa.Column("tier", sa.String(length=8), server_default="hot", nullable=False),
        sa.Column("refcount", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("created_at", sa.Float(precision=53), nullable=False),
        sa.Column("zero_since", sa.Float(precision=53), nullable=True),
        sa.Column("last_read_at", sa.Float(precision=53), nullable=True),
        sa.PrimaryKeyConstraint("chunk_id", name=op.f("pk_chunks")),
    )
    with op.batch_alter_table("chunks", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_chunks_refcount_zero_since"), ["refcount", "zero_since"], unique=False
        )

    op.create_table(
        "objects",
        sa.Column("object_id", sa.String(length=36), nullable=False),
        sa.Column("bucket", sa.String(length=63), nullable=False),
        sa.Column("key", sa.String(length=1024), nullable=False),
        sa.Column("created_at", sa.Float(precision=53), nullable=False),
        sa.PrimaryKeyConstraint("object_id", name=op.f("pk_objects")),
        sa.UniqueConstraint("bucket", "key", name=op.f("uq_objects_bucket_key")),
    )
    op.create_table(
        "repair_queue",
        sa.Column("chunk_id", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("bad_shards", sa.JSON(), nullable=False),
        sa.Column("first_seen", sa.Float(precision=53), nullable=False),
        sa.Column("last_seen", sa.Float(precision=53), nullable=False),
        sa.Column("count", sa.Integer(), server_default="1", nullable=False),
        sa.PrimaryKeyConstraint("chunk_id", name=op.f("pk_repair_queue")),
    )
    op.create_table(
        "store_params",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_store_params")),
    )
    op.create_table(
        "uploads",
        sa.Column("upload_id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("state", sa.String(length=12), nullable=False),
        sa.Column("bucket", sa.String(length=63), nullable=True),
        sa.Column("key", sa.String(length=1024), nullable=True),
        sa.Column("length", sa.BigInteger(), nullable=True),
        sa.Column("committed_offset", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("tail_length", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("tail_key", sa.String(length=255), nullable=True),
        sa.Column("tail_backends", sa.JSON(), nullable=True),
        sa.Column("tail_checksum", sa.String(length=32), nullable=True),
        sa.Column("next_seq", sa.Integer(), server_default="0", nullable=False),
        sa.Column("hash_state", sa.LargeBinary(), nullable=True),
        sa.Column("expected_sha256", sa.String(length=64), nullable=True),
        sa.Column("content_type", sa.String(length=255), nullable=True),
        sa.Column("filename", sa.String(length=1024), nullable=True),
        sa.Column("user_metadata", sa.JSON(), nullable=False),
        sa.Column("is_partial", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("concat_of", sa.JSON(), nullable=True),
        sa.Column("version_id", sa.String(length=36), nullable=True),
        sa.Column("lock_owner", sa.String(length=64), nullable=True),
        sa.Column("lock_expires", sa.Float(precision=53), nullable=True),
        sa.Column("created_at", sa.Float(precision=53), nullable=False),
        sa.Column("updated_at", sa.Float(precision=53), nullable=False),
        sa.Column("expires_at", sa.Float(precision=53), nullable=True),
        sa.PrimaryKeyConstraint("upload_id", name=op.f("pk_uploads")),
    )
    with op.batch_alter_table("uploads", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_uploads_state_expires_at"), ["state", "expires_at"], unique=False
        )

    op.create_table(
        "object_versions",
        sa.Column("version_id", sa.String(length=36), nullable=False),
        sa.Column("object_id", sa.String(length=36), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("manifest_digest", sa.String(length=64), nullable=False),
        sa.Column("content_type", sa.String(length=255), nullable=True),
        sa.Column("filename", sa.String(length=1024), nullable=True),
        sa.Column("user_metadata", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.Float(precision=53), nullable=False),
        sa.ForeignKeyConstraint(
            ["object_id"],
            ["objects.object_id"],
            name=op.f("fk_object_versions_object_id_objects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("version_id", name=op.f("pk_object_versions")),
        sa.UniqueConstraint(
            "object_id", "version", name=op.f("uq_object_versions_object_id_version")
        ),
    )
    op.create_table(
        "shards",
        sa.Column("chunk_id", sa.String(length=64), nullable=False),
        sa.Column("shard_index", sa.SmallInteger(), nullable=False),
        sa.Column("backend", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("checksum", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(
            ["chunk_id"],
            ["chunks.chunk_id"],
            name=op.f("fk_shards_chunk_id_chunks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("chunk_id", "shard_index", name=op.f("pk_shards")),
    )
    with op.batch_alter_table("shards", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_shards_backend_key"), ["backend", "key"], unique=False)

    op.create_table(
        "upload_parts",
        sa.Column("upload_id", sa.String(length=36), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("chunk_id", sa.String(length=64), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("length", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["chunk_id"], ["chunks.chunk_id"], name=op.f("fk_upload_parts_chunk_id_chunks")
        ),
        sa.ForeignKeyConstraint(
            ["upload_id"],
            ["uploads.upload_id"],
            name=op.f("fk_upload_parts_upload_id_uploads"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("upload_id", "seq", name=op.f("pk_upload_parts")),
    )
    with op.batch_alter_table("upload_parts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_upload_parts_chunk_id"), ["chunk_id"], unique=False)

    op.create_table(
        "upload_pins",
        sa.Column("upload_id", sa.String(length=36), nullable=False),
        sa.Column("chunk_id", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["chunk_id"], ["chunks.chunk_id"], name=op.f("fk_upload_pins_chunk_id_chunks")
        ),
        sa.ForeignKeyConstraint(
            ["upload_id"],
            ["uploads.upload_id"],
            name=op.f("fk_upload_pins_upload_id_uploads"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("upload_id", "chunk_id", name=op.f("pk_upload_pins")),
    )
    op.create_table(
        "manifests",
        sa.Column("version_id", sa.String(length=36), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("chunk_id", sa.String(length=64), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("length", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["chunk_id"], ["chunks.chunk_id"], name=op.f("fk_manifests_chunk_id_chunks")
        ),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["object_versions.version_id"],
            name=op.f("fk_manifests_version_id_object_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("version_id", "seq", name=op.f("pk_manifests")),
    )
    with op.batch_alter_table("manifests", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_manifests_chunk_id"), ["chunk_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_manifests_version_id_offset"), ["version_id", "offset"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("manifests", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_manifests_version_id_offset"))
        batch_op.drop_index(batch_op.f("ix_manifests_chunk_id"))

    op.drop_table("manifests")
    op.drop_table("upload_pins")
    with op.batch_alter_table("upload_parts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_upload_parts_chunk_id"))

    op.drop_table("upload_parts")
    with op.batch_alter_table("shards", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_shards_backend_key"))

    op.drop_table("shards")
    op.drop_table("object_versions")
    with op.batch_alter_table("uploads", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_uploads_state_expires_at"))

    op.drop_table("uploads")
    op.drop_table("store_params")
    op.drop_table("repair_queue")
    op.drop_table("objects")
    with op.batch_alter_table("chunks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_chunks_refcount_zero_since"))

    op.drop_table("chunks")
