"""One exception tree for the whole product, with stable codes; it knows nothing of HTTP.

Each edge maps these once: HTTP statuses in `api/errors.py`, exit codes in `cli/main.py`.
"""

from __future__ import annotations

from typing import Any, ClassVar


class EdgestoreError(Exception):
    """Base of every error edgestore raises on purpose."""

    code: ClassVar[str] = "error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def __str__(self) -> str:
        return self.message


# --- configuration and start-up -------------------------------------------------------------


class ConfigError(EdgestoreError):
    code = "invalid_config"


class StoreParamsMismatch(EdgestoreError):
    """The configuration disagrees with parameters recorded in the store's metadata."""

    code = "store_params_mismatch"


class SelfTestFailed(EdgestoreError):
    code = "self_test_failed"


# --- bad input --------------------------------------------------------------------------------


class InvalidInput(EdgestoreError):
    code = "invalid_input"


class ProtocolMismatch(InvalidInput):
    """The request speaks a protocol version this server does not (tus: 412)."""

    code = "protocol_mismatch"


class UnsupportedMediaType(InvalidInput):
    code = "unsupported_media_type"


class InvalidKey(InvalidInput):
    code = "invalid_key"


class InvalidRange(InvalidInput):
    """A byte range that cannot be satisfied for the object's size."""

    code = "invalid_range"

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message, size=size)
        self.size = size


class ChecksumMismatch(InvalidInput):
    """Bytes received do not match the checksum the client declared."""

    code = "checksum_mismatch"


class ChunkHashMismatch(InvalidInput):
    """A chunk's bytes do not hash to the id it was sent under (native API)."""

    code = "chunk_hash_mismatch"


class WholeFileMismatch(InvalidInput):
    """The assembled object's SHA-256 differs from the one the client declared."""

    code = "sha256_mismatch"


class IdempotencyKeyReused(InvalidInput):
    """An Idempotency-Key sent again with a request other than the one it was first sent
    with (a client bug: each creation needs a key of its own)."""

    code = "idempotency_key_reused"


class UnsupportedChecksum(InvalidInput):
    code = "unsupported_checksum"


class TooLarge(InvalidInput):
    code = "too_large"


# --- state conflicts --------------------------------------------------------------------------


class NotFound(EdgestoreError):
    code = "not_found"


class ObjectNotFound(NotFound):
    code = "object_not_found"


class UploadNotFound(NotFound):
    code = "upload_not_found"


class UploadGone(EdgestoreError):
    """The upload existed but expired or was terminated."""

    code = "upload_gone"


class OffsetConflict(EdgestoreError):
    code = "offset_conflict"

    def __init__(self, message: str, expected: int) -> None:
        super().__init__(message, expected=expected)
        self.expected = expected


class UploadLocked(EdgestoreError):
    code = "upload_locked"


class UploadStateError(EdgestoreError):
    """The operation does not fit the upload's state (already complete, not final, ...)."""

    code = "upload_state"


class PreconditionFailed(EdgestoreError):
    """A request's condition (HTTP If-Match) does not hold for the version it names."""

    code = "precondition_failed"


class BackupFailed(EdgestoreError):
    """A metadata backup could not be taken (pg_dump missing or failing, a copy that does
    not check out)."""

    code = "backup_failed"


class MetadataBehind(EdgestoreError):
    """The metadata database is behind its data dirs (an older backup restored): deleting
    shards it does not know would destroy what a newer backup still names."""

    code = "metadata_behind"


class MissingChunks(EdgestoreError):
    code = "missing_chunks"

    def __init__(self, message: str, chunk_ids: list[str]) -> None:
        super().__init__(message, chunk_ids=chunk_ids)
        self.chunk_ids = chunk_ids


class TransferInterrupted(EdgestoreError):
    """The sender went away mid-transfer; what arrived intact is kept (unless checksummed)."""

    code = "transfer_interrupted"


class SourceChanged(EdgestoreError):
    """A file changed on disk while it was being uploaded."""

    code = "source_changed"


# --- access and abuse ---------------------------------------------------------------------------


class Unauthorized(EdgestoreError):
    code = "unauthorized"


class Forbidden(EdgestoreError):
    code = "forbidden"


class SignatureInvalid(Forbidden):
    """A pre-signed URL or upload token that is malformed or whose signature does not match."""

    code = "signature_invalid"


class SignatureExpired(Forbidden):
    code = "signature_expired"


class OutOfScope(Forbidden):
    """Valid credentials used for something they do not grant (route, object, limits)."""

    code = "out_of_scope"


class RateLimited(EdgestoreError):
    """Too many requests or bytes; details['retry_after'] says when to come back (seconds)."""

    code = "rate_limited"


class ServerBusy(EdgestoreError):
    """The node is at a capacity limit of its own (not the client's fault); details
    ['retry_after'] says when to come back (seconds)."""

    code = "server_busy"


class QuotaExceeded(EdgestoreError):
    code = "quota_exceeded"


# --- storage faults ---------------------------------------------------------------------------


class StorageError(EdgestoreError):
    code = "storage_error"


class StorageUnavailable(StorageError):
    """A data dir or backend is missing, read-only or otherwise cannot take writes."""

    code = "storage_unavailable"


class StorageFull(StorageError):
    code = "storage_full"


class TransactionConflict(StorageUnavailable):
    """The database failed this transaction to break a deadlock or a serialization conflict
    with another one (PostgreSQL 40P01, 40001): nothing of it was kept, and running it
    again normally succeeds (503 with Retry-After)."""

    code = "transaction_conflict"


class CorruptShard(StorageError):
    """A shard failed its header or payload check: bitrot, truncation or a foreign file."""

    code = "corrupt_shard"


class ShardMissing(StorageError):
    code = "shard_missing"


class ChunkUnreadable(StorageError):
    """Too few intact shards remain to rebuild a chunk; no bytes are returned."""

    code = "chunk_unreadable"


class ChunkCorrupt(StorageError):
    """A rebuilt chunk did not match its SHA-256: never served."""

    code = "chunk_corrupt"
