"""The edgestore client library: uploads (native dedup-aware protocol, or tus) and downloads.

    from edgestore.client import Client
    result = Client("http://edge:8080", key).upload("big.iso", workers="auto")

It imports only httpx, the chunker, the hash functions, errors and types, so it ships without
the server. docs/client.md describes the API, the protocol, resuming and retries.
"""

from edgestore.client.client import Client
from edgestore.client.results import DownloadResult, NoProgress, Progress, UploadResult
from edgestore.client.retry import RetryPolicy

__all__ = ["Client", "DownloadResult", "NoProgress", "Progress", "RetryPolicy", "UploadResult"]
