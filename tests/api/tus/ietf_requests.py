"""Requests of the IETF resumable-upload draft, shared by its test modules."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import httpx

from tests.helpers import KiB

PARTIAL = "application/partial-upload"
VERSIONS = ["6", "8"]


def draft(version: str = "6", **headers: str) -> dict[str, str]:
    """Request headers of an IETF-draft request (underscores in names become dashes)."""
    return {
        "Upload-Draft-Interop-Version": version,
        **{k.replace("_", "-"): v for k, v in headers.items()},
    }


def append(
    c: httpx.Client, url: str, offset: int, body: object, complete: bool, version: str = "6"
) -> httpx.Response:
    headers = draft(
        version,
        Upload_Offset=str(offset),
        Upload_Complete="?1" if complete else "?0",
        Content_Type=PARTIAL,
    )
    return c.patch(url, content=body, headers=headers)  # type: ignore[arg-type]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def assert_object(c: httpx.Client, url: str, data: bytes) -> httpx.Response:
    got = c.get(url)
    assert got.status_code == 200, got.text
    assert sha256(got.content) == sha256(data)
    return got


def pieces(data: bytes, size: int = 256 * KiB) -> Iterator[bytes]:
    """A streamed body: httpx sends it chunked, without Content-Length."""
    for i in range(0, len(data), size):
        yield data[i : i + size]
