"""Write leases and upload expiry under wrong clocks: nodes sharing PostgreSQL whose clocks
differ, and a node whose clock jumps (no battery-backed clock, NTP syncing late)."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from edgestore.engine import Engine
from edgestore.errors import UploadLocked
from edgestore.maintenance import gc
from edgestore.metadata import uploads as upload_rows
from edgestore.metadata.schema import uploads
from tests.clocks import HOUR, YEAR, wall_clock_off_by
from tests.helpers import KiB, blocks_of, random_bytes


def _lock(engine: Engine, upload_id: str, owner: str, lease: float = 6.0) -> None:
    with engine.core.db.write() as conn:
        upload_rows.acquire_lock(conn, upload_id, owner, lease)


def test_a_node_30s_ahead_does_not_take_a_live_lease(pg_engine: Engine, monkeypatch) -> None:
    """Node A holds the 6 s lease; node B, whose clock is 30 s ahead, took it at once (A's
    lease had run out by B's clock) and A's request failed mid-body."""
    up = pg_engine.uploads.create(length=100)
    _lock(pg_engine, up.upload_id, "node-a")
    with wall_clock_off_by(monkeypatch, 30), pytest.raises(UploadLocked):
        _lock(pg_engine, up.upload_id, "node-b")


def test_a_node_behind_keeps_its_lease(pg_engine: Engine, monkeypatch) -> None:
    """A node whose clock is an hour behind (booted without a battery-backed clock) wrote a
    lease that had lapsed an hour ago by everyone else's clock: any request took it over."""
    up = pg_engine.uploads.create(length=100)
    with wall_clock_off_by(monkeypatch, -HOUR):
        _lock(pg_engine, up.upload_id, "node-a")
    with pytest.raises(UploadLocked):
        _lock(pg_engine, up.upload_id, "node-b")


def test_a_dead_writer_whose_clock_ran_ahead_frees_its_lease(engine: Engine, monkeypatch) -> None:
    """A writer's clock was two hours ahead (then NTP set it back, or it is another node's),
    and it died: its upload stayed 423-locked for two hours instead of the lease's length."""
    up = engine.uploads.create(length=100)
    with wall_clock_off_by(monkeypatch, 2 * HOUR):
        _lock(engine, up.upload_id, "dead", lease=0.2)
    time.sleep(0.4)
    _lock(engine, up.upload_id, "alive")
    with engine.core.db.read() as conn:
        assert upload_rows.get(conn, up.upload_id).lock_owner == "alive"


def test_gc_on_a_node_a_year_ahead_expires_no_open_upload(pg_engine: Engine, monkeypatch) -> None:
    """A node's clock jumped a year ahead for a minute, and its gc ran then: every open
    upload (a user's 3-day-old one with all its acknowledged bytes) was expired at once."""
    data = random_bytes(40 * KiB, seed=1)
    up = pg_engine.uploads.create(length=2 * len(data))
    pg_engine.uploads.append(up.upload_id, 0, blocks_of(data, 8 * KiB))
    with wall_clock_off_by(monkeypatch, YEAR):
        report = gc.collect(pg_engine, grace=0)
    assert report.uploads_expired == 0
    assert pg_engine.uploads.get(up.upload_id).offset == len(data)


def test_an_upload_made_on_a_node_a_year_behind_does_not_expire_at_once(
    pg_engine: Engine, monkeypatch
) -> None:
    """Created on a node booted with last year's clock, the upload's expiry was last year
    plus 7 days: the first gc on any other node expired it."""
    with wall_clock_off_by(monkeypatch, -YEAR):
        up = pg_engine.uploads.create(length=100)
    assert gc.collect(pg_engine, grace=0).uploads_expired == 0
    with pg_engine.core.db.read() as conn:
        assert upload_rows.get(conn, up.upload_id).state == upload_rows.OPEN


def test_an_append_on_a_node_a_year_ahead_pushes_expiry_by_the_expiry_only(
    pg_engine: Engine, monkeypatch
) -> None:
    """Progress pushes an upload's expiry back by upload_expiry_seconds from now: now by the
    database's clock, not a year out because the appending node's clock was."""
    up = pg_engine.uploads.create(length=100)
    with wall_clock_off_by(monkeypatch, YEAR):
        pg_engine.uploads.append(up.upload_id, 0, blocks_of(random_bytes(50, seed=2)))
    with pg_engine.core.db.read() as conn:
        expires = conn.execute(
            sa.select(uploads.c.expires_at).where(uploads.c.upload_id == up.upload_id)
        ).scalar_one()
    assert expires < time.time() + pg_engine.settings.upload_expiry_seconds + HOUR
