"""The server's HTTP protocol: large reads from one shared buffer, split among uploads."""

from __future__ import annotations

import asyncio
import threading

from edgestore.api import protocol
from edgestore.api.protocol import MIN_READ, READ_BUFFER, BoundedHttpToolsProtocol, _LoopReads


def test_is_a_buffered_protocol():
    """asyncio's loop then reads into our buffer instead of its own 256 KiB one."""
    assert issubclass(BoundedHttpToolsProtocol, asyncio.BufferedProtocol)


def test_read_size_is_shared_among_requests_receiving():
    reads = _LoopReads()
    assert reads.size() == READ_BUFFER  # nobody receiving yet: a new upload reads it all
    reads.receiving = 1
    assert reads.size() == READ_BUFFER
    reads.receiving = 4
    assert reads.size() == max(MIN_READ, READ_BUFFER // 4)
    reads.receiving = 1000
    assert reads.size() == MIN_READ


def test_each_loop_thread_has_its_own_buffer():
    """Servers on two threads (two event loops) never read into the same bytes."""
    views: list[memoryview] = []
    t = threading.Thread(target=lambda: views.append(protocol._reads.view))
    t.start()
    t.join()
    assert views[0] is not protocol._reads.view
    assert len(views[0]) == READ_BUFFER
