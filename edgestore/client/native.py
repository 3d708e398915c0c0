"""Native upload: chunk and hash the file exactly as the store does, ask which chunks it lacks,
send only those over parallel connections, then commit the manifest and whole-file SHA-256.

Threads, joined by bounded hand-offs:
  reader  — reads the file once, cuts FastCDC chunks, hashes each on a small pool (and the
            whole file on a lane of its own); it keeps only (offset, size, id), and runs at
            most LOOKAHEAD_BYTES ahead of the chunks not yet resolved (sent, or known to the
            server), so re-reads stay in the page cache;
  asker   — batches ids (16, 32, … up to the server's limit) into /missing requests; the
            server pins the chunks it has to the session, the missing ones go to the senders;
  senders — re-read their chunk (pread) and PUT it; a Gate holds the ones sending a body to
            the current number of connections, which the monitor grows in 'auto' mode
            (client/concurrency.py). A sender gives up its turn once its body is on the wire,
            while the server makes the chunk durable and answers (a round trip and more), so
            another connection sends meanwhile: there are twice as many senders as turns.
Memory is about turns x max chunk size (a sender waiting for its answer holds no chunk: a
retry reads it again). Any thread's failure stops all of them.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from edgestore.chunking import StreamChunker
from edgestore.client.concurrency import MAX_WORKERS, AutoWorkers, Budget, Gate, Stopped, Turn
from edgestore.client.http import Transport
from edgestore.client.results import Counter, NoProgress, Progress, UploadResult, tell_committing
from edgestore.client.resume import HintKey, ResumeHints
from edgestore.client.session import chunker_params, create_session, new_idempotency_key
from edgestore.client.source import SourceFile, guess_content_type
from edgestore.codec.hashing import chunk_id
from edgestore.errors import (
    ChunkHashMismatch,
    IdempotencyKeyReused,
    InvalidInput,
    MissingChunks,
    NotFound,
    SourceChanged,
    UploadGone,
    UploadStateError,
)
from edgestore.types import ChunkerParams

T = TypeVar("T")
Workers = int | Literal["auto"]

LOOKAHEAD_BYTES = 1 << 30
FIRST_BATCH = 16
SEND_PIECE = 256 * 1024  # body pieces handed to the socket (and counted for 'auto')
FINALIZE_BYTES_PER_SECOND = 50e6  # slowest server read-back assumed for finalize's timeout
POLL = 0.2
SENDERS_PER_TURN = 2  # one sending a body, one waiting for its answer
HASH_THREADS = 2  # chunk ids computed at once while the reader cuts the next chunks
HASH_AHEAD = 4  # chunks cut but not yet hashed, at most (memory: 4 x max chunk size)


@dataclass(frozen=True, slots=True)
class _Chunk:
    offset: int
    size: int
    chunk_id: str


class NativeUpload:
    """One upload of one file; `run()` once."""

    def __init__(
        self,
        transport: Transport,
        source: SourceFile,
        *,
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
        self._bucket = bucket
        self._key = key
        self._progress = progress or NoProgress()
        self._hints = hints or ResumeHints()
        self._hint_key = HintKey(transport.base_url, "native", str(source.path), bucket, key)
        # As tus and `edgestore put` do: a video uploaded without --content-type plays.
        self._content_type = content_type or guess_content_type(source.name)
        self._metadata = metadata or {}
        self._auto = AutoWorkers() if workers == "auto" else None
        if self._auto is None and not 1 <= int(workers) <= 64:
            raise InvalidInput(f"workers must be 'auto' or 1 to 64, not {workers!r}")
        self._senders = SENDERS_PER_TURN * (MAX_WORKERS if self._auto else int(workers))
        self._gate = Gate(self._auto.level if self._auto else int(workers))
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._failure: BaseException | None = None
        self._ids: queue.Queue[_Chunk | None] = queue.Queue()
        self._work: queue.Queue[_Chunk | None] = queue.Queue(maxsize=2 * MAX_WORKERS)
        self._budget = Budget(LOOKAHEAD_BYTES)
        self._manifest: list[_Chunk] = []
        self._scheduled: set[str] = set()
        self._wire = Counter()  # body bytes handed to sockets, retries included
        self._skipped = Counter()
        self._chunks_sent = Counter()
        self._sha256 = ""
        self._upload_id = ""
        self._replaced: str | None = None  # the hinted session this run did not continue
        self._max_batch = FIRST_BATCH

    # --- the upload -----------------------------------------------------------------------------

    def run(self) -> UploadResult:
        started = time.monotonic()
        session, resumed = self._open_session()
        self._upload_id = session["upload_id"]
        self._progress.start(self._source.size)
        if session["state"] == "complete":  # the attempt this reruns committed it
            self._sha256 = session["version"]["sha256"] or ""
            self._skipped.add(self._source.size)
            self._progress.skipped(self._source.size)
            self._hints.clear(self._hint_key)
            return self._result(session["version"], started, resumed)
        params = chunker_params(session)
        self._max_batch = int(session["params"].get("max_missing_batch", 1000))
        try:
            self._run_threads(params)
            version = self._finalize()
        except SourceChanged:
            self._abandon()
            raise
        except UploadStateError as exc:
            version = self._finalized_meanwhile(exc)
        self._hints.clear(self._hint_key)
        self._release_replaced()
        return self._result(version, started, resumed)

    def _finalized_meanwhile(self, refusal: UploadStateError) -> dict[str, Any]:
        """The version another run of this upload at once (sharing the hinted session)
        committed; it failed "already finalized" though the file was stored."""
        st = self._t.json("GET", f"/v1/uploads/{self._upload_id}", ok=(200,))
        if not (st["state"] == "complete" and self._committed(st)):
            raise refusal
        self._source.check_unchanged()  # the version holds the file as it was at our start
        self._sha256 = st["version"]["sha256"] or self._sha256
        return dict(st["version"])

    def _result(self, version: dict[str, Any], started: float, resumed: bool) -> UploadResult:
        return UploadResult(
            object_id=version["object_id"],
            version=version["version"],
            sha256=self._sha256,
            bytes_sent=self._wire.value,
            bytes_skipped=self._skipped.value,
            seconds=time.monotonic() - started,
            size=self._source.size,
            bucket=version["bucket"],
            key=version["key"],
            version_id=version["version_id"],
            upload=self._upload_id,
            protocol="native",
            workers=self._gate.limit,
            chunks=len(self._manifest),
            chunks_sent=self._chunks_sent.value,
            retries=self._t.retries,
            resumed=resumed,
            auto_levels=tuple(self._auto.history) if self._auto else (),
        )

    def _open_session(self) -> tuple[dict[str, Any], bool]:
        """Continue the hinted session if the server still has it open, else open one."""
        hint = self._hints.load(self._hint_key, self._source.identity)
        # The session holds the content type and metadata it was opened with: continue it
        # only if this run asks for the same ones.
        wanted = {"content_type": self._content_type, "metadata": self._metadata}
        same = hint is not None and {k: hint.get(k) for k in wanted} == wanted
        if hint and same and isinstance(hint.get("upload_id"), str):
            try:
                st = self._t.json("GET", f"/v1/uploads/{hint['upload_id']}", ok=(200,))
            except (NotFound, UploadGone):
                st = None
            if st and st["state"] == "open" and st["size"] == self._source.size:
                return st, True
            if st and st["state"] == "complete" and self._committed(st):
                return st, True
        old = self._hints.replaced(self._hint_key)
        if old is not None and isinstance(old.get("upload_id"), str):
            self._replaced = old["upload_id"]  # the file changed, or other type or metadata
        body = {
            "bucket": self._bucket,
            "key": self._key,
            "size": self._source.size,
            "filename": self._source.name,
            "content_type": self._content_type,
            "metadata": self._metadata,
        }
        # A creation whose answer never came (its retries ran out) left its key in the hint:
        # sent again, it finds the session that creation made rather than leave an orphan.
        pending = hint.get("idempotency_key") if hint and same else None
        key = pending if isinstance(pending, str) else new_idempotency_key()
        self._hints.save(self._hint_key, self._source.identity, {"idempotency_key": key, **wanted})
        try:
            st = create_session(self._t, body, key)
        except IdempotencyKeyReused:  # the hinted creation asked for something else
            st = create_session(self._t, body, new_idempotency_key())
        self._hints.save(
            self._hint_key, self._source.identity, {"upload_id": st["upload_id"], **wanted}
        )
        return st, False

    def _committed(self, session: dict[str, Any]) -> bool:
        """Whether the hinted session's version is this file: its finalize committed but the
        answer never came (retries ran out, or a kill). The hint matched the file as it is
        now, and finalize checked the file unchanged since the hint was written, so that
        version holds these bytes; a new session would store them again as the next version."""
        version = session.get("version")
        return bool(version) and version.get("size") == self._source.size

    def _run_threads(self, params: ChunkerParams) -> None:
        threads = [
            threading.Thread(target=self._guard(self._read, params), name="es-reader"),
            threading.Thread(target=self._guard(self._ask_loop), name="es-asker"),
        ]
        threads += [
            threading.Thread(target=self._guard(self._send_loop), name=f"es-sender-{i}")
            for i in range(self._senders)
        ]
        finished = threading.Event()
        monitor = threading.Thread(target=self._guard(self._monitor, finished), name="es-auto")
        for t in [*threads, monitor] if self._auto else threads:
            t.daemon = True
            t.start()
        try:
            for t in threads:
                while t.is_alive():
                    t.join(POLL)
        except BaseException as exc:  # Ctrl-C: stop the others, keep the session for resume
            self._fail(exc)
            for t in threads:
                t.join(5)
        finished.set()
        if monitor.is_alive():
            monitor.join()
        self._t.stop.clear()
        if self._failure is not None:
            raise self._failure

    def _guard(self, fn: Callable[..., None], *args: Any) -> Callable[[], None]:
        def run() -> None:
            try:
                fn(*args)
            except Stopped:
                pass
            except BaseException as exc:
                self._fail(exc)

        return run

    def _fail(self, exc: BaseException) -> None:
        with self._lock:
            if self._failure is None:
                self._failure = exc
        self._stop.set()
        self._t.stop.set()  # retries waiting to try again give up at once

    # --- reader, asker, senders -------------------------------------------------------------

    def _read(self, params: ChunkerParams) -> None:
        chunker = StreamChunker(params)
        whole = hashlib.sha256()
        offset = 0
        # Three streams over the cores (hashlib releases the GIL): cut points here, chunk ids
        # on a small pool, the whole-file digest on a lane of its own, in block order.
        ids = ThreadPoolExecutor(HASH_THREADS, thread_name_prefix="es-hash")
        lane = ThreadPoolExecutor(1, thread_name_prefix="es-whole")
        hashing: deque[tuple[int, int, Future[str]]] = deque()
        digesting: deque[Future[None]] = deque()

        def publish(wait: bool) -> None:
            while hashing and (wait or hashing[0][2].done() or len(hashing) > HASH_AHEAD):
                at, size, cid = hashing.popleft()
                c = _Chunk(at, size, cid.result())
                self._manifest.append(c)
                self._ids.put(c)

        def emit(piece: bytes) -> None:
            nonlocal offset
            if not self._budget.take(len(piece), self._stop):
                raise Stopped
            hashing.append((offset, len(piece), ids.submit(chunk_id, piece)))
            offset += len(piece)
            publish(wait=False)

        try:
            for block in self._source.blocks():
                digesting.append(lane.submit(whole.update, block))
                while len(digesting) > 2:  # bounded: the lane holds at most two blocks
                    digesting.popleft().result()
                for piece in chunker.feed(block):
                    emit(piece)
            for piece in chunker.finish():
                emit(piece)
            publish(wait=True)
            while digesting:
                digesting.popleft().result()
        finally:
            ids.shutdown(cancel_futures=True)
            lane.shutdown(cancel_futures=True)
        self._sha256 = whole.hexdigest()
        self._ids.put(None)

    def _ask_loop(self) -> None:
        limit, done = FIRST_BATCH, False
        while not done:
            item = self._get(self._ids)
            batch = [] if item is None else [item]
            done = item is None
            while not done and len(batch) < limit:
                try:
                    item = self._ids.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    done = True
                else:
                    batch.append(item)
            if batch:
                self._ask(batch)
                limit = min(limit * 2, self._max_batch)
        for _ in range(self._senders):
            self._put(self._work, None)

    def _ask(self, batch: list[_Chunk]) -> None:
        # The run in file order (repeats included) with its offset and sizes: the server
        # hashes the whole file as chunks arrive, so finalize need not read it back.
        answer = self._t.json(
            "POST",
            f"/v1/uploads/{self._upload_id}/missing",
            json={
                "chunk_ids": [c.chunk_id for c in batch],
                "offset": batch[0].offset,
                "sizes": [c.size for c in batch],
            },
            ok=(200,),
            what="asking which chunks are missing",
        )
        missing = set(answer["missing"])
        for c in batch:
            if c.chunk_id in missing and c.chunk_id not in self._scheduled:
                self._scheduled.add(c.chunk_id)
                self._put(self._work, c)
            else:  # stored already, or earlier in this very file
                self._resolve(c, sent=False)

    def _send_loop(self) -> None:
        while True:
            turn = Turn(self._gate, self._stop)
            turn.take()
            try:
                item = self._get(self._work)
                if item is None:
                    return
                self._send(item, turn)
                self._resolve(item, sent=True)
            finally:
                turn.give()

    def _send(self, c: _Chunk, turn: Turn | None = None) -> None:
        if turn is None:
            turn = Turn(self._gate, self._stop)
            try:
                return self._send(c, turn)
            finally:
                turn.give()
        for _ in range(3):
            try:
                self._t.request(
                    "PUT",
                    f"/v1/uploads/{self._upload_id}/chunks/{c.chunk_id}",
                    content=lambda: self._body(c, turn),
                    headers={
                        "Content-Length": str(c.size),
                        "Content-Type": "application/octet-stream",
                    },
                    ok=(200, 201),
                    what=f"sending the chunk at offset {c.offset}",
                )
                self._chunks_sent.add(1)
                return
            except ChunkHashMismatch:
                if chunk_id(self._source.pread(c.offset, c.size)) != c.chunk_id:
                    raise self._source.changed(
                        f"the {c.size} bytes at offset {c.offset} are not the ones hashed"
                    ) from None
                # the same bytes hash right here: they were damaged in transit; send again
        raise ChunkHashMismatch(f"the chunk at offset {c.offset} arrived damaged three times")

    def _body(self, c: _Chunk, turn: Turn) -> Iterator[bytes]:
        """The chunk's bytes, read for this try; the turn is held while they are sent (a retry
        takes it again) and given up after the last piece, before the answer comes."""
        turn.take()
        view = memoryview(self._source.pread(c.offset, c.size))
        for i in range(0, len(view), SEND_PIECE):
            piece = view[i : i + SEND_PIECE]
            self._wire.add(len(piece))
            yield piece  # type: ignore[misc]  # httpx takes any bytes-like piece
        turn.give()

    def _resolve(self, c: _Chunk, *, sent: bool) -> None:
        self._budget.give(c.size)
        if sent:
            self._progress.transferred(c.size)
        else:
            self._skipped.add(c.size)
            self._progress.skipped(c.size)

    def _monitor(self, finished: threading.Event) -> None:
        assert self._auto is not None
        while not finished.wait(POLL) and not self._auto.settled:
            self._gate.set_limit(self._auto.update(self._wire.value, time.monotonic()))

    def _get(self, q: queue.Queue[T]) -> T:
        while True:
            try:
                return q.get(timeout=POLL)
            except queue.Empty:
                if self._stop.is_set():
                    raise Stopped from None

    def _put(self, q: queue.Queue[T], item: T) -> None:
        while True:
            try:
                q.put(item, timeout=POLL)
                return
            except queue.Full:
                if self._stop.is_set():
                    raise Stopped from None

    # --- commit -------------------------------------------------------------------------------

    def _finalize(self) -> dict[str, Any]:
        """Commit, unless the file changed; chunks the server reports missing are sent first
        (they could only have vanished from a store that lost data)."""
        self._source.check_unchanged()
        body = {
            "chunks": [{"id": c.chunk_id, "size": c.size} for c in self._manifest],
            "sha256": self._sha256,
        }
        url = f"/v1/uploads/{self._upload_id}/finalize"
        timeout = 120 + self._source.size / FINALIZE_BYTES_PER_SECOND
        tell_committing(self._progress)
        for _round in range(3):
            try:
                return self._t.json(
                    "POST", url, json=body, ok=(200,), timeout=timeout, what="finalizing"
                )
            except MissingChunks as exc:
                wanted = set(exc.chunk_ids)
                for c in {c.chunk_id: c for c in self._manifest}.values():
                    if c.chunk_id in wanted:
                        self._send(c)
                        self._progress.transferred(c.size)
        return self._t.json("POST", url, json=body, ok=(200,), timeout=timeout, what="finalizing")

    def _abandon(self) -> None:
        """The file changed: drop the session (its chunks stay until gc) and the hint."""
        self._hints.clear(self._hint_key)
        self._abort(self._upload_id)

    def _release_replaced(self) -> None:
        """Abort the session an earlier run opened for this upload, which this run did not
        continue: left open it would pin chunks of content no longer wanted, and reserve its
        size against the bucket's quota, until it expired a week later. Only now, committed:
        until then its pins kept what this run found stored instead of sending it."""
        if self._replaced is not None and self._replaced != self._upload_id:
            self._abort(self._replaced)

    def _abort(self, upload_id: str) -> None:
        try:
            self._t.request("DELETE", f"/v1/uploads/{upload_id}", ok=(204, 404, 410))
        except Exception:
            pass  # it expires on its own
