"""The Engine: the one core API the HTTP server and the CLI share (usage: engine/__init__.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

from edgestore.config import Settings
from edgestore.engine.core import EngineCore, open_core
from edgestore.engine.dedup import StoredChunk
from edgestore.engine.keys import DEFAULT_BUCKET, validate_bucket, validate_key
from edgestore.engine.native import NativeUploads
from edgestore.engine.objects import Objects
from edgestore.engine.uploads import Uploads
from edgestore.engine.wholefile import WholeFileHashes
from edgestore.metadata.db import CLEANUP_LOCK_WAIT_MS
from edgestore.metadata.objects import VersionInfo
from edgestore.types import Readable


class Engine:
    def __init__(self, core: EngineCore) -> None:
        self.core = core
        self.settings = core.settings
        self.objects = Objects(core)
        self.uploads = Uploads(core)
        self.wholefile = WholeFileHashes(core, core.settings.native_hash_buffer_bytes)
        self.native = NativeUploads(core, self.uploads, self.wholefile)

    @classmethod
    def open(
        cls, settings: Settings, *, initialise_dirs: bool = False, claim_shared_disk: bool = False
    ) -> Engine:
        return cls(
            open_core(
                settings, initialise_dirs=initialise_dirs, claim_shared_disk=claim_shared_disk
            )
        )

    def close(self) -> None:
        self.wholefile.close()
        self.core.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def put(
        self,
        blocks: Iterable[bytes] | Readable,
        *,
        key: str,
        bucket: str = DEFAULT_BUCKET,
        content_type: str | None = None,
        filename: str | None = None,
        user_metadata: dict[str, Any] | None = None,
        on_chunk: Callable[[StoredChunk], None] | None = None,
    ) -> VersionInfo:
        """Ingest a byte stream as the next version of bucket/key.

        `blocks`: an iterable of byte blocks, or a Readable (an open file), which is read
        straight into the chunker's buffer: one copy less of every byte.
        """
        validate_bucket(bucket)
        validate_key(key)
        rec = self.uploads.create(
            kind="local",
            bucket=bucket,
            key=key,
            content_type=content_type,
            filename=filename,
            user_metadata=user_metadata,
        )
        try:
            done = self.uploads.append(rec.upload_id, 0, blocks, final=True, on_chunk=on_chunk)
        except BaseException:
            try:  # bounded: a busy database is the likeliest failure, and gc reclaims it
                self.uploads.terminate(rec.upload_id, lock_wait_ms=CLEANUP_LOCK_WAIT_MS)
            except Exception:
                pass
            raise
        assert done.version_id is not None
        return self.objects.by_version_id(done.version_id)
