"""The server's digest filling on a store several nodes share: one node at a time reads
versions back, from where the last round stopped (on any node, before any restart); a node
that dies mid-read holds the others off for its lease at most."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa

from edgestore.engine import Engine
from edgestore.maintenance import hashes
from edgestore.metadata.clock import now
from edgestore.metadata.objects import VersionInfo
from edgestore.metadata.schema import chunks, job_cursors, manifests, object_versions
from tests.conftest import SettingsFactory

WAIT = 30.0  # seconds a test waits for another thread at most
SKEW_WAIT = 2.0  # seconds two engines' estimates of the database clock may take to agree


def _versions(engine: Engine, count: int, *, unreadable: bool = False) -> list[str]:
    """`count` small (inline) versions without a digest, by version id; with `unreadable`,
    their chunks rotted (a read back fails, so they keep no digest)."""
    ids = []
    for i in range(count):
        v = engine.put(iter([f"version {i} ".encode() * 80]), key=f"v{i}")
        ids.append(str(v.version_id))
    with engine.core.db.write() as conn:
        conn.execute(sa.update(object_versions).values(sha256=None))
        if unreadable:
            cids = sa.select(manifests.c.chunk_id).scalar_subquery()
            conn.execute(
                sa.update(chunks).where(chunks.c.chunk_id.in_(cids)).values(inline_data=b"x")
            )
    return sorted(ids)


def _watch_reads(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The version ids the engine reads back, in order (the reads themselves are real)."""
    seen: list[str] = []
    read = engine.objects.read

    def watched(info: VersionInfo, *args: object, **kwargs: object) -> Iterator[bytes]:
        seen.append(str(info.version_id))
        return read(info, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(engine.objects, "read", watched)
    return seen


def _job(engine: Engine) -> tuple[str | None, str | None]:
    """(position, lease owner) of the shared digest cursor."""
    with engine.core.db.read() as conn:
        row = conn.execute(
            sa.select(job_cursors.c.position, job_cursors.c.owner).where(
                job_cursors.c.job == hashes.DIGEST_JOB
            )
        ).one()
    return row.position, row.owner


def _round_once_free(engine: Engine, owner: str) -> int | None:
    """`owner`'s round once the lease another node gave up (hold=0) is over by this node's
    reading of the database clock. Each engine estimates the server's clock from its own
    reading (metadata/clock.py), up to half a round trip off, so right after the other node's
    last write this node's clock may still be a few milliseconds short of that lease's end.
    The lease it holds while working is DIGEST_LEASE_SECONDS (120 s): still refused after
    SKEW_WAIT, the lease was not given up."""
    deadline = time.monotonic() + SKEW_WAIT
    while True:
        filled = hashes.fill_round(engine, owner=owner, hold=0)
        if filled is not None or time.monotonic() > deadline:
            return filled
        time.sleep(0.01)


def _blocking() -> tuple[Callable[[], None], threading.Event, threading.Event]:
    """A `check` that blocks the first time it is called (a node mid-read) until released."""
    inside, release = threading.Event(), threading.Event()

    def check() -> None:
        if not inside.is_set():
            inside.set()
            assert release.wait(WAIT)

    return check, inside, release


def test_two_nodes_never_read_back_the_same_version_at_once(
    make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two engines on one database: while one node reads versions back, the other's round
    reads nothing (each used to go through every version itself, from its own cursor)."""
    settings = make_settings()
    with Engine.open(settings) as a, Engine.open(settings) as b:
        ids = _versions(a, 3)
        read_a, read_b = _watch_reads(a, monkeypatch), _watch_reads(b, monkeypatch)
        check, inside, release = _blocking()
        done: list[int | None] = []
        node_a = threading.Thread(
            target=lambda: done.append(hashes.fill_round(a, owner="a", hold=0, check=check))
        )
        node_a.start()
        try:
            assert inside.wait(WAIT)  # a is reading the first version back
            assert hashes.fill_round(b, owner="b", hold=0) is None
            assert read_b == []
        finally:
            release.set()
            node_a.join(WAIT)
        assert done == [3] and read_a == ids
        assert _round_once_free(b, "b") == 0  # a's lease is over: b's turn
        assert read_b == []  # nothing left to read
        assert all(b.objects.by_version_id(v).sha256 for v in ids)


def test_a_restart_goes_on_from_the_shared_cursor(
    make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Versions that cannot be read keep no digest: each round goes on past the last one
    tried, on whichever node and after a restart, instead of from the start again."""
    settings = make_settings()
    with Engine.open(settings) as first:
        ids = _versions(first, 3, unreadable=True)
        seen = _watch_reads(first, monkeypatch)
        assert hashes.fill_round(first, owner="n0", hold=0, limit=1) == 0
        assert seen == ids[:1] and _job(first) == (ids[0], "n0")
    checked = list(seen)
    for restart in range(1, 4):
        with Engine.open(settings) as node:  # a new process: a new owner, no memory
            seen = _watch_reads(node, monkeypatch)
            assert hashes.fill_round(node, owner=f"n{restart}", hold=0, limit=1) == 0
            checked += seen
    assert checked == ids  # each once, in turn; the fourth round found the end
    assert _job(node)[0] is None


def test_a_node_that_dies_mid_read_holds_the_job_for_its_lease_at_most(
    make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node stalls (or dies) reading a version back: the others stay out until its lease
    runs out, then one goes on from its position; the stalled node, back, stops at its next
    renewal and does not write its position over the new holder's."""
    monkeypatch.setattr(hashes, "DIGEST_LEASE_SECONDS", 1.0)
    monkeypatch.setattr(hashes, "DIGEST_RENEW_SECONDS", 0.0)
    settings = make_settings()
    with Engine.open(settings) as a, Engine.open(settings) as b:
        ids = _versions(a, 3)
        read_b = _watch_reads(b, monkeypatch)
        check, inside, release = _blocking()
        done: list[int | None] = []
        node_a = threading.Thread(
            target=lambda: done.append(hashes.fill_round(a, owner="a", hold=600, check=check))
        )
        node_a.start()
        try:
            assert inside.wait(WAIT)
            assert hashes.fill_round(b, owner="b", hold=600) is None  # a holds it
            with a.core.db.write() as conn:  # the lease runs out
                conn.execute(sa.update(job_cursors).values(lease_expires=now(conn) - 1))
            assert hashes.fill_round(b, owner="b", hold=600) == 3
            assert read_b == ids
        finally:
            release.set()
            node_a.join(WAIT)
        assert done and done[0] is not None and done[0] <= 1  # a stopped once it knew
        assert _job(a) == (None, "b")


def test_a_round_stopped_midway_keeps_its_place_and_frees_the_job(
    make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server shutting down mid-round: the position of the last version done is kept
    and the lease given up, so the next node goes on at once from there."""
    settings = make_settings()
    with Engine.open(settings) as a:
        ids = _versions(a, 3)

        class Stop(Exception):
            pass

        calls = 0

        def stop_in_the_second(*_args: object) -> None:
            nonlocal calls
            calls += 1
            if calls == 2:
                raise Stop

        with pytest.raises(Stop):
            hashes.fill_round(a, owner="a", hold=600, check=stop_in_the_second)
        assert _job(a) == (ids[0], None)
        seen = _watch_reads(a, monkeypatch)
        assert hashes.fill_round(a, owner="b", hold=600) == 2
        assert seen == ids[1:]
        hashes.leave(a, owner="b")
        assert _job(a) == (None, None)
