"""Staged tails: written at once on two data dirs, grown in place while no chunk is cut, and
never read past what the committed record says."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest

from edgestore.engine import Engine, staging
from edgestore.errors import StorageError
from edgestore.metadata import uploads as upload_rows
from tests.helpers import SMALL_CHUNKS, KiB, blocks_of, count_flushes, random_bytes, read_all

UID1, UID2, UID3, UID4, UID5 = (f"{i:08x}-0000-4000-8000-000000000000" for i in range(1, 6))


@pytest.fixture
def io():
    with ThreadPoolExecutor(4) as pool:
        yield pool


def _files(engine: Engine, ref) -> dict[str, int]:
    """Size of the tail's file on each of its data dirs."""
    return {n: engine.core.dirs.backends[n].stat(ref.key).size for n in ref.backends}


def test_a_tail_is_written_to_two_dirs(small_engine: Engine, io) -> None:
    data = random_bytes(10_000, seed=1)
    ref = staging.stage(small_engine.core.dirs, io, UID1, 0, data)
    assert len(set(ref.backends)) == 2
    assert staging.load(small_engine.core.dirs, ref) == data
    assert _files(small_engine, ref) == {n: len(data) for n in ref.backends}


def test_a_grown_tail_keeps_the_old_record_readable(small_engine: Engine, io) -> None:
    """Until the new record commits, the old one must still read back: only bytes after it
    are written; abandoning the growth leaves the file (and the old record) as they were."""
    dirs = small_engine.core.dirs
    old_bytes = random_bytes(5000, seed=2)
    old = staging.stage(dirs, io, UID2, 0, old_bytes)
    more = old_bytes + random_bytes(3000, seed=3)
    pending = staging.PendingTail(dirs, io, UID2, 0, more, grows=old)
    assert pending.extends and pending.ref.key == old.key
    new = pending.finish()
    assert (new.length, new.backends) == (len(more), old.backends)
    assert staging.load(dirs, old) == old_bytes  # a crash before the commit: still valid
    assert staging.load(dirs, new) == more
    # A growth given up (the append failed) leaves the file for the committed record.
    again = staging.PendingTail(dirs, io, UID2, 0, more + b"x" * 100, grows=new)
    again.cancel()
    assert staging.load(dirs, new) == more


def test_a_tail_from_another_process_is_not_grown(small_engine: Engine, io) -> None:
    """Only files this process staged are written into: a writer elsewhere that outlived
    its lease may still be writing into its own."""
    dirs = small_engine.core.dirs
    data = random_bytes(4000, seed=4)
    ours = staging.stage(dirs, io, UID3, 0, data)
    prefix, _, token = ours.key.rpartition(".")
    foreign = replace(ours, key=f"{prefix}.0000ffff-{token.split('-')[1]}")
    for name in foreign.backends:
        dirs.backends[name].put(foreign.key, [data])
    pending = staging.PendingTail(dirs, io, UID3, 0, data + b"more", grows=foreign)
    assert not pending.extends
    new = pending.finish()
    assert new.key not in (foreign.key, ours.key)
    assert staging.load(dirs, new) == data + b"more"


def test_bytes_past_the_record_are_ignored(small_engine: Engine, io) -> None:
    """A growth whose commit never came leaves bytes past the recorded length."""
    dirs = small_engine.core.dirs
    data = random_bytes(3000, seed=5)
    ref = staging.stage(dirs, io, UID4, 0, data)
    for name in ref.backends:
        dirs.backends[name].write_at(ref.key, len(data), [b"left by a failed request"])
        dirs.backends[name].flush()
    assert staging.load(dirs, ref) == data


def test_a_damaged_copy_is_read_around(small_engine: Engine, io) -> None:
    dirs = small_engine.core.dirs
    data = random_bytes(3000, seed=6)
    ref = staging.stage(dirs, io, UID5, 0, data)
    first = dirs.backends[ref.backends[0]]
    first.put(ref.key, [b"\0" * len(data)])
    assert staging.load(dirs, ref) == data
    dirs.backends[ref.backends[1]].delete(ref.key)
    with pytest.raises(StorageError, match="unreadable"):
        staging.load(dirs, ref)


def test_a_tail_written_before_another_flush_began_is_not_flushed_again(
    small_engine: Engine, io, monkeypatch
) -> None:
    """The copies are written while the request's last chunks are stored; a chunk's flush
    that began after they were complete made them durable, so finish() adds none."""
    dirs = small_engine.core.dirs
    calls = count_flushes(small_engine.core.dirs, monkeypatch)
    data = random_bytes(20_000, seed=11)
    pending = staging.PendingTail(dirs, io, UID5, 0, data)
    for write in pending._writes:
        write.result()
    dirs.flush([dirs.names[-1]])  # e.g. a chunk's shards: the same filesystem
    ref = pending.finish()
    assert calls == [dirs.names[-1]]
    assert staging.load(dirs, ref) == data


