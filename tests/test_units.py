"""Sizes and durations with units: what is accepted, what is refused and why; a size or a
duration written in any accepted spelling reads back exactly."""

from __future__ import annotations

import re
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgestore.units import (
    DURATION_UNITS,
    LARGEST_SIZE,
    LONGEST_DURATION,
    SIZE_UNITS,
    parse_duration,
    parse_size,
    parse_whole_duration,
    positive_duration,
)

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("8388608", 8 * MiB),
        ("8MiB", 8 * MiB),
        ("8 MiB", 8 * MiB),
        ("8mib", 8 * MiB),
        ("8MIB", 8 * MiB),
        (" 8MiB ", 8 * MiB),
        ("8M", 8 * MiB),  # one letter: binary, as nginx, systemd and `presign --max-size`
        ("8k", 8 * KiB),
        ("10G", 10 * GiB),
        ("8MB", 8_000_000),
        ("8mb", 8_000_000),
        ("8kB", 8000),
        ("8KB", 8000),
        ("1TB", 10**12),
        ("1TiB", TiB),
        ("2PiB", 2 << 50),
        ("8B", 8),
        ("8b", 8),
        ("1.5KiB", 1536),
        ("0.1MB", 100_000),  # exact, not 100000.00000000001
        (".5GiB", GiB // 2),
        ("0MiB", 0),
        ("7.0", 7),
        (str(LARGEST_SIZE), LARGEST_SIZE),
    ],
)
def test_sizes_accepted(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("8XB", "unknown unit 'XB'"),
        ("8 MiBs", "unknown unit 'MiBs'"),
        ("1.5.2MiB", "not a size"),
        ("-1MiB", "not a size"),
        ("MiB", "not a size"),
        ("", "not a size"),
        ("8 M iB", "not a size"),
        ("1e3MiB", "not a size"),
        ("1.5B", "not a whole number of bytes"),
        ("1.3KiB", "not a whole number of bytes"),  # 1331.2
        ("100Mb", "'Mb' is bits: write MB or MiB"),  # a link's speed, 8x less than 100 MB
        ("8Kib", "'Kib' is bits"),
        ("8EiB", "unknown unit"),
        ("8192PiB", "above the largest size"),  # 2**63: one byte too many
        ("99999999999999999999999TB", "above the largest size"),
    ],
)
def test_sizes_refused(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=re.escape(why)):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("604800", 604800),
        ("90s", 90),
        ("15m", 900),
        ("4h", 4 * 3600),
        ("7d", 7 * 86400),
        ("2w", 14 * 86400),
        ("1h30m", 5400),
        ("1h 30m", 5400),
        ("1d12h30m15s", 86400 + 12 * 3600 + 30 * 60 + 15),
        ("1.5h", 5400),
        ("7 days", 7 * 86400),
        ("15min", 900),
        ("1 hour", 3600),
        ("4H", 4 * 3600),  # any case but M: see below
        ("7D", 7 * 86400),
        ("0s", 0),
        ("500ms", 0.5),
        ("2.5", 2.5),
        ("36525d", LONGEST_DURATION),
    ],
)
def test_durations_accepted(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("7y", "unknown unit 'y'"),
        ("1 fortnight", "unknown unit 'fortnight'"),
        ("-1d", "not a duration"),
        ("1h30", "not a duration"),  # 30 what?
        ("1.5.2h", "not a duration"),
        ("d", "not a duration"),
        ("", "not a duration"),
        ("1M", "'M' is months to some"),  # systemd's month: 60 s would be a silent surprise
        ("36526d", "above the longest duration"),
        ("99999999999999999999w", "above the longest duration"),
    ],
)
def test_durations_refused(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=re.escape(why)):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "whole", "why"),
    [
        ("0", False, "not above 0"),
        ("0s", True, "not above 0"),
        ("2x", False, "500ms"),  # an unreadable form: the hint lists what it takes
        ("1500ms", True, "a whole number of seconds, or with units: 90s"),
    ],
)
def test_an_option_s_duration_is_above_zero_and_says_what_it_takes(
    text: str, whole: bool, why: str
) -> None:
    """--timeout and presign --expires: 0 would fail every request or expire at once."""
    assert positive_duration("2m") == 120 and positive_duration("500ms") == 0.5
    assert positive_duration("90", whole=True) == 90
    with pytest.raises(ValueError, match=re.escape(why)) as refused:
        positive_duration(text, whole=whole)
    if why != "not above 0":  # a whole-second hint offers no ms
        assert whole is ("500ms" not in str(refused.value).replace("1500ms", ""))


