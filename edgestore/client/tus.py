"""tus 1.0 upload client, parallel through the concatenation extension; works with any tus
server (edgestore, tusd, @tus/server, tuspyserver).

With concatenation (and more than one worker), the file is split into contiguous parts, each
a partial upload sent on its own connection; a final upload then joins them (edgestore joins
manifests: no byte is copied). Without it, one upload. A PATCH that fails is resumed from the
offset a HEAD reports, so nothing acknowledged is sent twice; a rerun after a kill continues
the same uploads (their URLs are in the resume hint). Nothing is committed if the file
changed: the final POST (or, for a single upload, its last block) waits for that check.
"""

from __future__ import annotations

import base64
import hashlib
import math
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx

from edgestore.client.concurrency import AutoWorkers, Gate
from edgestore.client.http import ANY_STATUS, Transport, error_from, refusal
from edgestore.client.native import POLL, Workers
from edgestore.client.results import Counter, NoProgress, Progress, UploadResult, tell_committing
from edgestore.client.resume import HintKey, ResumeHints
from edgestore.client.retry import call_with_retry
from edgestore.client.source import SourceFile, guess_content_type
from edgestore.errors import InvalidInput, NotFound, OffsetConflict, UploadGone, WholeFileMismatch

TUS = {"Tus-Resumable": "1.0.0"}
PATCH_BYTES = 256 * 1024 * 1024  # one PATCH at most (some proxies cap request bodies)
AUTO_PART_BYTES = 32 * 1024 * 1024  # 'auto': parts this big, up to MAX_AUTO_PARTS
MAX_AUTO_PARTS = 32
MIN_PART_BYTES = 1024 * 1024
SEND_PIECE = 256 * 1024


def encode_metadata(values: dict[str, str | None]) -> bytes:
    """Upload-Metadata: comma-separated `key base64(value)` pairs, as bytes: a key is sent as
    its UTF-8 (tus 1.0 allows any key without space or comma), which httpx, given a str,
    would encode as ASCII and refuse (UnicodeEncodeError before any request)."""
    pairs = []
    for k, v in values.items():
        if not k or " " in k or "," in k:  # the field's separators: it would read as other pairs
            raise InvalidInput(
                f"tus cannot carry the metadata key {k!r} (empty, a space or a comma)"
            )
        pairs.append(k if v is None else f"{k} {base64.b64encode(v.encode()).decode()}")
    return ",".join(pairs).encode("utf-8")


def tus_endpoint(url: str) -> str:
    """The creation URL: edgestore's /files/ for a bare server URL, else the URL as given."""
    parsed = httpx.URL(url)
    return str(parsed.join("/files/")) if parsed.path in ("", "/") else url