def test_a_tail_with_no_flush_since_its_writes_is_flushed(
    small_engine: Engine, io, monkeypatch
) -> None:
    dirs = small_engine.core.dirs
    dirs.flush(dirs.names)  # before the tail's writes: covers none of them
    calls = count_flushes(small_engine.core.dirs, monkeypatch)
    ref = staging.stage(dirs, io, UID5, 0, random_bytes(20_000, seed=12))
    assert len(calls) == 1 and calls[0] in ref.backends


def test_small_requests_grow_one_tail_file(make_settings) -> None:
    """Requests smaller than a chunk: the tail's file grows by what each one brought
    instead of being rewritten whole, and the upload still reads back byte for byte."""
    settings = make_settings(**SMALL_CHUNKS)
    data = random_bytes(40 * KiB, seed=7)
    with Engine.open(settings) as engine:
        up = engine.uploads.create(length=len(data), key="small-requests")
        keys, offset = set(), 0
        for size in (1000, 2000, 3000, 500, 4000):  # 10,500 bytes: under the 16 KiB minimum
            rec = engine.uploads.append(up.upload_id, offset, blocks_of(data[offset:][:size]))
            offset += size
            assert rec.offset == offset and rec.tail is not None
            assert rec.tail.length == offset  # no chunk cut yet: all of it is the tail
            assert _files(engine, rec.tail) == {n: offset for n in rec.tail.backends}
            keys.add(rec.tail.key)
        assert len(keys) == 1
        rec = engine.uploads.append(up.upload_id, offset, blocks_of(data[offset:]))
        assert rec.state == upload_rows.COMPLETE
        assert read_all(engine, engine.objects.by_version_id(rec.version_id)) == data
        for backend in engine.core.dirs.backends.values():
            assert not [b for b in backend.list(staging.PREFIX)], "the tail was removed"


def test_a_request_whose_commit_fails_leaves_the_upload_as_it_was(
    make_settings, monkeypatch
) -> None:
    """The tail grew on disk, then the checkpoint failed: the upload still reads its old
    offset and tail, and a retry (on another node too) finishes it byte for byte."""
    from edgestore.engine import ingest

    settings = make_settings(**SMALL_CHUNKS)
    data = random_bytes(60 * KiB, seed=8)
    with Engine.open(settings) as a:
        up = a.uploads.create(length=len(data), key="failed-commit")
        rec = a.uploads.append(up.upload_id, 0, blocks_of(data[:4000]))
        before = rec.tail
        real = ingest.upload_rows.checkpoint

        def failing(*args, **kwargs):
            raise RuntimeError("database went away")

        monkeypatch.setattr(ingest.upload_rows, "checkpoint", failing)
        with pytest.raises(RuntimeError, match="went away"):
            a.uploads.append(up.upload_id, 4000, blocks_of(data[4000:9000]))
        monkeypatch.setattr(ingest.upload_rows, "checkpoint", real)
        rec = a.uploads.get(up.upload_id)
        assert rec.offset == 4000 and rec.tail == before
        assert staging.load(a.core.dirs, rec.tail) == data[:4000]
    with Engine.open(settings) as b:  # another node: no warm chunker, reads the tail back
        b.uploads.append(up.upload_id, 4000, blocks_of(data[4000:9000]))
        done = b.uploads.append(up.upload_id, 9000, blocks_of(data[9000:]))
        assert done.state == upload_rows.COMPLETE
        assert read_all(b, b.objects.by_version_id(done.version_id)) == data


def test_a_tail_read_around_a_damaged_copy_is_not_grown_into_it(make_settings) -> None:
    """One copy of the staged tail is damaged (or gone); the next request reads the other
    one, as it must. Growing both files in place then leaves the damaged copy damaged for
    good, under a record that says both hold the tail: every byte acknowledged from then on
    is on one intact copy only, and losing that disk loses them."""
    settings = make_settings(**SMALL_CHUNKS, upload_warm_bytes=0)  # tails read back
    data = random_bytes(40 * KiB, seed=33)
    with Engine.open(settings) as e:
        up = e.uploads.create(length=len(data))
        rec = e.uploads.append(up.upload_id, 0, blocks_of(data[:5000]))
        first, second = (e.core.dirs.backends[n] for n in rec.tail.backends)
        first.put(rec.tail.key, [b"\0" * 5000])  # bit rot, or a file lost on that disk
        rec = e.uploads.append(up.upload_id, 5000, blocks_of(data[5000:9000]))
        assert rec.offset == 9000  # acknowledged, "on two data dirs"
        second.delete(rec.tail.key)  # then the other disk goes
        assert staging.load(e.core.dirs, rec.tail) == data[:9000]