def test_a_setting_in_whole_seconds_refuses_a_fraction() -> None:
    assert parse_whole_duration("2000ms") == 2
    assert parse_whole_duration("1.5m") == 90
    with pytest.raises(ValueError, match="not a whole number of seconds"):
        parse_whole_duration("1500ms")
    with pytest.raises(ValueError, match="not a whole number of seconds"):
        parse_whole_duration("0.5")


# --- round trips: any spelling users write reads back as the exact value ----------------------

SIZE_SPELLINGS = [u for u in SIZE_UNITS if u] + [u.upper() for u in SIZE_UNITS if u]
SIZE_SPELLINGS += [u[0].upper() + u[1:-1] + "B" for u in SIZE_UNITS if u.endswith("ib")]  # KiB
SIZE_SPELLINGS += [u[0] + "B" for u in SIZE_UNITS if len(u) == 2 and u[1] == "b"]  # kB (SI)


def _number(value: Fraction) -> str:
    """`value` (a terminating decimal) as a decimal numeral, no exponent."""
    whole, rest = divmod(value, 1)
    digits = ""
    while rest:
        rest *= 10
        digit, rest = divmod(rest, 1)
        digits += str(digit)
    return f"{whole}.{digits}" if digits else str(whole)


decimals = st.builds(
    lambda n, places: Fraction(n, 10**places),
    st.integers(0, 10**9),
    st.integers(0, 3),
)


@given(decimals, st.sampled_from(SIZE_SPELLINGS), st.sampled_from(["", " "]))
def test_a_size_reads_back(count: Fraction, unit: str, space: str) -> None:
    exact = count * SIZE_UNITS[unit.lower()]
    text = f"{_number(count)}{space}{unit}"
    if exact.denominator != 1:
        with pytest.raises(ValueError, match="not a whole number of bytes"):
            parse_size(text)
    elif exact > LARGEST_SIZE:
        with pytest.raises(ValueError, match="above the largest size"):
            parse_size(text)
    else:
        assert parse_size(text) == exact


@given(st.integers(0, LARGEST_SIZE))
def test_a_plain_byte_count_reads_back(size: int) -> None:
    assert parse_size(str(size)) == size


DURATION_SPELLINGS = sorted(DURATION_UNITS) + [u.upper() for u in DURATION_UNITS if u != "m"]


@given(
    st.lists(
        st.tuples(decimals, st.sampled_from(DURATION_SPELLINGS), st.sampled_from(["", " "])),
        min_size=1,
        max_size=4,
    )
)
def test_a_duration_reads_back(terms: list[tuple[Fraction, str, str]]) -> None:
    text = " ".join(f"{_number(n)}{space}{unit}" for n, unit, space in terms)
    exact = sum((n * DURATION_UNITS[unit.lower()] for n, unit, _ in terms), Fraction(0))
    if exact > LONGEST_DURATION:
        with pytest.raises(ValueError, match="above the longest duration"):
            parse_duration(text)
        return
    assert parse_duration(text) == float(exact)
    if exact.denominator == 1:
        assert parse_whole_duration(text) == exact
    else:
        with pytest.raises(ValueError, match="not a whole number of seconds"):
            parse_whole_duration(text)
