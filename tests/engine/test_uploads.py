"""Resumable upload sessions: durable offsets, staged tails, checksums, locks, expiry."""

from __future__ import annotations

import hashlib
import io
import itertools
import threading
import time
from collections.abc import Iterator

import pytest

from edgestore.engine import Engine, ingest
from edgestore.engine.verify import Checksum
from edgestore.errors import (
    ChecksumMismatch,
    OffsetConflict,
    TooLarge,
    TransferInterrupted,
    UploadGone,
    UploadLocked,
    UploadStateError,
)
from edgestore.metadata import uploads as upload_rows
from edgestore.metadata.chunks import reference_mismatches
from tests.helpers import SMALL_CHUNKS, KiB, MiB, blocks_of, random_bytes, read_all


def _interrupted(data: bytes, after: int) -> Iterator[bytes]:
    yield from blocks_of(data[:after], 50 * KiB)
    raise TransferInterrupted("client went away")


def test_append_in_pieces_across_nodes(make_settings) -> None:
    """Each append may land on another node: all state is in the database."""
    data = random_bytes(3 * MiB + 777, seed=1)
    settings = make_settings(**SMALL_CHUNKS)
    with Engine.open(settings) as first:
        up = first.uploads.create(length=len(data), bucket="b", key="k", filename="f.bin")
    cuts = [0, 1, 1000, 65_536, 700_001, 2 * MiB + 5, len(data)]
    for lo, hi in itertools.pairwise(cuts):
        with Engine.open(settings) as node:  # a fresh "process" for every request
            rec = node.uploads.append(up.upload_id, lo, blocks_of(data[lo:hi], 40 * KiB))
            assert rec.offset == hi
            assert node.uploads.get(up.upload_id).offset == hi
    with Engine.open(settings) as node:
        rec = node.uploads.get(up.upload_id)
        assert rec.state == upload_rows.COMPLETE and rec.version_id
        v = node.objects.by_version_id(rec.version_id)
        assert (v.bucket, v.key, v.filename, v.size) == ("b", "k", "f.bin", len(data))
        assert v.sha256 == hashlib.sha256(data).hexdigest()
        assert read_all(node, v) == data
        with node.core.db.read() as conn:
            assert reference_mismatches(conn) == []


def test_resumed_chunks_match_an_uninterrupted_upload(small_engine: Engine) -> None:
    data = random_bytes(2 * MiB, seed=2)
    whole = small_engine.put(blocks_of(data), key="whole")
    up = small_engine.uploads.create(length=len(data), key="pieces")
    off = 0
    for step in (123_457, 400_000, 1, 999_999):
        small_engine.uploads.append(up.upload_id, off, blocks_of(data[off : off + step]))
        off += step
    rec = small_engine.uploads.append(up.upload_id, off, blocks_of(data[off:]))
    pieces = small_engine.objects.by_version_id(rec.version_id)
    same = [e.chunk_id for e in small_engine.objects.manifest(whole)]
    assert [e.chunk_id for e in small_engine.objects.manifest(pieces)] == same


def test_wrong_offset_conflicts(small_engine: Engine) -> None:
    up = small_engine.uploads.create(length=100)
    small_engine.uploads.append(up.upload_id, 0, iter([b"x" * 10]))
    with pytest.raises(OffsetConflict) as info:
        small_engine.uploads.append(up.upload_id, 5, iter([b"y"]))
    assert info.value.expected == 10
    assert small_engine.uploads.get(up.upload_id).offset == 10


def test_bytes_beyond_length_are_refused(small_engine: Engine) -> None:
    up = small_engine.uploads.create(length=10)
    with pytest.raises(TooLarge):
        small_engine.uploads.append(up.upload_id, 0, iter([b"x" * 11]))
    assert small_engine.uploads.get(up.upload_id).offset == 0
    with pytest.raises(TooLarge):
        small_engine.uploads.create(length=small_engine.settings.max_upload_size + 1)


