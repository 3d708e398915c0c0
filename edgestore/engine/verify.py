"""Checksums a client declares over one append's bytes (tus Upload-Checksum, or a trailer),
and the hashing that verifies them as the bytes arrive."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from edgestore.buffers import Buffer
from edgestore.codec.hashing import CHECKSUM_ALGORITHMS, Hasher, new_checksum
from edgestore.errors import ChecksumMismatch


@dataclass(frozen=True, slots=True)
class Checksum:
    """A client-declared checksum over one append's bytes (tus Upload-Checksum)."""

    algorithm: str
    digest: bytes


@dataclass(frozen=True, slots=True)
class TrailingChecksum:
    """A checksum the client sends after the bytes (tus checksum-trailer): `read` returns
    it once the body has ended (raising if it never came). Its algorithm is named only then,
    so the bytes are hashed with every supported one."""

    read: Callable[[], Checksum]


class Verifier:
    """Hashes an append's bytes for the checksum they must match."""

    def __init__(self, checksum: Checksum | TrailingChecksum) -> None:
        self._checksum = checksum
        names = (checksum.algorithm,) if isinstance(checksum, Checksum) else CHECKSUM_ALGORITHMS
        self._hashers: dict[str, Hasher] = {name: new_checksum(name) for name in names}

    def update(self, data: Buffer) -> None:
        for hasher in self._hashers.values():
            hasher.update(data)

    def check(self, received: int) -> None:
        declared = self._checksum
        if isinstance(declared, TrailingChecksum):
            declared = declared.read()
        if self._hashers[declared.algorithm].digest() != declared.digest:
            raise ChecksumMismatch(
                f"{declared.algorithm} of the {received} bytes received does not match "
                "Upload-Checksum; none of them were kept"
            )
