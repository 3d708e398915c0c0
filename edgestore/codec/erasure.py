"""Redundancy codecs: Reed-Solomon erasure coding (liberasurecode + ISA-L) and replication.

Both turn one stored chunk into `total` shards and rebuild it from any `needed` of them.
Reed-Solomon calls liberasurecode directly (codec/liberasurecode.py: no GIL held, ~9x faster
than through pyeclib); pyeclib remains the fallback, and holds the GIL, so each call is kept
to one chunk (a few MiB).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Mapping, Sequence
from typing import Protocol

from pyeclib.ec_iface import ECDriver

from edgestore.buffers import Buffer
from edgestore.codec.isal import FrameEncoder
from edgestore.codec.liberasurecode import Binding

# ISA-L's Cauchy RS first: measured here at ~6.7 GB/s encode against ~1.5 GB/s for ISA-L's
# Vandermonde variant, and it is MDS for every (k, m) - isa_l_rs_vand is not for m >= 5 (some
# sets of k shards fail to decode). The portable liberasurecode_rs_vand is the fallback.
_RS_BACKENDS = ("isa_l_rs_cauchy", "liberasurecode_rs_vand")


class RedundancyCodec(Protocol):
    """Splits a stored chunk into shards and rebuilds it from enough of them."""

    @property
    def total(self) -> int: ...
    @property
    def needed(self) -> int: ...
    def encode(self, data: Buffer) -> Sequence[Buffer]: ...
    def encode_framed(self, data: Buffer, reserve: int) -> list[memoryview] | None:
        """The shard files laid out for O_DIRECT: page-aligned views, `reserve` bytes of
        room for a header (stale bytes: the caller fills them) then the shard; None when
        this codec cannot (callers then use encode() and write header and shard apart)."""
        ...

    def decode(self, shards: Mapping[int, bytes]) -> bytes: ...


class ReedSolomon:
    """k data + m parity shards; any k rebuild the chunk.

    `backend` is the store's recorded one (never changed under existing data); new stores get
    the first available of _RS_BACKENDS.
    """

    def __init__(self, k: int, m: int, backend: str | None = None) -> None:
        if k < 1 or m < 1:
            raise ValueError("Reed-Solomon needs k >= 1 and m >= 1")
        self.k, self.m = k, m
        self.backend = backend or _pick_backend(k, m)
        self._local = threading.local()
        self._binding = _binding(k, m, self.backend)

    @property
    def total(self) -> int:
        return self.k + self.m

    @property
    def needed(self) -> int:
        return self.k

    @property
    def releases_gil(self) -> bool:
        """Whether encode and decode run beside other threads (the direct binding loaded)."""
        return self._binding is not None

    def _driver(self) -> ECDriver:
        driver: ECDriver | None = getattr(self._local, "driver", None)
        if driver is None:
            driver = self._local.driver = ECDriver(k=self.k, m=self.m, ec_type=self.backend)
        return driver

    def encode(self, data: Buffer) -> Sequence[Buffer]:
        if self._binding is not None:
            return self._binding.encode(data)
        return list(self._driver().encode(bytes(data)))

    def encode_framed(self, data: Buffer, reserve: int) -> list[memoryview] | None:
        framer = _framer(self.k, self.m, self.backend)
        if framer is None:
            return None
        return framer.encode(data, reserve)

    def decode(self, shards: Mapping[int, bytes]) -> bytes:
        if len(shards) < self.k:
            raise ValueError(f"need {self.k} shards to decode, have {len(shards)}")
        # Data shards first: decoding from them alone is a copy, not a computation.
        ordered = [shards[i] for i in sorted(shards)][: self.k]
        if self._binding is not None:
            return self._binding.decode(ordered)
        return bytes(self._driver().decode(ordered))


class Replication:
    """n identical copies; any one rebuilds the chunk."""

    def __init__(self, copies: int) -> None:
        if copies < 1:
            raise ValueError("replication needs at least one copy")
        self.copies = copies

    @property
    def total(self) -> int:
        return self.copies

    @property
    def needed(self) -> int:
        return 1

    def encode(self, data: Buffer) -> Sequence[Buffer]:
        return [data] * self.copies

    def encode_framed(self, data: Buffer, reserve: int) -> list[memoryview] | None:
        return None  # copies are the chunk itself: nothing to lay out

    def decode(self, shards: Mapping[int, bytes]) -> bytes:
        if not shards:
            raise ValueError("need one copy to decode, have none")
        return shards[min(shards)]


@functools.cache
def _binding(k: int, m: int, backend: str) -> Binding | None:
    """One self-tested binding per parameter set for the whole process (the test costs ~10 ms)."""
    return Binding.load(k, m, backend)


_FRAMER_LOAD = threading.Lock()


def _framer(k: int, m: int, backend: str) -> FrameEncoder | None:
    """One self-tested in-place encoder per parameter set (ISA-L backends only), loaded at
    the first chunk encoded, not when a store opens: its self-test encodes ~13 MiB (~0.1 s),
    which every CLI command paid, and most (ls, get, du, stat) never encode. The lock: two
    chunks encoded at once by a fresh process test it once, not twice."""
    with _FRAMER_LOAD:
        return _load_framer(k, m, backend)


@functools.cache
def _load_framer(k: int, m: int, backend: str) -> FrameEncoder | None:
    return FrameEncoder.load(k, m, backend)


def _pick_backend(k: int, m: int) -> str:
    for name in _RS_BACKENDS:
        try:
            ECDriver(k=k, m=m, ec_type=name)
        except Exception:  # pyeclib raises its own tree for "backend not available"
            continue
        return name
    raise RuntimeError("no Reed-Solomon backend available in pyeclib/liberasurecode")
