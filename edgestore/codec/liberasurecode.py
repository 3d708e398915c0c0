"""Direct ctypes calls into liberasurecode, the C library under pyeclib, without the GIL.

pyeclib's C extension holds the GIL through encode and decode and copies every fragment into
a new bytes object: measured here at ~0.5 GB/s per core for 6+3 Cauchy, and two threads were
slower than one. ctypes releases the GIL for the call, so erasure coding runs beside hashing,
zstd and the event loop; the same call measured ~4.5 GB/s on one core.

The bytes are liberasurecode's own fragment format, identical to pyeclib's (same library, same
arguments): `Binding.load` proves it on sample data against pyeclib before anyone uses it, and
returns None if anything differs, so callers keep pyeclib then. Shards written either way read
back either way.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyeclib
from pyeclib.ec_iface import ECDriver, PyECLib_EC_Types

from edgestore.buffers import Buffer

_CHKSUM_NONE = 1  # ec_checksum_type_t: pyeclib's default, no inline fragment checksum
_SELF_TEST_SIZES = (0, 1, 100, 4095, 65_537, 1_048_579)

_VoidPP = ctypes.POINTER(ctypes.c_void_p)


class _EcArgs(ctypes.Structure):
    """`struct ec_args` (liberasurecode >= 1.0), with spare room for fields added since."""

    _fields_ = [
        ("k", ctypes.c_int),
        ("m", ctypes.c_int),
        ("w", ctypes.c_int),
        ("hd", ctypes.c_int),
        ("priv_args1", ctypes.c_uint64 * 4),
        ("priv_args2", ctypes.c_void_p),
        ("ct", ctypes.c_int),
        ("_spare", ctypes.c_uint64 * 16),
    ]


def _library() -> ctypes.CDLL | None:
    """The liberasurecode that pyeclib itself loaded (its wheel bundles one), else the system's."""

    def candidates() -> Iterator[str]:
        libs = Path(pyeclib.__file__).parent.parent / "pyeclib.libs"
        yield from (str(p) for p in sorted(libs.glob("liberasurecode*")) if "rs_vand" not in p.name)
        # Only if none of those loads: find_library runs ldconfig (or gcc), ~30 ms, which
        # every store opening paid when it was asked first.
        if found := ctypes.util.find_library("erasurecode"):
            yield found

    for path in candidates():
        try:
            lib = ctypes.CDLL(path)  # CDLL: calls release the GIL (PyDLL would not)
            for symbol in ("liberasurecode_encode", "liberasurecode_decode"):
                getattr(lib, symbol)
        except (OSError, AttributeError):
            continue
        return lib
    return None


class _Fragments:
    """The buffers of one encode, given back to liberasurecode when no view needs them."""

    def __init__(self, lib: ctypes.CDLL, desc: int, data: Any, parity: Any) -> None:
        self._free = lib.liberasurecode_encode_cleanup
        self._desc, self._data, self._parity = desc, data, parity

    def __del__(self) -> None:
        self._free(self._desc, self._data, self._parity)


