"""Streaming content-defined chunking (FastCDC 2020, via pyfastcdc): bytes in, chunks out.

Pure and push-driven, so the same code serves a file read, an HTTP request body and a client:
the cut points depend only on the bytes, never on how the stream was split into reads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from pyfastcdc import FastCDC

from edgestore.buffers import AlignedPool, Buffer, bytes_of, copy_into
from edgestore.types import ChunkerParams

MiB = 1024 * 1024

# The store's default: FastCDC min 1 MiB (pyfastcdc's cap), avg 4 MiB, max 8 MiB.
# Measured mean chunk on random data with these settings: ~4.4 MiB.
DEFAULT_PARAMS = ChunkerParams(min_size=1 * MiB, avg_size=4 * MiB, max_size=8 * MiB)


# Buffers of chunkers that lend their chunks (see StreamChunker): a block goes back only when
# the last chunk cut from it is gone, and is reused without page faults or zeroing. One
# ingest holds several blocks at once (its chunks in flight keep theirs) and gives them back
# in bursts: with 2 idle blocks, a re-ingest of 1 GiB mapped ~45 fresh 8 MiB blocks and
# spent ~7% more CPU on page faults and zeroing (6 idle: ~2 per GiB). Idle blocks cost
# memory only until the server's upkeep trims them (buffers.trim_pools).
LENDING_BLOCKS = AlignedPool(idle_blocks=6)


def make_cdc(params: ChunkerParams) -> FastCDC:
    return FastCDC(params.avg_size, min_size=params.min_size, max_size=params.max_size)


class StreamChunker:
    """Cuts a byte stream, fed in pieces of any size, into FastCDC chunks.

    FastCDC decides a cut by scanning at most `max_size` bytes from the chunk's start, so the
    next chunk is final once `max_size` bytes past its start are buffered, or the stream has
    ended. Chunks are cut one at a time, only then, so every byte is scanned once; the
    buffer is fixed at `max_size + SLACK` bytes (compacted in place, never grown; a lending
    chunker moves to a new block instead, see below).
    Bytes buffered but not yet cut are the *tail*.

    `lend=True`: chunks are read-only views of the buffer instead of copies (one copy of
    every byte less on the thread that cuts the stream, the one stage that cannot run on
    two cores). Bytes of a buffer that lent a chunk are never written again: the chunker
    goes on after them, and when the buffer is full it moves on to a block of its own from
    LENDING_BLOCKS, taking the tail along; the old block is reused only after the last chunk
    cut from it is gone.
    """

    # Room past max_size, so a push rarely stops short of a whole block. Each uploading
    # request holds one buffer: a smaller slack is that much less per concurrent upload,
    # and compaction (once per cut, as before) moves the same bytes.
    SLACK = 256 * 1024
    # pop_settled scans from the chunk's start each time (pyfastcdc cannot resume a scan);
    # an upload sent in small requests would rescan its growing tail once per request.
    RESCAN_AFTER = 1024 * 1024

    def __init__(self, params: ChunkerParams, tail: Buffer = b"", *, lend: bool = False) -> None:
        self._cdc = make_cdc(params)
        self._max = params.max_size
        self._min = params.min_size
        self._lend = lend
        self._lent = False  # a chunk cut from the current buffer may still be in use
        self._size = max(params.max_size + self.SLACK, len(tail) + self.SLACK)
        self._view = self._new_buffer()
        self._start = 0  # first byte not yet cut
        self._len = copy_into(self._view, 0, tail)  # bytes in the buffer
        self._no_cut_within = 0  # bytes past _start that pop_settled found no cut in

    def _new_buffer(self) -> memoryview:
        if self._lend:
            return LENDING_BLOCKS.get(self._size)
        return memoryview(bytearray(self._size))

    @property
    def tail(self) -> bytes:
        """Bytes received but not yet part of a final chunk."""
        return bytes(self._view[self._start : self._len])

    def tail_view(self) -> memoryview:
        """The tail without copying it; valid until the next push or pop."""
        return self._view[self._start : self._len]

    @property
    def capacity(self) -> int:
        """Bytes of memory the buffer takes."""
        return len(self._view)

    @property
    def tail_length(self) -> int:
        return self._len - self._start

    def push(self, data: bytes | bytearray | memoryview) -> int:
        """Copy in as much of `data` as fits; returns how many bytes were taken.

        Take chunks out with `pop()` to make room.
        """
        if self._len == len(self._view) and self._start:
            self._compact()
        room = len(self._view) - self._len
        src = memoryview(data).cast("B")
        take = min(room, len(src))
        self._len += copy_into(self._view, self._len, src[:take])
        return take

    def fill(self, readinto: Callable[[memoryview], int | None], at_most: int) -> memoryview:
        """Read straight into the buffer's free room, up to `at_most` bytes (one call of
        `readinto`, as a file's or socket's): no copy through an intermediate block.

        Returns a view of the bytes just read, empty at the end of the source; valid until
        the next push, fill or pop. Take chunks out with `pop()` to make room.
        """
        if self._len == len(self._view) and self._start:
            self._compact()
        room = self._view[self._len : self._len + min(at_most, len(self._view) - self._len)]
        try:
            n = readinto(room)
        finally:
            room.release()
        if n is None:
            raise BlockingIOError("the source has no bytes ready (non-blocking): not supported")
        self._len += n
        return self._view[self._len - n : self._len]

    def ready(self) -> bool:
        """Whether `pop()` would return a chunk."""
        return self._len - self._start >= self._max

    def pop(self) -> Buffer | None:
        """The next final chunk, or None until more bytes arrive."""
        if not self.ready():
            return None
        return self._cut_one()

    def pop_settled(self) -> Buffer | None:
        """The next chunk if its cut point is already certain, else None, without waiting for
        `max_size` bytes.

        FastCDC takes the first position past `min_size` where the rolling hash matches; one
        found before the end of the buffered bytes is where the whole stream would cut too,
        since the scan up to it is the same (only a cut at the very end, or none, may move
        with more bytes). An append that ends mid-stream cuts what it can this way, so less
        is left to stage as the tail.
        """
        if self.ready():
            return self._cut_one()
        buffered = self._len - self._start
        if buffered <= self._min:
            return None
        if self._no_cut_within and buffered - self._no_cut_within < self.RESCAN_AFTER:
            return None  # scanned before, nearly as far: not worth another pass from the start
        length = self._cut_length()
        if length >= buffered:
            self._no_cut_within = buffered
            return None
        return self._take(length)

    def pop_last(self) -> Buffer | None:
        """At the end of the stream: the next chunk however few bytes remain, else None."""
        if self._start == self._len:
            return None
        return self._cut_one()

    def feed(self, data: bytes | bytearray | memoryview) -> list[Buffer]:
        """Add bytes; return the chunks that became final, in stream order."""
        chunks: list[Buffer] = []
        view = memoryview(data).cast("B")
        while True:
            view = view[self.push(view) :]
            while (chunk := self.pop()) is not None:
                chunks.append(chunk)
            if not view:
                return chunks

    def finish(self) -> list[Buffer]:
        """The stream ended: return every remaining chunk (the tail included)."""
        chunks = []
        while (chunk := self.pop_last()) is not None:
            chunks.append(chunk)
        return chunks

    def _cut_length(self) -> int:
        # Only the first chunk is taken: the iterator scans no further than its cut point.
        window = self._view[self._start : self._len]
        first = next(iter(self._cdc.cut_buf(window)))
        length: int = first.length
        del first  # pyfastcdc's view into our buffer must not outlive this call
        window.release()
        return length

    def _cut_one(self) -> Buffer:
        return self._take(self._cut_length())

    def _take(self, length: int) -> Buffer:
        piece = self._view[self._start : self._start + length]
        chunk: Buffer
        if self._lend:
            chunk, self._lent = piece.toreadonly(), True
        else:
            chunk = bytes_of(piece)
        piece.release()
        self._start += length
        self._no_cut_within = 0
        if self._start == self._len and not self._lent:  # else the front is still lent out:
            self._start = self._len = 0  # go on after it, until _compact moves on
        return chunk

    def _compact(self) -> None:
        """Move the tail to the front: of this buffer, or of a new one if this one lent."""
        target = self._new_buffer() if self._lent else self._view
        remaining = copy_into(target, 0, self._view[self._start : self._len])
        self._view, self._lent = target, False
        self._start, self._len = 0, remaining


def chunk_stream(
    blocks: Iterable[bytes], params: ChunkerParams = DEFAULT_PARAMS
) -> Iterator[Buffer]:
    """Chunk an iterable of byte blocks; convenience over StreamChunker."""
    chunker = StreamChunker(params)
    for block in blocks:
        yield from chunker.feed(block)
    yield from chunker.finish()
