"""Sizes and durations as people write them (`8MiB`, `500MB`, `7d`, `1h30m`), read exactly into
bytes and seconds; the types of the settings that take them (docs/configuration.md, "Sizes and
durations")."""

from __future__ import annotations

import re
from collections.abc import Callable
from fractions import Fraction  # exact: 0.1MB is 100000 bytes, not 100000.00000000001
from typing import Annotated, Any

from pydantic import BeforeValidator, Field
from pydantic_core import PydanticCustomError

LARGEST_SIZE = 2**63 - 1  # a 64-bit size: what the database's columns and tus clients hold
LONGEST_DURATION = 36525 * 86400  # 100 years: inside every clock's, timer's and column's range

# Lower-cased. A single letter is binary, as in nginx, systemd, the JVM and `presign --max-size`.
SIZE_UNITS = {
    "": 1,
    "b": 1,
    **{p: 1024**n for n, p in enumerate("kmgtp", 1)},
    **{p + "b": 1000**n for n, p in enumerate("kmgtp", 1)},
    **{p + "ib": 1024**n for n, p in enumerate("kmgtp", 1)},
}
_MINUTE, _HOUR, _DAY = 60, 3600, 86400
DURATION_UNITS = {
    "ms": Fraction(1, 1000),
    **dict.fromkeys(("s", "sec", "second", "seconds"), Fraction(1)),
    **dict.fromkeys(("m", "min", "minute", "minutes"), Fraction(_MINUTE)),
    **dict.fromkeys(("h", "hour", "hours"), Fraction(_HOUR)),
    **dict.fromkeys(("d", "day", "days"), Fraction(_DAY)),
    **dict.fromkeys(("w", "week", "weeks"), Fraction(7 * _DAY)),
}
SIZE_FORMS = (
    "a whole number of bytes, or with a unit: 8MiB = 8M = 8×1024², 8MB = 8×1000²; "
    "B, K…P, KB…PB, KiB…PiB, upper or lower case"
)
DURATION_FORMS = "a number of seconds, or with units: 90s, 15m, 4h, 7d, 2w, 1h30m, 500ms"
# A whole-second setting refuses 1500ms and 2.5s: its hint lists only what it takes.
WHOLE_DURATION_FORMS = "a whole number of seconds, or with units: 90s, 15m, 4h, 7d, 2w, 1h30m"

_NUMBER = r"(?:\d+(?:\.\d+)?|\.\d+)"  # no sign, no exponent; ASCII digits (re.A)
_PLAIN = re.compile(rf"\s*{_NUMBER}\s*", re.A)
_SIZE = re.compile(rf"({_NUMBER})\s*([a-z]*)", re.I | re.A)
_TERM = re.compile(rf"\s*({_NUMBER})\s*([a-z]+)", re.I | re.A)
_DURATION = re.compile(rf"(?:{_TERM.pattern})+\s*", re.I | re.A)


def parse_size(text: str) -> int:
    """Bytes in `text` (`8388608`, `8MiB`, `8 mib`, `8M`, `1.5GB`); ValueError saying why not."""
    m = _SIZE.fullmatch(text.strip())
    if m is None:
        raise ValueError("not a size")
    number, unit = m.groups()
    if unit[-1:] == "b" and unit != unit.lower():  # Mb, Kib: how bit rates are written
        raise ValueError(f"{unit!r} is bits: write {unit[0].upper()}B or {unit[0].upper()}iB")
    factor = SIZE_UNITS.get(unit.lower())
    if factor is None:
        raise ValueError(f"unknown unit {unit!r}")
    size = Fraction(number) * factor
    if size.denominator != 1:
        raise ValueError("not a whole number of bytes")
    if size > LARGEST_SIZE:
        raise ValueError(f"above the largest size, {LARGEST_SIZE} bytes (8 EiB)")
    return int(size)


def parse_duration(text: str) -> float:
    """Seconds in `text` (`90`, `90s`, `15m`, `1h30m`, `7 days`, `0.5s`); ValueError saying why
    not. `M` is refused, as systemd reads it as months."""
    return float(_seconds(text))


def parse_whole_duration(text: str) -> int:
    """As parse_duration, for a setting counted in whole seconds: `1.5s` is refused."""
    seconds = _seconds(text)
    if seconds.denominator != 1:
        raise ValueError("not a whole number of seconds")
    return int(seconds)


def positive_duration(text: str, *, whole: bool = False) -> float:
    """A command-line option's duration above 0 (a timeout, an expiry): ValueError says why
    not and, for a form it cannot read, which ones it takes."""
    try:
        seconds = parse_whole_duration(text) if whole else parse_duration(text)
    except ValueError as exc:
        raise ValueError(f"{exc} ({WHOLE_DURATION_FORMS if whole else DURATION_FORMS})") from None
    if seconds <= 0:
        raise ValueError("not above 0")
    return seconds


def _seconds(text: str) -> Fraction:
    if _PLAIN.fullmatch(text):
        total = Fraction(text.strip())
    elif _DURATION.fullmatch(text):
        total = Fraction(0)
        for number, unit in _TERM.findall(text):
            if unit == "M":
                raise ValueError("'M' is months to some (systemd): write m or min for minutes")
            if unit.lower() not in DURATION_UNITS:
                raise ValueError(f"unknown unit {unit!r}")
            total += Fraction(number) * DURATION_UNITS[unit.lower()]
    else:
        raise ValueError("not a duration")
    if total > LONGEST_DURATION:
        raise ValueError(f"above the longest duration, 100 years ({LONGEST_DURATION} s)")
    return total


# --- the settings' types: a plain number goes on to pydantic as before (same meaning, same
# checks); a string with a unit is read here; a boolean is no size (TOML's `true` was 1).


def _reader(
    kind: str, parse: Callable[[str], float], *, per_second: bool = False
) -> BeforeValidator:
    def read(value: Any) -> Any:
        if isinstance(value, bool):
            what = kind.removesuffix("_parsing").split("_")[-1]  # size, duration
            raise PydanticCustomError(kind, "not a {what}", {"what": what})
        if not isinstance(value, str) or _plain_number(value):
            return value
        text = value.strip()
        if per_second and text[-2:].lower() == "/s":
            text = text[:-2]
        try:
            return parse(text)
        except ValueError as exc:
            raise PydanticCustomError(kind, "{reason}", {"reason": str(exc)}) from None

    return BeforeValidator(read)


def _plain_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


Size = Annotated[int, _reader("size_parsing", parse_size), Field(le=LARGEST_SIZE)]
ByteRate = Annotated[
    int, _reader("size_parsing", parse_size, per_second=True), Field(le=LARGEST_SIZE)
]
# Its own kind, so that a refusal's hint (config_hints.py) lists only whole-second forms.
WholeSeconds = Annotated[
    int, _reader("whole_duration_parsing", parse_whole_duration), Field(le=LONGEST_DURATION)
]
Seconds = Annotated[float, _reader("duration_parsing", parse_duration), Field(le=LONGEST_DURATION)]