class Binding:
    """Encode and decode for one (k, m, backend), one liberasurecode instance per thread."""

    def __init__(self, lib: ctypes.CDLL, k: int, m: int, backend: str) -> None:
        self.k, self.m = k, m
        self._lib = lib
        self._backend_id = PyECLib_EC_Types[backend].value
        self._args = _EcArgs(k=k, m=m, w=0, hd=m, ct=_CHKSUM_NONE)
        self._local = threading.local()
        lib.liberasurecode_instance_create.argtypes = [ctypes.c_int, ctypes.POINTER(_EcArgs)]
        lib.liberasurecode_encode.argtypes = [
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_uint64,
            ctypes.POINTER(_VoidPP),
            ctypes.POINTER(_VoidPP),
            ctypes.POINTER(ctypes.c_uint64),
        ]
        lib.liberasurecode_encode_cleanup.argtypes = [ctypes.c_int, _VoidPP, _VoidPP]
        lib.liberasurecode_decode.argtypes = [
            ctypes.c_int,
            ctypes.POINTER(ctypes.c_char_p),
            ctypes.c_int,
            ctypes.c_uint64,
            ctypes.c_int,
            ctypes.POINTER(ctypes.c_void_p),
            ctypes.POINTER(ctypes.c_uint64),
        ]
        lib.liberasurecode_decode_cleanup.argtypes = [ctypes.c_int, ctypes.c_void_p]

    @classmethod
    def load(cls, k: int, m: int, backend: str) -> Binding | None:
        """A binding proven byte-identical to pyeclib for these parameters, or None."""
        lib = _library()
        if lib is None or backend not in PyECLib_EC_Types.__members__:
            return None
        try:
            binding = cls(lib, k, m, backend)
            driver = ECDriver(k=k, m=m, ec_type=backend)
            for size in _SELF_TEST_SIZES:
                data = os.urandom(size)
                ours = binding.encode(data)
                if [bytes(s) for s in ours] != list(driver.encode(data)):
                    return None
                survivors = list(range(m, k + m))  # the hardest case: m data shards lost
                if binding.decode([ours[i] for i in survivors]) != data:
                    return None
        except (OSError, RuntimeError, ValueError, TypeError, AttributeError):
            return None
        return binding

    def _descriptor(self) -> int:
        desc: int | None = getattr(self._local, "desc", None)
        if desc is None:
            desc = self._lib.liberasurecode_instance_create(
                self._backend_id, ctypes.byref(self._args)
            )
            if desc <= 0:
                raise RuntimeError(f"liberasurecode_instance_create failed ({desc})")
            self._local.desc = desc
        return desc

    def encode(self, data: Buffer) -> list[memoryview]:
        """k data then m parity fragments, as views of liberasurecode's own buffers (freed
        with the last view): no copy, and nothing allocated or zeroed under the GIL."""
        desc = self._descriptor()
        data_ptrs, parity_ptrs, length = _VoidPP(), _VoidPP(), ctypes.c_uint64()
        source = ctypes.c_char_p(bytes(data))  # no copy when data is already bytes
        rc = self._lib.liberasurecode_encode(
            desc,
            ctypes.cast(source, ctypes.c_void_p),
            len(data),
            ctypes.byref(data_ptrs),
            ctypes.byref(parity_ptrs),
            ctypes.byref(length),
        )
        if rc != 0:
            raise RuntimeError(f"liberasurecode_encode failed ({rc})")
        owner = _Fragments(self._lib, desc, data_ptrs, parity_ptrs)
        size = length.value
        addresses = [data_ptrs[i] for i in range(self.k)] + [parity_ptrs[i] for i in range(self.m)]
        views = []
        for address in addresses:
            fragment = (ctypes.c_char * size).from_address(address)
            fragment.owner = owner  # type: ignore[attr-defined]  # keeps the memory alive
            views.append(memoryview(fragment).cast("B"))
        return views

    def decode(self, fragments: Sequence[bytes | memoryview]) -> bytes:
        """The original bytes from at least k fragments (any order: each names its index)."""
        if not fragments:
            raise ValueError("no fragments to decode")
        size = len(fragments[0])
        if any(len(f) != size for f in fragments):
            raise ValueError("fragments differ in length")
        desc = self._descriptor()
        keep = [bytes(f) for f in fragments]  # c_char_p points into these: keep them alive
        array = (ctypes.c_char_p * len(keep))(*keep)
        out, out_len = ctypes.c_void_p(), ctypes.c_uint64()
        rc = self._lib.liberasurecode_decode(
            desc, array, len(keep), size, 0, ctypes.byref(out), ctypes.byref(out_len)
        )
        if rc != 0:
            raise ValueError(f"liberasurecode_decode failed ({rc}): corrupt or too few shards")
        try:
            return ctypes.string_at(out, out_len.value) if out_len.value else b""
        finally:
            self._lib.liberasurecode_decode_cleanup(desc, out)
