"""tus 1.0.0 protocol headers: constants, parsing with precise errors, Upload-Metadata.

Parsing raises domain errors (InvalidInput → 400, and so on); handlers stay free of string
fiddling. Nothing here touches the engine.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field

from fastapi import Request

from edgestore.codec.hashing import CHECKSUM_ALGORITHMS
from edgestore.errors import InvalidInput, ProtocolMismatch, UnsupportedChecksum

TUS_VERSION = "1.0.0"
EXTENSIONS = (
    "creation",
    "creation-with-upload",
    "creation-defer-length",
    "termination",
    "expiration",
    "checksum",
    "checksum-trailer",
    "concatenation",
    "concatenation-unfinished",
)
OFFSET_CONTENT_TYPE = "application/offset+octet-stream"
MAX_METADATA_BYTES = 8 * 1024
MAX_METADATA_PAIRS = 64
_DIGITS = re.compile(r"[0-9]{1,19}")
# A key can be echoed in a header field value unless it holds a control character; tabs are
# refused with them (spaces are the pair separator, and HTTP drops a tab at either end).
_UNSAFE_KEY_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_BLANK = " \t"  # HTTP's whitespace; str.strip() would also eat 0x85 and 0xA0 of UTF-8 keys


def base_headers() -> dict[str, str]:
    return {"Tus-Resumable": TUS_VERSION}


def require_tus_resumable(request: Request) -> None:
    value = request.headers.get("tus-resumable")
    if value != TUS_VERSION:
        raise ProtocolMismatch(
            f"Tus-Resumable {'is missing' if value is None else f'{value!r} is not supported'}; "
            f"this server speaks tus {TUS_VERSION}"
        )


def parse_size(name: str, value: str | None, *, required: bool = False) -> int | None:
    """A non-negative decimal header value (Upload-Length, Upload-Offset)."""
    if value is None:
        if required:
            raise InvalidInput(f"{name} header is required")
        return None
    value = value.strip()
    if not _DIGITS.fullmatch(value):
        raise InvalidInput(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


# --- Upload-Metadata ----------------------------------------------------------------------------


@dataclass
class UploadMetadata:
    """Upload-Metadata, split into what edgestore understands and what the user keeps."""

    raw: dict[str, str | None] = field(default_factory=dict)

    @property
    def filename(self) -> str | None:
        return self.raw.get("filename") or self.raw.get("name")

    @property
    def content_type(self) -> str | None:
        return self.raw.get("filetype") or self.raw.get("contentType") or self.raw.get("type")

    @property
    def bucket(self) -> str | None:
        return self.raw.get("bucket")

    @property
    def key(self) -> str | None:
        return self.raw.get("key")

    @property
    def user(self) -> dict[str, str | None]:
        return dict(self.raw)


def parse_metadata(header: str | None) -> UploadMetadata:
    """Parse `key base64value,key2,...`; malformed, duplicate or oversized → 400.

    `header` is the field as the server reads it (each byte one latin-1 character). A key is
    anything tus 1.0 allows (no space, no comma, not empty) that can be echoed in a header:
    `/`, `:` and UTF-8 included (tus: ASCII is a SHOULD; tusd keeps any key).
    """
    if header is None or not header.strip(_BLANK):
        return UploadMetadata()
    if len(header) > MAX_METADATA_BYTES:
        raise InvalidInput(
            f"Upload-Metadata is {len(header)} bytes; the limit is {MAX_METADATA_BYTES}"
        )
    out: dict[str, str | None] = {}
    pairs = header.split(",")
    if len(pairs) > MAX_METADATA_PAIRS:
        raise InvalidInput(
            f"Upload-Metadata has {len(pairs)} pairs; the limit is {MAX_METADATA_PAIRS}"
        )
    for pair in pairs:
        parts = pair.strip(_BLANK).split(" ")
        if len(parts) > 2 or not parts[0]:
            raise InvalidInput(f"Upload-Metadata pair {pair.strip(_BLANK)!r} is malformed")
        key = _metadata_key(parts[0])
        if key in out:
            raise InvalidInput(f"Upload-Metadata key {key!r} appears twice")
        if len(parts) == 1 or parts[1] == "":
            out[key] = None
            continue
        try:
            decoded = base64.b64decode(parts[1], validate=True)
            out[key] = decoded.decode("utf-8")
        except (binascii.Error, ValueError):
            raise InvalidInput(
                f"Upload-Metadata value of {key!r} is not valid base64-encoded UTF-8"
            ) from None
        if "\x00" in out[key]:  # type: ignore[operator]
            raise InvalidInput(f"Upload-Metadata value of {key!r} contains a NUL byte")
    return UploadMetadata(out)


def _metadata_key(field_text: str) -> str:
    """A key as its client wrote it: its bytes, read as UTF-8 (400 if they are not)."""
    if _UNSAFE_KEY_CHARS.search(field_text):
        raise InvalidInput(
            f"Upload-Metadata key {field_text!r} contains a tab or a control character"
        )
    try:
        return field_text.encode("latin-1").decode("utf-8")
    except UnicodeError:  # a character beyond latin-1 too: not text read from the wire
        raise InvalidInput(f"Upload-Metadata key {field_text!r} is not UTF-8") from None


def encode_metadata(values: dict[str, str | None]) -> str:
    """The Upload-Metadata field for `values`, as parse_metadata reads it: a key's UTF-8
    bytes, each as one latin-1 character, so that the field goes out as it came in."""
    parts = []
    for k, v in values.items():
        key = k.encode("utf-8").decode("latin-1")
        parts.append(key if v is None else f"{key} {base64.b64encode(v.encode()).decode()}")
    return ",".join(parts)


# --- Upload-Checksum ----------------------------------------------------------------------------


def parse_checksum(header: str | None) -> tuple[str, bytes] | None:
    """`Upload-Checksum: <algorithm> <base64 digest>` → (algorithm, digest)."""
    if header is None:
        return None
    parts = header.strip().split(" ")
    if len(parts) != 2:
        raise InvalidInput(f"Upload-Checksum {header!r} is not '<algorithm> <base64 digest>'")
    algorithm, encoded = parts[0].lower(), parts[1]
    if algorithm not in CHECKSUM_ALGORITHMS:
        raise UnsupportedChecksum(
            f"checksum algorithm {algorithm!r} is not supported; "
            f"supported: {', '.join(CHECKSUM_ALGORITHMS)}"
        )
    try:
        digest = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("Upload-Checksum digest is not valid base64") from None
    return algorithm, digest
