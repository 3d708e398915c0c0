"""PostgreSQL: writers that collide on the same chunk rows and bucket totals, and `check
--fix`'s recount beside them, take their row locks in one order, so none deadlocks (the order:
docs/architecture.md, Lock order). Each test runs two real writers in threads for a few rounds;
before, PostgreSQL broke a deadlock in most runs, failing one side (a 503) or making it run
again (a checkpoint, a delete), which the server log named with both statements."""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable

import pytest
import sqlalchemy as sa

from edgestore.config import load_settings
from edgestore.engine import Engine
from edgestore.engine.native import ManifestChunk
from edgestore.engine.objects import ObjectSelector
from edgestore.metadata import consistency, totals
from edgestore.metadata.chunks import reference_mismatches
from edgestore.metadata.schema import chunks
from tests.helpers import SMALL_CHUNKS, KiB, MiB, blocks_of, random_bytes
from tests.native import chunks_of

pytestmark = pytest.mark.postgres


def _collide(
    one: Callable[[], None], other: Callable[[], None], rounds: int
) -> list[BaseException]:
    """`one` `rounds` times in a thread while `other` runs again and again in another until
    the first is done; what either raised."""
    errors: list[BaseException] = []
    done = threading.Event()

    def first() -> None:
        try:
            for _ in range(rounds):
                one()
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    def second() -> None:
        try:
            while not done.is_set():
                other()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not any(t.is_alive() for t in threads)
    return errors


def _run_again(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Transactions run again after PostgreSQL failed them to break a deadlock."""
    return [r.getMessage() for r in caplog.records if "transaction conflict" in r.getMessage()]


def _exact(engine: Engine) -> None:
    with engine.core.db.read() as conn:
        assert reference_mismatches(conn) == []
        assert totals.mismatches(conn) == {}


def test_check_fix_recount_beside_completing_uploads(tmp_path, pg_url, caplog) -> None:
    """The recount locked its chunk rows FOR UPDATE, in id order. A completing upload hands its
    parts over to the version's manifest (counts unchanged), and each manifest row's foreign
    key takes a key-share lock on its chunk row, in file order: `SELECT chunks.chunk_id,
    chunks.refcount FROM chunks WHERE chunks.chunk_id IN (...) ORDER BY chunks.chunk_id FOR
    UPDATE` and `INSERT INTO manifests ...` waited for each other in nearly every round (the
    `check --fix` beside writers that failed in CI). The recount locks FOR NO KEY UPDATE now,
    as a refcount UPDATE does: it still waits for every writer changing a count, and a
    key-share lock does not block it."""
    caplog.set_level(logging.INFO, logger="edgestore.metadata.db")
    settings = load_settings(home=tmp_path / "home", database_url=pg_url, **SMALL_CHUNKS)
    data = random_bytes(8 * MiB, seed=21)
    half = len(data) // 2
    with Engine.open(settings) as writer, Engine.open(settings) as checker:
        writer.put(blocks_of(data), key="stored")  # ~100 chunks, each round's dedup hits
        with checker.core.db.read() as conn:
            ids = list(conn.execute(sa.select(chunks.c.chunk_id)).scalars())

        def upload() -> None:
            rec = writer.uploads.create(key="k", length=len(data))
            writer.uploads.append(rec.upload_id, 0, blocks_of(data[:half]))
            writer.uploads.append(rec.upload_id, half, blocks_of(data[half:]))

        def recount() -> None:  # check --fix's transaction, run directly: not run again
            with checker.core.db.write() as conn:
                consistency.recount_refs(conn, ids)

        assert _collide(upload, recount, rounds=3) == []
        assert _run_again(caplog) == []
        _exact(checker)


def test_a_native_finalize_releasing_unused_pins_beside_a_delete(tmp_path, pg_url) -> None:
    """Finalize took its manifest's references, then its bucket's totals, then dropped the
    session's pins: a pinned chunk the manifest does not use was locked after the totals row.
    A delete of a version holding it, in the same bucket, locks it and then the totals row:
    `UPDATE chunks SET refcount=(chunks.refcount - ...)` (the pins released) and `INSERT INTO
    bucket_totals ... ON CONFLICT` (the delete's) waited for each other, and the finalize
    failed with a 503 in about a third of the rounds. Its references change in one pass now,
    the pins netted against the manifest, before the object and totals rows."""
    settings = load_settings(home=tmp_path / "home", database_url=pg_url, **SMALL_CHUNKS)
    # A file of one block four times: its distinct chunks leave the session room to pin others.
    x = random_bytes(512 * KiB, seed=22) * 4
    y = random_bytes(1 * MiB, seed=23)
    xs, ys = chunks_of(x), chunks_of(y)
    pinned = dict(xs + ys)
    assert sum(len(c) for c in pinned.values()) <= len(x)
    manifest = [ManifestChunk(cid, len(c)) for cid, c in xs]
    with Engine.open(settings) as one, Engine.open(settings) as two:
        held = [two.put(blocks_of(y), key="y")]

        def finalize() -> None:
            session = one.native.create(size=len(x), key="x")
            for cid in one.native.missing(session.upload_id, list(pinned)):
                one.native.put_chunk(session.upload_id, cid, pinned[cid])
            one.native.finalize(session.upload_id, manifest, hashlib.sha256(x).hexdigest())

        def replace() -> None:
            two.objects.delete(held.pop())
            held.append(two.put(blocks_of(y), key="y"))

        assert _collide(finalize, replace, rounds=8) == []
        _exact(one)


def test_a_partial_completing_finals_in_two_buckets_beside_puts(tmp_path, pg_url, caplog) -> None:
    """A partial awaited by finals in buckets a and b completed them one after the other: the
    first's chunk rows, object row and totals row of a, then the second's chunk rows. A put
    and delete in bucket a of the second's other chunks locks those, then a's totals: `UPDATE
    chunks SET refcount=(chunks.refcount + ...)` and `INSERT INTO bucket_totals ... ON
    CONFLICT` waited for each other, and the checkpoint or the delete ran again in about one
    round in four. The finals' references (with the partial's last parts) change in one
    pass now, then their object rows, then the totals rows, by bucket."""
    caplog.set_level(logging.INFO, logger="edgestore.metadata.db")
    settings = load_settings(home=tmp_path / "home", database_url=pg_url, **SMALL_CHUNKS)
    p, q1, q2 = (random_bytes(1 * MiB, seed=s) for s in (24, 25, 26))
    with Engine.open(settings) as one, Engine.open(settings) as two:

        def partial(data: bytes, *, send: bool = True) -> str:
            rec = one.uploads.create(length=len(data), is_partial=True)
            if send:
                one.uploads.append(rec.upload_id, 0, blocks_of(data))
            return rec.upload_id

        held = [two.put(blocks_of(q2), bucket="a", key="q2")]

        def complete() -> None:
            last, first, other = partial(p, send=False), partial(q1), partial(q2)
            one.uploads.concatenate([first, last], bucket="a", key="f1")
            one.uploads.concatenate([last, other], bucket="b", key="f2")
            done = one.uploads.append(last, 0, blocks_of(p))
            assert done.state == "complete"

        def replace() -> None:
            two.objects.delete(held.pop())
            held.append(two.put(blocks_of(q2), bucket="a", key="q2"))

        assert _collide(complete, replace, rounds=10) == []
        assert _run_again(caplog) == []
        _exact(one)
        made = one.objects.stat(ObjectSelector(bucket="b", key="f2"))
        assert made.size == len(p) + len(q2)
