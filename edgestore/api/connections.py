"""How many connections a node holds: fewer than the files it may open, so that slow or idle
clients by the thousand never leave the engine (data files, the database) without a descriptor,
and at most max_connections_per_client from one address, so that one client cannot take them
all (a slowloris needs no credentials: it never finishes a request).

When accept() itself runs out of descriptors, asyncio (3.11) logs a traceback for every
attempt, up to the listen backlog per loop tick, and retries a second later: tens of thousands
of tracebacks a second, a core busy formatting them, the disk filling with the log. Those
records are summed up here, one line every LOG_EVERY seconds.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

from edgestore.api.limits import address_client

log = logging.getLogger("edgestore.server")

RESERVED_FILES = 128  # at least: data files, shard writes, database connections, the log
LOG_EVERY = 10.0
_ACCEPT_FAILED = "socket.accept() out of system resource"

try:
    import resource
except ImportError:  # not POSIX: no limit to read or raise
    resource = None  # type: ignore[assignment]


def open_files_limit() -> int | None:
    """Raise the soft limit on open files to the hard one, as Go programs do (distributions
    leave the soft one at 1024: a thousand slow connections); the limit now in force, None
    where there is none to read."""
    if resource is None:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard and (hard == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):  # some systems refuse RLIM_INFINITY: keep the soft one
            pass
    return None if soft == resource.RLIM_INFINITY else soft


def connection_cap(open_files: int | None) -> int | None:
    """Connections to hold at most, leaving a quarter of the files (never under
    RESERVED_FILES) to everything else; None: no cap."""
    if open_files is None:
        return None
    return max(16, open_files - max(RESERVED_FILES, open_files // 4))


class AcceptErrorLog:
    """A loop exception handler that sums up accept()'s failures for want of descriptors
    (see the module's docstring) and passes everything else to the loop's default."""

    def __init__(self) -> None:
        self.suppressed = 0
        self._last = float("-inf")

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") != _ACCEPT_FAILED:
            loop.default_exception_handler(context)
            return
        self.suppressed += 1
        now = time.monotonic()
        if now - self._last >= LOG_EVERY:
            self._last = now
            log.error(
                "cannot accept connections (%d failure(s) since the last report): %s; raise "
                "the open files limit (ulimit -n, LimitNOFILE=) or put a proxy in front",
                self.suppressed,
                context.get("exception"),
            )
            self.suppressed = 0


class _Refusals:
    """Connections closed for being over the cap: one log line every LOG_EVERY seconds."""

    def __init__(self) -> None:
        self.count = 0
        self._last = float("-inf")

    def record(self, cap: int, *, per_client: bool = False) -> None:
        self.count += 1
        now = time.monotonic()
        if now - self._last >= LOG_EVERY:
            self._last = now
            log.warning(
                "closed %d connection(s) on arrival: over %d %s (see docs/deployment.md)",
                self.count,
                cap,
                "from one address (max_connections_per_client)" if per_client else "in all",
            )
            self.count = 0


refusals = _Refusals()


class ConnectionCounts:
    """Open connections per client address (an IPv6 one by its /64, as rate limits count);
    trusted proxies carry many clients' connections and are not counted."""

    def __init__(self, per_client: int, trusted_proxies: Iterable[str] = ()) -> None:
        self.per_client = per_client
        self._trusted = [ipaddress.ip_network(p, strict=False) for p in trusted_proxies]
        self._open: Counter[str] = Counter()

    def admit(self, host: str | None) -> str | None:
        """Count a new connection: the key to release() it with; None when it is refused
        (the address holds per_client already) or not counted."""
        if not self.per_client or host is None or self._is_trusted(host):
            return ""
        client = address_client(host)
        if self._open[client] >= self.per_client:
            refusals.record(self.per_client, per_client=True)
            return None
        self._open[client] += 1
        return client

    def release(self, client: str) -> None:
        if client:
            self._open[client] -= 1
            if self._open[client] <= 0:
                del self._open[client]

    def _is_trusted(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self._trusted)
