"""The edgestore client library: uploads (native dedup-aware protocol, or tus) and downloads.

    from edgestore.client import Client
    result = Client("http://edge:8080", key).upload("big.iso", workers="auto")

It imports only httpx, the chunker, the hash functions, errors and types, so it ships without
the server. docs/client.md describes the API, the protocol, resuming and retries.

The names below load on first use (PEP 562): the CLI's local commands use light submodules
(client.source, client.paths) and must not pay for httpx.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgestore.lazy import lazy_names

if TYPE_CHECKING:
    from edgestore.client.client import Client
    from edgestore.client.results import (
        CommitProgress,
        DownloadResult,
        NoProgress,
        Progress,
        UploadResult,
    )
    from edgestore.client.retry import RetryPolicy

__all__ = [
    "Client",
    "CommitProgress",
    "DownloadResult",
    "NoProgress",
    "Progress",
    "RetryPolicy",
    "UploadResult",
]

_WHERE = {
    "Client": "edgestore.client.client",
    "CommitProgress": "edgestore.client.results",
    "DownloadResult": "edgestore.client.results",
    "NoProgress": "edgestore.client.results",
    "Progress": "edgestore.client.results",
    "UploadResult": "edgestore.client.results",
    "RetryPolicy": "edgestore.client.retry",
}


__getattr__ = lazy_names(__name__, _WHERE)
