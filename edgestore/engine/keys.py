"""Validation of bucket names and object keys: what may name an object, and why not; and
the bucket and key an upload's version goes to."""

from __future__ import annotations

import re
from collections.abc import Sequence

from edgestore.errors import InvalidKey
from edgestore.metadata.objects import NewVersion
from edgestore.metadata.uploads import UploadRecord
from edgestore.types import BUCKET_NAME_PATTERN, BUCKET_NAME_RULE

MAX_KEY_BYTES = 1024
DEFAULT_BUCKET = "default"
_BUCKET = re.compile(BUCKET_NAME_PATTERN)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def validate_bucket(bucket: str) -> str:
    if not _BUCKET.fullmatch(bucket):
        raise InvalidKey(f"invalid bucket name {bucket!r}: use {BUCKET_NAME_RULE}")
    return bucket


def validate_key(key: str) -> str:
    """Return the key if it is acceptable, else raise InvalidKey saying what is wrong."""
    if not key:
        raise InvalidKey("invalid key: it is empty")
    if "\x00" in key:
        raise InvalidKey("invalid key: it contains a NUL byte")
    if _CONTROL.search(key):
        raise InvalidKey("invalid key: it contains a control character")
    size = len(key.encode("utf-8", "surrogatepass"))
    if size > MAX_KEY_BYTES:
        raise InvalidKey(f"invalid key: {size} bytes, the limit is {MAX_KEY_BYTES}")
    if key.startswith("/"):
        raise InvalidKey("invalid key: it starts with '/'")
    if any(seg in (".", "..") for seg in key.split("/")):
        raise InvalidKey("invalid key: it has a '.' or '..' path segment")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidKey("invalid key: it is not valid UTF-8") from None
    return key


def version_for(
    rec: UploadRecord,
    entries: Sequence[tuple[str, int, int]],
    sha256: str | None,
    sha_states: Sequence[bytes | None] | None = None,
) -> NewVersion:
    """The object version a finished upload becomes: its bucket and key (defaults: the
    default bucket, the upload id), its metadata, these (chunk id, offset, length) entries."""
    bucket, key = rec.bucket or DEFAULT_BUCKET, rec.key or rec.upload_id
    meta = (rec.content_type, rec.filename, rec.user_metadata)
    return NewVersion(bucket, key, entries, sha256, *meta, sha_states=sha_states)
