"""Readiness (/readyz): can this node take uploads now? The metadata database answers and can
be written, every data dir is claimed, writable and has room; found on one thread of its own.

Load balancers probe constantly, and a database that does not answer holds a check for up to
its connect timeout (10 s): each probe checking on a thread of the event loop's default pool
could take every one of them. Here one check runs at a time, for any number of probes, and a
probe answers "not ready" when that check takes longer than READY_TIMEOUT_S.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from edgestore.api.errors import without_paths
from edgestore.engine import Engine
from edgestore.errors import StorageError
from edgestore.metadata import chunks as chunk_index
from edgestore.storage.backend import Usage
from edgestore.storage.datadirs import check_free

READY_TIMEOUT_S = 3.0

Problem = tuple[str, str]  # (what anyone may be told, what the server's log says)


class Readiness:
    """The readiness checks of one server's store; thread-safe, shared by every probe."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        # A data dir with less free space than the largest single file a write makes (a
        # staged tail: up to one max-size chunk) cannot take the next upload's bytes.
        self._min_free = engine.settings.chunk_max_size
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="edgestore-readyz")
        self._lock = threading.Lock()
        self._running: Future[list[Problem]] | None = None
        self._health = Health(database_up=False, dirs_up={}, repairs_queued=None, dirs_space={})

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def problems(self) -> list[Problem]:
        """What keeps the node from taking uploads (empty: ready). A probe joins the check
        under way, if any, rather than starting another."""
        with self._lock:
            if self._running is None or self._running.done():
                self._running = self._pool.submit(self._check)
            running = self._running
        try:
            found = await asyncio.wait_for(
                asyncio.shield(asyncio.wrap_future(running)), READY_TIMEOUT_S
            )
            return list(found)  # each probe's own: the check's result is shared
        except TimeoutError:
            detail = (
                f"readiness check unanswered after {READY_TIMEOUT_S:g} s: the metadata "
                "database or a data dir is not responding"
            )
            return [(detail, detail)]

    async def health(self) -> Health:
        """The last check's figures for /metrics (a check run now if none is under way)."""
        await self.problems()
        return self._health

    def _check(self) -> list[Problem]:
        problems: list[Problem] = []
        core = self._engine.core
        queued: int | None = None
        try:
            core.db.check_ready()
            with core.db.read() as conn:
                queued = chunk_index.queue_length(conn)
        except Exception as exc:
            public = "metadata database not usable; the server log says why"
            problems.append((public, f"metadata database: {exc}"))
        dirs = core.dirs
        paths = {str(b.root): name for name, b in dirs.backends.items()}
        up: dict[str, bool] = {}
        space: dict[str, Usage] = {}
        for name, backend in sorted(dirs.backends.items()):
            try:
                if name in dirs.unavailable:  # refused since start, whatever it looks like now
                    raise StorageError(
                        f"{dirs.unavailable[name]} (found at start; restart the server once fixed)"
                    )
                backend.check()  # claimed and writable: its filesystem's figures are its own
                space[name] = backend.usage()
                check_free(backend, space[name], self._min_free)
                up[name] = True
            except StorageError as exc:
                problems.append((without_paths(str(exc), paths), str(exc)))
                up[name] = False
        self._health = Health(
            database_up=queued is not None, dirs_up=up, repairs_queued=queued, dirs_space=space
        )
        return problems


@dataclass(frozen=True, slots=True)
class Health:
    """What the last readiness check found, as /metrics gauges show it."""

    database_up: bool
    dirs_up: dict[str, bool]  # each data dir: claimed, writable, with room for a chunk
    repairs_queued: int | None  # chunks queued for repair; None: the database did not answer
    # Each claimed data dir's filesystem (size, free bytes), a full one included; none for a
    # dir that is missing, not claimed or failing (the figures would be another disk's).
    dirs_space: dict[str, Usage]