@pytest.mark.parametrize("source", ["blocks", "readable"])
def test_checkpoints_within_one_append_do_not_count_its_bytes_twice(
    small_engine: Engine, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    """A request that fills an upload to its exact length, checkpointing as it goes (as a
    50 MiB PATCH does): the length check counts from where the request began."""
    monkeypatch.setattr(ingest, "COMMIT_EVERY_PARTS", 1)
    data = random_bytes(2 * MiB + 333, seed=9)
    up = small_engine.uploads.create(length=len(data))
    body = io.BytesIO(data) if source == "readable" else blocks_of(data, 64 * KiB)
    done = small_engine.uploads.append(up.upload_id, 0, body)
    assert done.offset == len(data) and done.version_id is not None
    assert read_all(small_engine, small_engine.objects.by_version_id(done.version_id)) == data


def test_a_readable_past_the_length_is_refused_having_read_one_byte_more(
    small_engine: Engine,
) -> None:
    source = io.BytesIO(b"x" * 1000)
    up = small_engine.uploads.create(length=10)
    with pytest.raises(TooLarge):
        small_engine.uploads.append(up.upload_id, 0, source)
    assert source.tell() == 11
    assert small_engine.uploads.get(up.upload_id).offset == 0


def test_a_readable_with_short_reads_and_a_checksum(small_engine: Engine) -> None:
    """A source that returns a few KiB per read (a pipe): offsets, checksum and bytes hold."""

    class Trickle(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self._data = io.BytesIO(data)

        def readinto(self, buffer) -> int:  # type: ignore[override]
            return self._data.readinto(memoryview(buffer)[: 7 * KiB + 3])

    data = random_bytes(900 * KiB, seed=5)
    up = small_engine.uploads.create(length=len(data) + 100)
    good = Checksum("sha1", hashlib.sha1(data).digest())
    rec = small_engine.uploads.append(up.upload_id, 0, Trickle(data), checksum=good)
    assert rec.offset == len(data)
    bad = Checksum("sha1", hashlib.sha1(b"other").digest())
    with pytest.raises(ChecksumMismatch):
        small_engine.uploads.append(up.upload_id, rec.offset, Trickle(b"y" * 100), checksum=bad)
    assert small_engine.uploads.get(up.upload_id).offset == len(data)
    done = small_engine.uploads.append(up.upload_id, rec.offset, Trickle(b"z" * 100))
    assert done.version_id is not None
    v = small_engine.objects.by_version_id(done.version_id)
    assert read_all(small_engine, v) == data + b"z" * 100


def test_checksum_mismatch_keeps_nothing(small_engine: Engine) -> None:
    data = random_bytes(600 * KiB, seed=3)
    up = small_engine.uploads.create(length=2 * len(data))
    bad = Checksum("sha1", hashlib.sha1(b"other").digest())
    with pytest.raises(ChecksumMismatch):
        small_engine.uploads.append(up.upload_id, 0, blocks_of(data), checksum=bad)
    assert small_engine.uploads.get(up.upload_id).offset == 0
    good = Checksum("sha256", hashlib.sha256(data).digest())
    rec = small_engine.uploads.append(up.upload_id, 0, blocks_of(data), checksum=good)
    assert rec.offset == len(data)
    with small_engine.core.db.read() as conn:
        assert reference_mismatches(conn) == []


def test_interrupted_transfer_keeps_what_arrived(small_engine: Engine) -> None:
    data = random_bytes(1 * MiB, seed=4)
    up = small_engine.uploads.create(length=len(data))
    with pytest.raises(TransferInterrupted):
        small_engine.uploads.append(up.upload_id, 0, _interrupted(data, 700_000))
    assert small_engine.uploads.get(up.upload_id).offset == 700_000
    rec = small_engine.uploads.append(up.upload_id, 700_000, blocks_of(data[700_000:]))
    assert read_all(small_engine, small_engine.objects.by_version_id(rec.version_id)) == data


def test_interrupted_checksummed_transfer_keeps_nothing(small_engine: Engine) -> None:
    data = random_bytes(1 * MiB, seed=5)
    up = small_engine.uploads.create(length=len(data))
    ck = Checksum("md5", hashlib.md5(data).digest())
    with pytest.raises(TransferInterrupted):
        small_engine.uploads.append(up.upload_id, 0, _interrupted(data, 700_000), checksum=ck)
    assert small_engine.uploads.get(up.upload_id).offset == 0


def test_lock_blocks_a_second_writer_until_its_lease_expires(make_settings) -> None:
    settings = make_settings(upload_lock_seconds=1.0, **SMALL_CHUNKS)
    with Engine.open(settings) as a, Engine.open(settings) as b:
        up = a.uploads.create(length=100)
        with a.core.db.write() as conn:  # a writer elsewhere holds the lease, then dies
            upload_rows.acquire_lock(conn, up.upload_id, "dead-writer", 1.0)
        with pytest.raises(UploadLocked):
            b.uploads.append(up.upload_id, 0, iter([b"x"]))
        time.sleep(1.1)
        assert b.uploads.append(up.upload_id, 0, iter([b"x"])).offset == 1


def test_a_live_writer_keeps_the_upload_a_silent_one_is_taken_over(
    small_engine: Engine,
) -> None:
    up = small_engine.uploads.create(length=10 * MiB)
    started, quiet, release = threading.Event(), threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def client() -> Iterator[bytes]:
        yield b"a" * 100_000
        started.set()
        while not quiet.is_set():  # a live client keeps sending
            yield b"a" * 1000
            time.sleep(0.01)
        release.wait(10)  # then its connection hangs: nothing more arrives
        yield b"never"

    def first() -> None:
        try:
            small_engine.uploads.append(up.upload_id, 0, client())
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=first)
    t.start()
    assert started.wait(5)
    offset = small_engine.uploads.get(up.upload_id).offset
    with pytest.raises(UploadLocked):  # two live writers: the second is refused
        small_engine.uploads.append(up.upload_id, offset, iter([b"z"]))
    quiet.set()
    time.sleep(1.3)  # the first client has been silent for longer than the takeover delay
    durable = small_engine.uploads.get(up.upload_id).offset
    done = threading.Timer(0.5, release.set)  # the hung read eventually returns
    done.start()
    with pytest.raises(OffsetConflict):
        # the newcomer stops the old writer, which keeps what it received: offset moved
        small_engine.uploads.append(up.upload_id, durable, iter([b"z"]))
    t.join(5)
    assert not t.is_alive()
    assert errors and isinstance(errors[0], TransferInterrupted)
    durable = small_engine.uploads.get(up.upload_id).offset
    assert durable > 100_000
    assert small_engine.uploads.append(up.upload_id, durable, iter([b"z"])).offset == durable + 1


def test_terminate_and_expiry(small_engine: Engine) -> None:
    data = random_bytes(500 * KiB, seed=6)
    up = small_engine.uploads.create(length=10 * MiB)
    small_engine.uploads.append(up.upload_id, 0, blocks_of(data))
    small_engine.uploads.terminate(up.upload_id)
    with pytest.raises(UploadGone):
        small_engine.uploads.append(up.upload_id, len(data), iter([b"x"]))
    short = small_engine.uploads.create(length=10, expires_in=0.2)
    time.sleep(0.3)
    with pytest.raises(UploadGone):
        small_engine.uploads.get_open(short.upload_id)
    assert small_engine.uploads.expire_stale(local_grace=3600) >= 1
    assert small_engine.uploads.get(short.upload_id).state == upload_rows.EXPIRED
    with small_engine.core.db.read() as conn:
        assert reference_mismatches(conn) == []


def test_deferred_length(small_engine: Engine) -> None:
    up = small_engine.uploads.create()
    assert up.length is None
    small_engine.uploads.append(up.upload_id, 0, iter([b"hello "]))
    with pytest.raises(Exception, match="less than"):
        small_engine.uploads.declare_length(up.upload_id, 3)
    small_engine.uploads.declare_length(up.upload_id, 11)
    rec = small_engine.uploads.append(up.upload_id, 6, iter([b"world"]))
    assert rec.state == upload_rows.COMPLETE
    v = small_engine.objects.by_version_id(rec.version_id)
    assert read_all(small_engine, v) == b"hello world"
    with pytest.raises(UploadStateError):
        small_engine.uploads.append(up.upload_id, 11, iter([b"!"]))


def _finish_together(engine: Engine, ids: list[str], parts: list[bytes]) -> None:
    """Append each partial's whole content, all threads released at the same moment."""
    start = threading.Barrier(len(ids))
    errors: list[BaseException] = []

    def finish(uid: str, data: bytes) -> None:
        try:
            start.wait()
            engine.uploads.append(uid, 0, blocks_of(data, 64 * KiB))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=finish, args=a) for a in zip(ids, parts, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_partials_finishing_together_complete_their_final_once(small_engine: Engine) -> None:
    """concatenation-unfinished: whichever partial lands last (here two at the same moment,
    on PostgreSQL truly in parallel) makes the waiting final an object, exactly once."""
    uploads = small_engine.uploads
    for round_ in range(4):
        parts = [random_bytes(300 * KiB + i, seed=40 + 2 * round_ + i) for i in range(2)]
        ids = [uploads.create(length=len(p), is_partial=True).upload_id for p in parts]
        final = uploads.concatenate(ids, key=f"final-{round_}")
        assert final.state == upload_rows.OPEN and final.length == sum(map(len, parts))
        _finish_together(small_engine, ids, parts)
        done = uploads.get(final.upload_id)
        assert done.state == upload_rows.COMPLETE and done.offset == sum(map(len, parts))
        assert done.version_id is not None
        version = small_engine.objects.by_version_id(done.version_id)
        assert version.version == 1 and read_all(small_engine, version) == b"".join(parts)
    with small_engine.core.db.read() as conn:
        assert reference_mismatches(conn) == []


def test_a_final_upload_takes_no_bytes_of_its_own(small_engine: Engine) -> None:
    uploads = small_engine.uploads
    part = uploads.create(length=10, is_partial=True)
    final = uploads.concatenate([part.upload_id])
    with pytest.raises(UploadStateError):
        uploads.append(final.upload_id, 0, [b"x"])
    uploads.append(part.upload_id, 0, [b"0123456789"])
    assert uploads.get(final.upload_id).state == upload_rows.COMPLETE


@pytest.fixture
def tail_loads(monkeypatch) -> list[int]:
    """How many times a staged tail is read back from disk (the real read, counted)."""
    from edgestore.engine import staging

    count = [0]
    real_load = staging.load

    def counting_load(*args, **kwargs):
        count[0] += 1
        return real_load(*args, **kwargs)

    monkeypatch.setattr(staging, "load", counting_load)
    return count


def test_the_next_request_goes_on_from_the_warm_chunker(make_settings, tail_loads) -> None:
    """Within a process, the next append resumes from the chunker the last one left (no
    read of the staged tail); another process, or a tail changed meanwhile, reads it back."""
    settings = make_settings(**SMALL_CHUNKS)
    data = random_bytes(700 * KiB + 5, seed=11)
    cuts = [0, 10_000, 150_000, 150_500, 420_000, 600_000, len(data)]
    with Engine.open(settings) as a, Engine.open(settings) as b:
        up = a.uploads.create(length=len(data), key="warm")
        a.uploads.append(up.upload_id, 0, blocks_of(data[: cuts[1]]))
        a.uploads.append(up.upload_id, cuts[1], blocks_of(data[cuts[1] : cuts[2]]))
        assert tail_loads[0] == 0  # the same process, the same tail: from memory
        b.uploads.append(up.upload_id, cuts[2], blocks_of(data[cuts[2] : cuts[3]]))
        assert tail_loads[0] == 1  # another node reads the staged tail
        a.uploads.append(up.upload_id, cuts[3], blocks_of(data[cuts[3] : cuts[4]]))
        assert tail_loads[0] == 2  # b changed the tail: a's warm chunker is stale, not used
        a.uploads.append(up.upload_id, cuts[4], blocks_of(data[cuts[4] : cuts[5]]))
        assert tail_loads[0] == 2
        rec = a.uploads.append(up.upload_id, cuts[5], blocks_of(data[cuts[5] :]))
        assert rec.state == upload_rows.COMPLETE
        v = a.objects.by_version_id(rec.version_id)
        assert read_all(a, v) == data and v.sha256 == hashlib.sha256(data).hexdigest()
        whole = a.put(blocks_of(data), key="whole")
        assert [e.chunk_id for e in a.objects.manifest(v)] == [
            e.chunk_id for e in a.objects.manifest(whole)
        ]


def test_warm_tails_are_bounded_and_expire() -> None:
    from edgestore.chunking import DEFAULT_PARAMS, StreamChunker
    from edgestore.engine.warm import WarmTails
    from edgestore.metadata.uploads import TailRef

    def ref(n: int) -> TailRef:
        return TailRef(f"staging/u/{n}.t", ("d0", "d1"), n, "c")

    one = StreamChunker(DEFAULT_PARAMS).capacity
    warm = WarmTails(budget=2 * one, seconds=60)
    chunkers = {n: StreamChunker(DEFAULT_PARAMS) for n in range(3)}
    for n, c in chunkers.items():
        warm.put(f"u{n}", ref(n), c)
    assert warm.take("u0", ref(0)) is None  # the least recently used went first
    assert warm.take("u1", ref(99)) is None  # not the committed tail: never used...
    assert warm.take("u1", ref(1)) is None  # ...and dropped
    assert warm.take("u2", ref(2)) is chunkers[2]
    assert warm.take("u2", ref(2)) is None  # taken: the append owns it now
    old = WarmTails(budget=2 * one, seconds=0.05)
    old.put("u", ref(1), chunkers[1])
    assert old.held_bytes == one
    time.sleep(0.1)
    old.prune()  # the server's upkeep: an upload gone quiet gives its memory back
    assert old.held_bytes == 0
    assert old.take("u", ref(1)) is None
    warm.put("u5", ref(5), chunkers[0])
    warm.forget("u5")
    assert warm.take("u5", ref(5)) is None


def test_no_warm_chunkers_when_their_memory_is_zero(make_settings, tail_loads) -> None:
    data = random_bytes(30_000, seed=12)
    with Engine.open(make_settings(**SMALL_CHUNKS, upload_warm_bytes=0)) as engine:
        up = engine.uploads.create(length=len(data), key="cold")
        engine.uploads.append(up.upload_id, 0, blocks_of(data[:10_000]))
        engine.uploads.append(up.upload_id, 10_000, blocks_of(data[10_000:20_000]))
        assert tail_loads[0] == 1
        rec = engine.uploads.append(up.upload_id, 20_000, blocks_of(data[20_000:]))
        assert read_all(engine, engine.objects.by_version_id(rec.version_id)) == data


# --- interrupted appends and mid-append checkpoints ------------------------------------------


def _all_then_cut(data: bytes) -> Iterator[bytes]:
    """Every byte arrives, then the request is cut (a chunked body whose last chunk never
    came, the server shutting down as the last block lands, a takeover)."""
    yield from blocks_of(data, 50 * KiB)
    raise TransferInterrupted("client went away")


@pytest.mark.parametrize("start", [0, 100_000])
def test_an_interrupted_append_that_brought_the_last_byte_completes(
    small_engine: Engine, start: int
) -> None:
    """HEAD then reports Upload-Offset == Upload-Length, and tus clients (tus-js-client,
    edgestore's own) take that as done and send nothing more: the upload must be complete."""
    data = random_bytes(700 * KiB + 3, seed=31)
    up = small_engine.uploads.create(length=len(data))
    if start:
        small_engine.uploads.append(up.upload_id, 0, blocks_of(data[:start]))
    try:
        small_engine.uploads.append(up.upload_id, start, _all_then_cut(data[start:]))
    except TransferInterrupted:
        pass
    rec = small_engine.uploads.get(up.upload_id)
    assert rec.offset == len(data)
    assert rec.state == upload_rows.COMPLETE
    v = small_engine.objects.by_version_id(rec.version_id)
    assert read_all(small_engine, v) == data
    assert v.sha256 == hashlib.sha256(data).hexdigest()


def test_a_checkpoint_during_an_append_never_moves_the_offset_back(make_settings) -> None:
    """An interrupted request leaves a staged tail as long as it was (up to a max-size chunk,
    chunk boundaries inside). The next request cuts its first chunk at the first of those
    boundaries; a checkpoint it makes then (a slow client: one second has passed) must not
    replace the acknowledged tail by that shorter chunk: the bytes after it, acknowledged,
    would be in memory only (and the old tail's files removed). A crash there loses them."""
    settings = make_settings(**SMALL_CHUNKS)  # chunks of 16 / 64 / 256 KiB
    data = random_bytes(2 * MiB, seed=32)
    acked = 250 * KiB
    with Engine.open(settings) as a:
        up = a.uploads.create(length=len(data))
        with pytest.raises(TransferInterrupted):
            a.uploads.append(up.upload_id, 0, _interrupted(data, acked))
        rec = a.uploads.get(up.upload_id)
        assert rec.offset == acked and rec.tail is not None and rec.tail.length == acked
    seen: list[int] = []

    def slow_client_then_crash() -> Iterator[bytes]:
        yield data[acked : acked + 20 * KiB]  # the buffer passes 256 KiB: a chunk is cut
        time.sleep(1.2)  # a slow link: the next block comes after COMMIT_EVERY_SECONDS
        yield data[acked + 20 * KiB : acked + 21 * KiB]
        time.sleep(0.2)
        yield data[acked + 21 * KiB : acked + 22 * KiB]
        with Engine.open(settings) as other:  # HEAD on another node, while this one runs
            seen.append(other.uploads.get(up.upload_id).offset)
        raise RuntimeError("the process dies")

    with Engine.open(settings) as b, pytest.raises(RuntimeError, match="dies"):
        b.uploads.append(up.upload_id, acked, slow_client_then_crash())
    assert seen and seen[0] >= acked, f"HEAD said {seen[0]} after {acked} was acknowledged"
    with Engine.open(settings) as c:
        rec = c.uploads.get(up.upload_id)
        assert rec.offset >= acked, f"acknowledged {acked}, durable {rec.offset}"
        done = c.uploads.append(up.upload_id, rec.offset, blocks_of(data[rec.offset :]))
        assert read_all(c, c.objects.by_version_id(done.version_id)) == data
