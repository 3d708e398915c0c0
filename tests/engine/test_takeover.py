"""A request that takes over an upload from one of this process's writers: a writer whose
request was cut short is waited for (it only keeps what arrived), not refused (423) or
reported at the offset it had before (a stale offset, then 409)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from edgestore.engine import Engine, ingest
from edgestore.errors import TransferInterrupted
from tests.helpers import KiB, blocks_of, random_bytes, read_all


@pytest.fixture
def slow_keeping(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """The commit of an append whose body was cut short waits for `release`; `keeping` is set
    when it starts waiting."""
    keeping, release = threading.Event(), threading.Event()
    real = ingest.Appender._commit

    def commit(self: ingest.Appender, **kwargs: Any) -> Any:
        if self.source_ended and not keeping.is_set():
            keeping.set()
            release.wait(10)
        return real(self, **kwargs)

    monkeypatch.setattr(ingest.Appender, "_commit", commit)
    return keeping, release


def _cut_after(data: bytes) -> Iterator[bytes]:
    yield from blocks_of(data, 16 * KiB)
    raise TransferInterrupted("client disconnected")


def _start_cut_append(engine: Engine, upload_id: str, data: bytes) -> threading.Thread:
    def run() -> None:
        with pytest.raises(TransferInterrupted):
            engine.uploads.append(upload_id, 0, _cut_after(data))

    t = threading.Thread(target=run)
    t.start()
    return t


def test_an_offset_retrieval_waits_for_a_cut_request_to_keep_its_bytes(
    small_engine: Engine, slow_keeping: tuple[threading.Event, threading.Event]
) -> None:
    keeping, release = slow_keeping
    data = random_bytes(300 * KiB, seed=41)
    up = small_engine.uploads.create(length=2 * len(data))
    writer = _start_cut_append(small_engine, up.upload_id, data)
    assert keeping.wait(10)
    threading.Timer(0.3, release.set).start()
    small_engine.uploads.settle(up.upload_id)
    assert small_engine.uploads.get(up.upload_id).offset == len(data)
    writer.join(10)


def test_the_next_request_waits_for_a_cut_request_instead_of_423(
    small_engine: Engine, slow_keeping: tuple[threading.Event, threading.Event]
) -> None:
    keeping, release = slow_keeping
    first, second = random_bytes(300 * KiB, seed=42), random_bytes(200 * KiB, seed=43)
    up = small_engine.uploads.create(length=len(first) + len(second))
    writer = _start_cut_append(small_engine, up.upload_id, first)
    assert keeping.wait(10)
    threading.Timer(0.3, release.set).start()
    rec = small_engine.uploads.append(up.upload_id, len(first), blocks_of(second))
    writer.join(10)
    assert rec.version_id is not None
    info = small_engine.objects.by_version_id(rec.version_id)
    assert read_all(small_engine, info) == first + second