def plan_parts(size: int, workers: Workers, concat: bool) -> list[tuple[int, int]]:
    """Contiguous [start, end) parts: one without concatenation or for a tiny file."""
    if not concat or size < 2 * MIN_PART_BYTES or workers == 1:
        return [(0, size)]
    if workers == "auto":
        count = min(MAX_AUTO_PARTS, math.ceil(size / AUTO_PART_BYTES))
    else:
        count = min(int(workers), size // MIN_PART_BYTES)
    count = max(1, count)
    step = math.ceil(size / count)
    return [(lo, min(lo + step, size)) for lo in range(0, size, step)]


class TusUpload:
    def __init__(
        self,
        transport: Transport,
        source: SourceFile,
        *,
        endpoint: str,
        bucket: str,
        key: str | None,
        workers: Workers = "auto",
        progress: Progress | None = None,
        hints: ResumeHints | None = None,
        content_type: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> None:
        self._t = transport
        self._source = source
        self._endpoint = tus_endpoint(endpoint)
        self._progress = progress or NoProgress()
        self._hints = hints or ResumeHints()
        self._hint_key = HintKey(self._endpoint, "tus", str(source.path), bucket, key)
        self._metadata: dict[str, str | None] = {
            **(metadata or {}),
            "filename": source.name,
            "bucket": bucket,
            "key": key,
        }
        # Some servers (tuspyserver) refuse uploads without a filetype.
        guessed = guess_content_type(source.name) or "application/octet-stream"
        self._metadata["filetype"] = content_type or guessed
        self._bucket, self._key = bucket, key
        self._workers = workers
        self._auto = AutoWorkers() if workers == "auto" else None
        self._gate = Gate(self._auto.level if self._auto else int(workers))
        self._wire = Counter()
        self._skipped = Counter()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._failure: BaseException | None = None
        self._sha256 = ""
        self._single = True

    def run(self) -> UploadResult:
        started = time.monotonic()
        concat = "concatenation" in self._extensions()
        state = self._hints.load(self._hint_key, self._source.identity)
        # Uploads are created with their metadata (content type included): continue them only
        # if this run asks for the same.
        resumed = bool(
            state
            and state.get("endpoint") == self._endpoint
            and state.get("metadata") == self._metadata
            and state.get("parts")
        )
        if not resumed:
            spans = plan_parts(self._source.size, self._workers, concat)
            parts_plan = [{"start": a, "end": b} for a, b in spans]
            state = {"endpoint": self._endpoint, "metadata": self._metadata, "parts": parts_plan}
        assert state is not None
        parts: list[dict[str, Any]] = state["parts"]
        self._single = len(parts) == 1
        for part in parts:
            if not part.get("url"):
                part["url"] = self._create(part, partial=not self._single)
        self._hints.save(self._hint_key, self._source.identity, state)
        self._progress.start(self._source.size)
        hasher = threading.Thread(target=self._hash, daemon=True)
        hasher.start()
        self._run_parts(parts)
        hasher.join()
        if self._failure is not None:
            raise self._failure
        if self._single:
            url = parts[0]["url"]
        else:
            self._source.check_unchanged()
            tell_committing(self._progress)
            url = self._final([p["url"] for p in parts])
        self._hints.clear(self._hint_key)
        info = self._object_info(url)
        stored_sha = info.get("x-edgestore-sha256")
        if stored_sha and stored_sha != self._sha256:
            raise WholeFileMismatch(f"the server stored SHA-256 {stored_sha}, sent {self._sha256}")
        version = info.get("x-edgestore-version")
        return UploadResult(
            object_id=info.get("x-edgestore-object-id"),
            version=int(version) if version and version.isdigit() else None,
            sha256=self._sha256,
            bytes_sent=self._wire.value,
            bytes_skipped=self._skipped.value,
            seconds=time.monotonic() - started,
            size=self._source.size,
            bucket=self._bucket,
            key=self._key,
            version_id=None,
            upload=url,
            protocol="tus",
            workers=self._gate.limit,
            chunks=len(parts),
            chunks_sent=len(parts),
            retries=self._t.retries,
            resumed=resumed,
            auto_levels=tuple(self._auto.history) if self._auto else (),
        )

    # --- protocol steps -----------------------------------------------------------------------

    def _extensions(self) -> set[str]:
        """The server's Tus-Extension (some answer OPTIONS only with or without a final /)."""
        other = self._endpoint[:-1] if self._endpoint.endswith("/") else self._endpoint + "/"
        for url in (self._endpoint, other):
            try:
                resp = self._t.http.options(url, headers=TUS, follow_redirects=True)
            except httpx.HTTPError:
                continue
            if "tus-version" in resp.headers:
                value = resp.headers.get("tus-extension", "")
                return {x.strip() for x in value.split(",") if x.strip()}
        return set()

    def _create(self, part: dict[str, Any], *, partial: bool) -> str:
        headers: dict[str, str | bytes] = {
            **TUS,
            "Upload-Length": str(part["end"] - part["start"]),
            "Upload-Metadata": encode_metadata(self._metadata),
        }
        if partial:
            headers["Upload-Concat"] = "partial"
        resp = self._t.request(
            "POST", self._endpoint, headers=headers, ok=ANY_STATUS, what="creating a tus upload"
        )
        if resp.status_code != 201:
            # Every tus answer but OPTIONS carries Tus-Resumable: without it, no tus server.
            raise refusal(
                resp,
                server=self._endpoint,
                ours="tus-resumable" in resp.headers,
                expected="a tus endpoint",
                hint="give the tus creation URL (edgestore's is /files/)",
            )
        return str(httpx.URL(self._endpoint).join(resp.headers["location"]))

    def _final(self, urls: list[str]) -> str:
        headers: dict[str, str | bytes] = {
            **TUS,
            "Upload-Concat": "final;" + " ".join(urls),
            "Upload-Metadata": encode_metadata(self._metadata),
        }
        resp = self._t.request(
            "POST", self._endpoint, headers=headers, ok=(201,), what="concatenating the parts"
        )
        return str(httpx.URL(self._endpoint).join(resp.headers["location"]))

    def _offset(self, url: str) -> int:
        resp = self._t.request("HEAD", url, headers=TUS, ok=(200, 204), what="asking the offset")
        return int(resp.headers["upload-offset"])

    def _object_info(self, url: str) -> httpx.Headers | dict[str, str]:
        """edgestore's object headers for the finished upload; empty from other servers."""
        # One byte is enough; an empty object has none, and a range of it is refused (416).
        ranged = {"Range": "bytes=0-0"} if self._source.size else {}
        try:
            resp = self._t.http.get(url, headers={**TUS, **ranged})
        except httpx.HTTPError:
            return {}
        resp.close()
        return resp.headers if resp.status_code in (200, 206) else {}

    # --- parts --------------------------------------------------------------------------------

    def _run_parts(self, parts: list[dict[str, Any]]) -> None:
        threads = [threading.Thread(target=self._part, args=(p,), daemon=True) for p in parts]
        finished = threading.Event()
        monitor = threading.Thread(target=self._monitor, args=(finished,), daemon=True)
        for t in [*threads, monitor] if self._auto else threads:
            t.start()
        for t in threads:
            t.join()
        finished.set()
        if monitor.is_alive():
            monitor.join()
        self._t.stop.clear()

    def _monitor(self, finished: threading.Event) -> None:
        assert self._auto is not None
        while not finished.wait(POLL) and not self._auto.settled:
            self._gate.set_limit(self._auto.update(self._wire.value, time.monotonic()))

    def _part(self, part: dict[str, Any]) -> None:
        try:
            if not self._gate.acquire(self._stop):
                return
            try:
                self._send_part(part)
            finally:
                self._gate.release()
        except BaseException as exc:
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        with self._lock:
            self._failure = self._failure or exc
        self._stop.set()
        self._t.stop.set()

    def _send_part(self, part: dict[str, Any]) -> None:
        url, start, length = part["url"], part["start"], part["end"] - part["start"]
        try:
            offset = self._offset(url)
        except (NotFound, UploadGone):  # expired or removed since the hint: start it again
            part["url"] = url = self._create(part, partial=not self._single)
            offset = 0
        self._skipped.add(offset)
        self._progress.skipped(offset)
        stale = False
        conflicts = 0
        while offset < length:
            n = min(PATCH_BYTES, length - offset)
            at = offset
            moved = False  # a HEAD found the upload further on since the last failed try

            def send() -> httpx.Response:
                nonlocal at, stale, moved
                if stale:
                    head = self._t.http.head(url, headers=TUS)
                    if head.status_code not in (200, 204):
                        return head
                    now = int(head.headers["upload-offset"])
                    at, stale, moved = now, False, moved or now > at
                    if at >= length:  # the lost response's PATCH had completed the part
                        return head
                stale = True  # until a 204 says where the upload stands
                body_len = min(PATCH_BYTES, length - at)
                return self._t.http.patch(
                    url,
                    content=self._body(start + at, body_len, start + at + body_len),
                    headers={
                        **TUS,
                        "Upload-Offset": str(at),
                        "Content-Type": "application/offset+octet-stream",
                        "Content-Length": str(body_len),
                    },
                )

            def progressed() -> bool:
                """Whether the last HEAD found the upload further on: a cut PATCH whose bytes
                partly landed is progress, not a failure to count against the retries."""
                nonlocal moved
                was, moved = moved, False
                return was

            resp = call_with_retry(
                send,
                self._t.retry,
                what=f"sending bytes {start + at}..{start + at + n} to {url}",
                resume_hint=self._t.resume_hint,
                sleep=self._t.pause,
                on_retry=self._t.note_retry,
                progressed=progressed,
            )
            if resp.status_code == 409 and conflicts < 3:  # our offset was stale: ask again
                conflicts += 1
                now = self._offset(url)
                self._progress.transferred(max(0, now - offset))
                offset, stale = now, False
                continue
            if resp.status_code not in (200, 204):
                raise error_from(resp)
            if "upload-offset" not in resp.headers:
                raise OffsetConflict(f"{url} answered without Upload-Offset", expected=-1)
            before, offset, stale = offset, int(resp.headers["upload-offset"]), False
            self._progress.transferred(offset - before)

    def _body(self, pos: int, n: int, end: int) -> Iterator[bytes]:
        """File bytes [pos, pos+n); a single upload's last block waits for the change check,
        because the server commits the object when that block lands."""
        last_of_file = end == self._source.size and self._single
        stop = pos + n
        while pos < stop:
            piece = self._source.pread(pos, min(SEND_PIECE, stop - pos))
            if last_of_file and pos + len(piece) == stop:
                self._source.check_unchanged()
            pos += len(piece)
            self._wire.add(len(piece))
            yield piece

    def _hash(self) -> None:
        digest = hashlib.sha256()
        try:
            for block in self._source.blocks():
                if self._stop.is_set():
                    return
                digest.update(block)
        except BaseException as exc:
            self._fail(exc)
            return
        self._sha256 = digest.hexdigest()
