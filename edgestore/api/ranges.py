"""The Range header (RFC 9110 14.1-14.2) and the multipart/byteranges framing (14.6).

Pure: a header and an object's size in, the [start, end) ranges to send out, in the order
their parts go; the bytes that frame each part. Reading the parts is download.py's job.
"""

from __future__ import annotations

import re

from edgestore.errors import InvalidRange

_RANGE_SPEC = re.compile(r"(\d*)-(\d*)")
# Any position with more digits is past every object's end; Python's int() refuses more than
# 4300 digits, and a client's Range header must never make that a 500.
_MAX_DIGITS = 19
_BEYOND_ANY_SIZE = 10**_MAX_DIGITS
# At most this many parts in one answer, counted after merging; more is a 416 (15.5.17 names
# "an excessive number of small ranges"). Each part may cost the decoding of a whole chunk
# (up to 8 MiB, verified) for a few bytes sent: the cap bounds what one request can make the
# node do, where a client asking range by range meets the rate limits at each request.
MAX_PARTS = 32
# A header listing more range-specs than this is a 416 before any is read: a request head
# (64 KiB) holds some 16,000, whose parsing would hold the event loop for ~0.1 s.
MAX_RANGE_SPECS = 256
# Ranges closer than this are sent as one part (15.3.7.2 allows it for a gap "smaller than the
# overhead of sending multiple parts"): every part's headers (boundary line, Content-Type,
# Content-Range) take more than 80 bytes.
MERGE_GAP = 80

ByteRange = tuple[int, int]


def _position(digits: str) -> int:
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= _MAX_DIGITS else _BEYOND_ANY_SIZE


class _Ignored(Exception):
    """The header is not one this server acts on: the whole object is sent."""


def _resolve(spec: str, size: int) -> ByteRange | str | None:
    """One range-spec as [start, end); why it is unsatisfiable (a str); None when it is
    satisfiable but empty (a suffix of a zero-length object, 14.1.1). _Ignored if invalid."""
    m = _RANGE_SPEC.fullmatch(spec)
    if m is None or (not m.group(1) and not m.group(2)):
        raise _Ignored
    first, last = m.group(1), m.group(2)
    if first:
        start = _position(first)
        if last and _position(last) < start:
            raise _Ignored
        if start >= size:
            return f"range starts at {start}, the object has {size} bytes"
        return start, min(_position(last) + 1, size) if last else size
    suffix = _position(last)
    if suffix == 0:
        return "a zero-length suffix range cannot be satisfied"
    return (max(size - suffix, 0), size) if size else None


def _merge(ranges: list[ByteRange]) -> list[ByteRange]:
    """Overlapping, adjacent and nearly adjacent ranges as one, so that no byte is sent twice
    (`bytes=0-,0-,…` would otherwise ask for the object many times over). Each merged range
    keeps the place of the first of its ranges the client asked for (15.3.7.2: parts go in
    the order asked)."""
    groups: list[list[int]] = []  # [first index asked, start, end]
    for index in sorted(range(len(ranges)), key=ranges.__getitem__):
        start, end = ranges[index]
        if groups and start - groups[-1][2] < MERGE_GAP:
            group = groups[-1]
            group[0], group[2] = min(group[0], index), max(group[2], end)
        else:
            groups.append([index, start, end])
    return [(start, end) for _, start, end in sorted(groups)]


def parse_ranges(header: str | None, size: int) -> list[ByteRange] | None:
    """The ranges of a `bytes=` Range header to send, each [start, end) and non-empty, in the
    order their parts go; None to send the whole object; InvalidRange (416) when none is
    satisfiable, or when they are more than MAX_PARTS (once merged) or MAX_RANGE_SPECS.

    The unit is case-insensitive (14.1); the list's empty elements and the whitespace around
    elements are ignored (5.6.1.2); another unit, or any range-spec malformed or invalid
    (last before first), makes the whole header ignored, as 14.2 permits. Unsatisfiable
    range-specs are dropped (14.1.1)."""
    if header is None:
        return None
    unit, equals, ranges = header.partition("=")
    if not equals or unit.strip().lower() != "bytes":
        return None  # another unit: ignored, as RFC 9110 permits
    specs = [spec.strip() for spec in ranges.split(",") if spec.strip()]
    if not specs:
        return None
    if len(specs) > MAX_RANGE_SPECS:
        raise InvalidRange(
            f"{len(specs)} ranges asked for; this server reads at most {MAX_RANGE_SPECS} "
            "in one request: ask for fewer, or for the whole object",
            size=size,
        )
    try:
        resolved = [_resolve(spec, size) for spec in specs]
    except _Ignored:
        return None
    found = [r for r in resolved if isinstance(r, tuple)]
    if not found:
        if None in resolved:
            return None  # satisfiable, but no 206 can describe an empty range: a 200
        reasons = [r for r in resolved if isinstance(r, str)]
        if len(reasons) == 1:
            raise InvalidRange(reasons[0], size=size)
        raise InvalidRange(
            f"none of the {len(reasons)} ranges can be satisfied: the object has {size} bytes",
            size=size,
        )
    parts = _merge(found)
    if len(parts) > MAX_PARTS:
        raise InvalidRange(
            f"{len(parts)} separate ranges asked for; this server sends at most {MAX_PARTS} "
            "in one response: ask for fewer, or for the whole object",
            size=size,
        )
    return parts


# --- multipart/byteranges (14.6, the framing of RFC 2046 5.1.1) ----------------------------------


def multipart_type(boundary: str) -> str:
    return f"multipart/byteranges; boundary={boundary}"


def part_head(boundary: str, media_type: str, part: ByteRange, size: int, *, first: bool) -> bytes:
    """What goes before a part's bytes: the delimiter (its CRLF belongs to it, so the first
    part goes without) and the part's headers."""
    start, end = part
    lead = "" if first else "\r\n"
    return (
        f"{lead}--{boundary}\r\nContent-Type: {media_type}\r\n"
        f"Content-Range: bytes {start}-{end - 1}/{size}\r\n\r\n"
    ).encode("ascii")


def closing(boundary: str) -> bytes:
    """The close delimiter after the last part."""
    return f"\r\n--{boundary}--\r\n".encode("ascii")
