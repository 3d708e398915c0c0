"""Connection caps: below the open files limit, and per client address."""

from __future__ import annotations

import asyncio
import logging
import resource

import pytest

from edgestore.api import connections
from edgestore.api.connections import AcceptErrorLog, ConnectionCounts, connection_cap


def test_the_cap_leaves_files_to_the_engine() -> None:
    assert connection_cap(None) is None
    assert connection_cap(1024) == 768
    assert connection_cap(256) == 128  # never fewer than RESERVED_FILES kept back
    assert connection_cap(100) == 16


def test_the_soft_open_files_limit_is_raised_to_the_hard_one() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        if hard != resource.RLIM_INFINITY:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, hard // 2), hard))
        limit = connections.open_files_limit()
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == hard
        assert limit == (None if hard == resource.RLIM_INFINITY else hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_connections_count_per_address_and_ipv6_per_64() -> None:
    counts = ConnectionCounts(2)
    first, second = counts.admit("203.0.113.7"), counts.admit("203.0.113.7")
    assert first == second == "ip:203.0.113.7"
    assert counts.admit("203.0.113.7") is None  # a third from the same address
    assert counts.admit("203.0.113.8")  # another address has its own
    counts.release(first)
    assert counts.admit("203.0.113.7") == first  # room again once one closed
    assert counts.admit("2001:db8::1") and counts.admit("2001:db8::2")
    assert counts.admit("2001:db8::ffff") is None  # same /64: same client


def test_trusted_proxies_and_no_cap_count_nothing() -> None:
    counts = ConnectionCounts(1, ["10.0.0.0/24"])
    assert all(counts.admit("10.0.0.5") == "" for _ in range(5))
    assert all(ConnectionCounts(0).admit("203.0.113.7") == "" for _ in range(5))


def test_accept_failures_are_summed_up(caplog: pytest.LogCaptureFixture) -> None:
    handler = AcceptErrorLog()
    loop = asyncio.new_event_loop()
    try:
        context = {
            "message": "socket.accept() out of system resource",
            "exception": OSError(24, "Too many open files"),
        }
        with caplog.at_level(logging.ERROR):
            for _ in range(5000):
                handler(loop, context)
            handler(loop, {"message": "something else"})
    finally:
        loop.close()
    summaries = [r for r in caplog.records if "cannot accept connections" in r.getMessage()]
    assert len(summaries) == 1 and handler.suppressed == 4999
    assert any(r.getMessage() == "something else" for r in caplog.records)  # passed on
