"""The CPU pool: the only door to threads for hashing, compression, erasure coding and I/O.

hashlib, zstd and file I/O release the GIL, so two workers use two cores. Work is submitted
with back-pressure (a bounded window), never "read it all, then process".
"""

from __future__ import annotations

import contextvars
import ctypes
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")
_END: Any = object()  # an iterator's end, for next(it, _END)


class ContextThreadPool(ThreadPoolExecutor):
    """A thread pool whose work runs in a copy of its submitter's context, as
    asyncio.to_thread's does: what the work logs on a request's behalf (a shard read around
    during a download's read-ahead) carries that request's id."""

    def submit(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> Future[R]:
        return super().submit(contextvars.copy_context().run, fn, *args, **kwargs)


_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's ceiling for this setting on 64-bit


def _libc_function(name: str) -> Any | None:
    """A glibc function through ctypes, or None where there is no such libc (musl, macOS).
    Looked up among the process's own symbols (libc's among them), as buffers.py does:
    ctypes.util.find_library("c") ran ldconfig, ~30 ms of every CLI command's start."""
    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None


def tune_allocator() -> bool:
    """Keep chunk-sized buffers in the heap instead of fresh mmaps (glibc only).

    By default glibc serves each multi-MiB chunk buffer with a new mmap, so every chunk pays
    a page fault per 4 KiB (measured here: ~1 s of kernel time per GiB ingested). Buffers
    below 32 MiB come from the heap instead, and at most two arenas serve all threads (one
    per thread kept ~70 MiB more resident with dozens of I/O threads). An arena's top is
    trimmed only past 64 MiB free: at 16 MiB, freeing a few chunk buffers at once shrank it
    and the next ones faulted their pages in again (one tus upload of 1 GiB: 425k minor
    faults, against 121-152k at 64 MiB; 8 concurrent 1 GiB uploads: 130 -> 144 MB/s, peak
    RSS 305 -> 295 MiB, within the noise). Memory stays bounded by the pipeline's in-flight
    limit and the periodic malloc_trim below.
    """
    mallopt = _libc_function("mallopt")
    if mallopt is None:
        return False
    return bool(
        mallopt(_M_ARENA_MAX, 2)
        and mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
        and mallopt(_M_TRIM_THRESHOLD, 64 * 1024 * 1024)
    )


_trim_lock = threading.Lock()
_last_trim = 0.0
TRIM_INTERVAL = 0.5


def _load_malloc_trim() -> Callable[[int], int] | None:
    fn = _libc_function("malloc_trim")
    if fn is not None:
        fn.argtypes = [ctypes.c_size_t]
        fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


_malloc_trim = _load_malloc_trim()


def release_free_memory() -> None:
    """Give the free pages inside the heap back to the OS (glibc malloc_trim), at most every
    TRIM_INTERVAL seconds.

    Chunk-sized buffers live in the heap (see tune_allocator), where a freed ~8 MiB chunker
    buffer between live ones is not returned by the top-of-heap trim; an append that ends
    frees several, so it calls this, and so does each chunk write. Measured with 8 concurrent
    1 GiB tus uploads (bench/tus.py): peak RSS 332 -> 313 MiB.
    """
    global _last_trim
    if _malloc_trim is None:
        return
    now = time.monotonic()
    with _trim_lock:
        if now - _last_trim < TRIM_INTERVAL:
            return
        _last_trim = now
    _malloc_trim(0)


class Budget:
    """Tokens shared by every reader of a store: how many chunks may be decoded ahead of
    their turn at once. Each download's read-ahead holds decoded chunks while its client
    takes the current one; with slow clients that is up to `read_ahead_chunks` chunks per
    download, so many downloads at once would hold gigabytes. Past the budget a download
    decodes one chunk at a time."""

    def __init__(self, tokens: int) -> None:
        self._free = tokens
        self._lock = threading.Lock()

    def try_take(self) -> bool:
        with self._lock:
            if self._free <= 0:
                return False
            self._free -= 1
            return True

    def give(self) -> None:
        with self._lock:
            self._free += 1

    @property
    def free(self) -> int:
        return self._free


class _Unlimited(Budget):
    def try_take(self) -> bool:
        return True

    def give(self) -> None:
        pass


_UNLIMITED = _Unlimited(0)


class CpuPool:
    """A fixed-size thread pool for CPU-heavy, GIL-releasing work."""

    def __init__(
        self, workers: int, name: str = "edgestore-cpu", queue_per_worker: int = 2
    ) -> None:
        self.workers = max(1, workers)
        self._executor = ContextThreadPool(self.workers, thread_name_prefix=name)
        # Bounds chunks in flight across all uploads, hence memory: ~(workers * 3) * 8 MiB.
        self._slots = threading.BoundedSemaphore(self.workers * (1 + queue_per_worker))

    def submit(self, fn: Callable[..., R], *args: object) -> Future[R]:
        return self._executor.submit(fn, *args)

    def map_ordered(
        self,
        fn: Callable[[T], R],
        items: Iterable[T],
        window: int | None = None,
        budget: Budget | None = None,
    ) -> Iterator[R]:
        """fn over items with at most `window` in flight, results in input order.

        Used for read-ahead: the next chunks decode while the current one is being sent.
        With a `budget`, each item in flight beyond the first takes one of its tokens (none
        free: no read-ahead for now), given back once its result is taken. Stopping early
        (closing the generator) cancels what has not started.
        """
        window = max(1, window or self.workers)
        tokens = budget or _UNLIMITED
        pending: deque[tuple[Future[R], bool]] = deque()
        it = iter(items)
        exhausted = False
        try:
            while True:
                while not exhausted and len(pending) < window:
                    took = bool(pending)  # the first in flight needs no token
                    if took and not tokens.try_take():
                        break
                    try:
                        item = next(it, _END)
                        if item is _END:
                            exhausted = True
                        else:
                            pending.append((self.submit(fn, item), took))
                            took = False  # the token goes back with the item's result
                    finally:
                        # No item after all: the stream ended, or its items failed (a
                        # manifest page gone with its version, the database): the token
                        # goes back now, or it is lost to every reader for good.
                        if took:
                            tokens.give()
                    if exhausted:
                        break
                if not pending:
                    return
                fut, took = pending.popleft()
                try:
                    result = fut.result()
                finally:
                    if took:
                        tokens.give()
                yield result
        finally:
            for fut, took in pending:
                fut.cancel()
                if took:
                    tokens.give()

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


class SerialLane:
    """Runs submitted calls one at a time, in submission order, on one thread of its own.

    The whole-file SHA-256 must see chunks in stream order; a lane keeps it off the thread
    that receives the bytes, without a thread pool's reordering.
    """

    def __init__(self, name: str = "edgestore-lane") -> None:
        self._executor = ContextThreadPool(1, thread_name_prefix=name)

    def submit(self, fn: Callable[..., R], *args: object) -> Future[R]:
        return self._executor.submit(fn, *args)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
