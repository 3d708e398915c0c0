"""Parallel, resumable, verified downloads: range GETs into OUT.part, then a rename.

N workers fetch RANGE_BYTES ranges and write them in place (pwrite). Finished ranges are
recorded in OUT.part.json (with the object's ETag), so a rerun fetches only the rest of the
same version. A hasher follows the ranges in order, so the whole-file SHA-256 is ready when
the last byte lands; it must equal the server's (X-Edgestore-Sha256; from other servers, a
SHA-256 ETag) before the file takes its name. Ranges name the version the HEAD found
(`?version=N`), so a new version uploaded meanwhile cannot mix into the file.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import queue
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import httpx

from edgestore.client.http import Transport
from edgestore.client.paths import output_path
from edgestore.client.results import DownloadResult, NoProgress, Progress
from edgestore.client.retry import describe
from edgestore.errors import (
    InvalidInput,
    StorageError,
    StorageFull,
    TransferInterrupted,
    WholeFileMismatch,
)

RANGE_BYTES = 8 * 1024 * 1024
HASH_BLOCK = 4 * 1024 * 1024
_HEX64 = re.compile(r"[0-9a-f]{64}")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_FILENAME_STAR = re.compile(r"filename\*=UTF-8''([^;]+)")


def object_url(ref: str) -> str:
    """A URL, an object id, or bucket/key, as a URL (relative to the server for the latter)."""
    if ref.startswith(("http://", "https://")):
        return ref
    if _UUID.fullmatch(ref):
        return f"/ids/{ref.lower()}"
    if "/" in ref.strip("/"):
        bucket, key = ref.lstrip("/").split("/", 1)  # a key may end with '/'
        # Quoted: '?', '#', '%' and spaces are valid in keys, and mean something else in a URL.
        return f"/objects/{quote(bucket, safe='')}/{quote(key, safe='/')}"
    raise InvalidInput(f"{ref!r} is not a URL, an object id, or bucket/key")


def _ranges(done: list[list[int]], size: int, step: int) -> list[tuple[int, int]]:
    """The [start, end) ranges of `step` bytes not covered by the `done` intervals."""
    todo = []
    for start in range(0, size, step):
        end = min(start + step, size)
        if not any(lo <= start and end <= hi for lo, hi in done):
            todo.append((start, end))
    return todo


def _merge(intervals: list[list[int]]) -> list[list[int]]:
    merged: list[list[int]] = []
    for lo, hi in sorted(intervals):
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return merged


class Download:
    def __init__(
        self,
        transport: Transport,
        ref: str,
        out_path: str | Path | None,
        *,
        workers: int = 4,
        progress: Progress | None = None,
    ) -> None:
        self._t = transport
        self._url = object_url(ref)
        self._out = Path(out_path) if out_path is not None else None
        self._workers = workers
        self._progress = progress or NoProgress()
        self._cond = threading.Condition()
        self._done: list[list[int]] = []
        self._failed = threading.Event()
        self._failure: BaseException | None = None
        self._io = threading.Lock()  # a write and the file's close never overlap
        self._closed = False
        self._received = 0

    def run(self) -> DownloadResult:
        started = time.monotonic()
        head = self._t.request("HEAD", self._url, ok=(200,), what="looking up the object")
        h = head.headers
        size = int(h.get("content-length", "0"))
        etag = h.get("etag", "")
        if "x-edgestore-object-id" in h:
            # edgestore's ETag is a manifest digest, never the file's SHA-256; the digest of a
            # concatenated upload may not be known yet (then: no whole-file check).
            expected = h.get("x-edgestore-sha256")
        else:  # another server: an ETag that looks like a SHA-256 is taken as one
            expected = etag.strip('"') if _HEX64.fullmatch(etag.strip('"')) else None
        object_id, version = h.get("x-edgestore-object-id"), h.get("x-edgestore-version")
        url = self._pinned(object_id, version)
        target = output_path(self._out, self._name(head))
        if target.exists() and not target.is_file():
            raise InvalidInput(
                f"cannot download into {target}: not a regular file (a device or a pipe); "
                "ranges are written in parallel to a .part file renamed over the output"
            )
        part = target.with_name(target.name + ".part")
        record = target.with_name(target.name + ".part.json")
        identity = {"etag": etag, "size": size, "object_id": object_id, "version": version}
        self._done = self._load(record, identity, part)
        resumed = sum(hi - lo for lo, hi in self._done)
        step = RANGE_BYTES if "bytes" in h.get("accept-ranges", "") else max(size, 1)
        todo = _ranges(self._done, size, step)

        self._progress.start(size)
        self._progress.skipped(resumed)
        fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            with self._writing(part, size):
                os.ftruncate(fd, size)
            hasher = threading.Thread(target=self._hash, args=(fd, size), daemon=True)
            self._digest = ""
            hasher.start()
            try:
                self._fetch_all(fd, url, todo, record, identity)
            finally:
                hasher.join()
            with self._writing(part, size):
                os.fsync(fd)
        finally:
            with self._io:  # no worker left behind (Ctrl-C) writes after this
                self._closed = True
                os.close(fd)
        if expected is not None and self._digest != expected:
            part.unlink(missing_ok=True)
            record.unlink(missing_ok=True)
            raise WholeFileMismatch(
                f"the downloaded bytes have SHA-256 {self._digest}, the server says {expected}; "
                "the partial file was removed: run the command again"
            )
        os.replace(part, target)
        record.unlink(missing_ok=True)
        return DownloadResult(
            path=str(target),
            size=size,
            sha256=self._digest,
            verified=expected is not None,
            bytes_received=self._received,
            bytes_resumed=resumed,
            seconds=time.monotonic() - started,
            object_id=object_id,
            version=int(version) if version and version.isdigit() else None,
            retries=self._t.retries,
        )

    def _fetch_all(
        self,
        fd: int,
        url: str,
        todo: list[tuple[int, int]],
        record: Path,
        identity: dict[str, Any],
    ) -> None:
        """Fetch the ranges on `workers` daemon threads; the first failure stops them all.

        Daemon threads, and never joined after a failure or a Ctrl-C: a worker waiting on a
        link gone silent held the command for its read timeout (a minute) after Ctrl-C, as an
        executor's threads are joined even at exit. A worker that wakes later writes nothing
        (`_closed`)."""
        pending: queue.SimpleQueue[tuple[int, int]] = queue.SimpleQueue()
        for span in todo:
            pending.put(span)

        def work() -> None:
            while not self._failed.is_set():
                try:
                    span = pending.get_nowait()
                except queue.Empty:
                    return
                try:
                    self._fetch(fd, url, span, record, identity)
                except BaseException as exc:
                    self._stop(exc)
                    return

        threads = [
            threading.Thread(target=work, name=f"es-get-{i}", daemon=True)
            for i in range(min(self._workers, len(todo)))
        ]
        for t in threads:
            t.start()
        try:
            for t in threads:
                while t.is_alive():
                    t.join(0.2)
        except BaseException as exc:  # Ctrl-C: what was written stays, for the rerun
            self._stop(exc)
        if self._failure is not None:
            raise self._failure

    def _stop(self, exc: BaseException) -> None:
        with self._cond:
            if self._failure is None:
                self._failure = exc
        self._failed.set()  # the others take no new range, and the hasher ends
        self._t.stop.set()  # retries waiting to try again give up at once

    def _write(self, fd: int, data: bytes | memoryview, pos: int, part: Path, size: int) -> None:
        with self._io, self._writing(part, size):
            if self._closed or self._failed.is_set():
                raise TransferInterrupted("stopped")
            os.pwrite(fd, data, pos)

    @contextmanager
    def _writing(self, part: Path, size: int) -> Iterator[None]:
        """A local write that failed as the domain error it is: a full disk was a traceback
        (exit code 1); it is exit code 6, and the partial file stays for the rerun."""
        try:
            yield
        except OSError as exc:
            cls = StorageFull if exc.errno in (errno.ENOSPC, errno.EDQUOT) else StorageError
            raise cls(
                f"cannot write {part} ({exc.strerror or exc}; the object is {size} bytes): "
                "what was downloaded is kept; make room and run the same command again to "
                "resume"
            ) from None

    def _pinned(self, object_id: str | None, version: str | None) -> str:
        """Where the ranges come from: the version the HEAD found, so that a new one uploaded
        meanwhile cannot mix in.

        A URL given whole keeps its path and query, with `version=N` added: a reverse proxy's
        path prefix (https://host/edge/objects/…) and a pre-signed URL's signature are in
        them, and /ids/… at the host's root reached neither. (Should that URL's object be
        deleted and made anew, version N of the new one has another ETag: If-Range turns
        that into "the object changed".)"""
        if not (object_id and version and version.isdigit()):
            return self._url  # another server: its URL as given
        if not self._url.startswith(("http://", "https://")):
            return f"/ids/{object_id}?version={version}"  # under the client's server URL
        given = httpx.URL(self._url)
        if "version" in given.params:
            return self._url  # the HEAD answered that version
        query = given.query + b"&" if given.query else b""
        return str(given.copy_with(query=query + f"version={version}".encode(), fragment=None))

    def _name(self, head: httpx.Response) -> str:
        m = _FILENAME_STAR.search(head.headers.get("content-disposition", ""))
        if m:
            name = Path(unquote(m.group(1))).name
            if name not in ("", ".", ".."):
                return name
        path = urlsplit(self._url).path.rstrip("/")
        return Path(unquote(path)).name or "download"

    def _load(self, record: Path, identity: dict[str, Any], part: Path) -> list[list[int]]:
        """Finished ranges of an earlier attempt at the same version, if its files are there."""
        try:
            data = json.loads(record.read_text())
        except (OSError, ValueError):
            data = None
        if isinstance(data, dict) and data.get("object") == identity and part.exists():
            return _merge([[int(lo), int(hi)] for lo, hi in data.get("done", [])])
        part.unlink(missing_ok=True)
        return []

    def _fetch(
        self, fd: int, url: str, span: tuple[int, int], record: Path, identity: dict[str, Any]
    ) -> None:
        part, size = record.with_suffix(""), identity["size"]
        start, end = span
        headers = {"Range": f"bytes={start}-{end - 1}"} if end > start else {}
        if identity["etag"]:
            headers["If-Range"] = identity["etag"]
        if end - start > RANGE_BYTES:  # one body for the whole file: no ranges (see run)
            self._stream(fd, url, headers, start, end, part)
        else:

            def whole_object(resp: httpx.Response) -> None:
                """A 200 to a range: If-Range found another ETag, the object was made anew.
                Refused before its body (the whole object) is read into memory."""
                if resp.status_code == 200 and (start, end) != (0, size):
                    raise InvalidInput(
                        "the object changed during the download; run the command again"
                    )

            resp = self._t.request(
                "GET",
                url,
                headers=headers,
                ok=(200, 206),
                what="downloading",
                before_body=whole_object,
            )
            body = resp.content
            if len(body) != end - start:
                raise InvalidInput(f"range {start}-{end} came back with {len(body)} bytes")
            self._write(fd, body, start, part, size)
        with self._cond:
            self._received += end - start
            self._done = _merge([*self._done, [start, end]])
            tmp = record.with_suffix(".tmp")
            with self._writing(part, size):
                try:
                    tmp.write_text(json.dumps({"object": identity, "done": self._done}))
                    os.replace(tmp, record)
                except OSError:
                    tmp.unlink(missing_ok=True)
                    raise
            self._cond.notify_all()
        self._progress.transferred(end - start)

    def _stream(
        self, fd: int, url: str, headers: dict[str, str], start: int, end: int, part: Path
    ) -> None:
        """Write a body in blocks as it arrives: from a server without ranges it is the whole
        file, which was held in memory whole before it was written."""
        resp = self._t.request(
            "GET", url, headers=headers, ok=(200, 206), what="downloading", stream=True
        )
        pos = start
        try:
            for block in resp.iter_bytes(HASH_BLOCK):
                if pos + len(block) > end:
                    raise InvalidInput(f"the body of {start}-{end} runs past {end} bytes")
                self._write(fd, block, pos, part, end)
                pos += len(block)
        except httpx.HTTPError as exc:
            raise TransferInterrupted(
                f"the download was cut at byte {pos} of {end} ({describe(exc)}): "
                "run the same command again (this server sends no ranges: it starts over)"
            ) from None
        finally:
            resp.close()
        if pos != end:
            raise InvalidInput(f"range {start}-{end} came back with {pos - start} bytes")

    def _hash(self, fd: int, size: int) -> None:
        """SHA-256 of the file in order, as the ranges arrive (reads hit the page cache)."""
        digest = hashlib.sha256()
        pos = 0
        while pos < size:
            with self._cond:
                while not any(lo <= pos < hi for lo, hi in self._done):
                    if self._failed.is_set():
                        return
                    self._cond.wait(0.2)
                upto = next(hi for lo, hi in self._done if lo <= pos < hi)
            while pos < upto:
                block = os.pread(fd, min(HASH_BLOCK, upto - pos), pos)
                digest.update(block)
                pos += len(block)
        self._digest = digest.hexdigest()
