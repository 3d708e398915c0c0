"""The Appender's pipeline: how far its stages may run apart."""

from __future__ import annotations

import hashlib
import threading
from concurrent.futures import Future

import pytest

from edgestore.buffers import Buffer
from edgestore.engine import Engine, ingest
from edgestore.engine.dedup import StoredChunk
from edgestore.engine.prefix import RunningDigest
from tests.helpers import KiB, MiB, blocks_of, random_bytes, read_all


def test_cutting_goes_on_while_the_whole_file_hash_lags(
    small_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The thread that cuts chunks does not wait on the hash lane for every stored chunk.

    The lane's first step holds until the append has cut MAX_HELD_CHUNKS chunks: a cutting
    thread that waited for that step before cutting more would never get there.
    """
    cut = 0
    enough = threading.Event()
    waited: list[bool] = []
    real_submit = ingest.Appender._submit
    real_step = RunningDigest.step

    def counting_submit(self: ingest.Appender, chunk: Buffer, *, reserved: bool = False) -> None:
        nonlocal cut
        real_submit(self, chunk, reserved=reserved)
        cut += 1
        if cut >= ingest.MAX_HELD_CHUNKS:
            enough.set()

    def lagging_step(self: RunningDigest, chunk: Buffer, stored: Future[StoredChunk]) -> bytes:
        if not waited:
            waited.append(enough.wait(timeout=10))
        return real_step(self, chunk, stored)

    monkeypatch.setattr(ingest.Appender, "_submit", counting_submit)
    monkeypatch.setattr(RunningDigest, "step", lagging_step)
    data = random_bytes(4 * MiB + 5, seed=71)
    info = small_engine.put(blocks_of(data, 16 * KiB), key="lagging-lane")
    assert waited == [True], "the cutting thread waited for the hash lane's first chunk"
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert read_all(small_engine, info) == data
