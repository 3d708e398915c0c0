"""`Client(url, key).upload(path)`: the library entry point the CLI and benchmarks use."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import httpx

from edgestore.client.concurrency import MAX_WORKERS
from edgestore.client.download import Download
from edgestore.client.http import Transport, tls_context
from edgestore.client.native import SENDERS_PER_TURN, NativeUpload, Workers
from edgestore.client.results import DownloadResult, Progress, UploadResult
from edgestore.client.resume import ResumeHints
from edgestore.client.retry import RetryPolicy
from edgestore.client.source import SourceFile
from edgestore.client.tus import TusUpload
from edgestore.errors import InvalidInput

Protocol = Literal["native", "tus"]


class Client:
    """An edgestore server (or, with protocol='tus', any tus server) at `url`.

    Thread-safe; reuse one client for many transfers (it pools connections). `key` is sent
    as `Authorization: Bearer <key>`. `ca_cert` (a PEM file or a directory of CA
    certificates) is trusted instead of the default CA bundle: a private or self-signed CA.
    """

    def __init__(
        self,
        url: str,
        key: str | None = None,
        *,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        state_dir: Path | None = None,
        verify: bool = True,
        ca_cert: str | Path | None = None,
    ) -> None:
        if not url.lower().startswith(("http://", "https://")):
            raise InvalidInput(f"server URL {url!r} must start with http:// or https://")
        try:
            host = httpx.URL(url).host
        except httpx.InvalidURL as exc:
            raise InvalidInput(f"server URL {url!r} is not valid: {exc}") from None
        if not host:
            raise InvalidInput(f"server URL {url!r} is not valid: it names no host")
        self.url = url.rstrip("/")
        self._key = key
        self._timeout = timeout
        self._retry = retry or RetryPolicy()
        self._verify = tls_context(ca_cert) if verify else False
        self.hints = ResumeHints(state_dir)

    def _transport(self, base_url: str, workers: Workers) -> Transport:
        width = MAX_WORKERS if workers == "auto" else int(workers)
        return Transport(
            base_url,
            self._key,
            connections=SENDERS_PER_TURN * width + 4,
            timeout=self._timeout,
            retry=self._retry,
            verify=self._verify,
        )

    def upload(
        self,
        path: str | Path,
        *,
        bucket: str = "default",
        key: str | None = None,
        workers: Workers = "auto",
        protocol: Protocol = "native",
        progress: Progress | None = None,
        content_type: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> UploadResult:
        """Upload a file as the next version of bucket/key (key defaults to the file name).

        Resumable: run it again after any failure (even a kill) and only what the server
        lacks is sent. Raises SourceChanged if the file changes meanwhile (nothing is
        committed), TransferInterrupted when retries run out.
        """
        if protocol not in ("native", "tus"):
            raise InvalidInput(f"protocol must be 'native' or 'tus', not {protocol!r}")
        for what, text in [
            ("bucket", bucket),
            ("key", key),
            ("content type", content_type),
            *((f"metadata {k!r}", f"{k}{v}") for k, v in (metadata or {}).items()),
        ]:
            _require_utf8(what, text)
        source = SourceFile(path)
        key = key if key is not None else source.name
        with source:
            if protocol == "tus":
                with self._transport(self.url, workers) as t:
                    return TusUpload(
                        t,
                        source,
                        endpoint=self.url,
                        bucket=bucket,
                        key=key,
                        workers=workers,
                        progress=progress,
                        hints=self.hints,
                        content_type=content_type,
                        metadata=metadata,
                    ).run()
            with self._transport(self.url, workers) as t:
                return NativeUpload(
                    t,
                    source,
                    bucket=bucket,
                    key=key,
                    workers=workers,
                    progress=progress,
                    hints=self.hints,
                    content_type=content_type,
                    metadata=metadata,
                ).run()

    def download(
        self,
        ref: str,
        out_path: str | Path | None = None,
        *,
        workers: int = 4,
        progress: Progress | None = None,
    ) -> DownloadResult:
        """Fetch an object (a URL, an object id, or bucket/key) with parallel range GETs.

        Resumable (the .part file and its record of finished ranges are kept on failure) and
        verified against the object's SHA-256 before the file takes its final name.
        """
        if not 1 <= workers <= 64:
            raise InvalidInput(f"workers must be 1 to 64, not {workers}")
        with self._transport(self.url, workers) as t:
            return Download(t, ref, out_path, workers=workers, progress=progress).run()


def _require_utf8(what: str, text: str | None) -> None:
    """Refuse text no request can carry: an argument typed in a terminal of another encoding
    reaches Python with surrogates, on which httpx failed with a traceback."""
    try:
        (text or "").encode("utf-8")
    except UnicodeEncodeError:
        shown = (text or "").encode("utf-8", "replace").decode()
        raise InvalidInput(f"the {what} {shown!r} is not valid UTF-8") from None
