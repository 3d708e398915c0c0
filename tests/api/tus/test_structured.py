"""RFC 9651 Items as the IETF draft's fields use them: a non-negative Integer, a Boolean."""

from __future__ import annotations

import pytest

from edgestore.api.tus.structured import boolean_item, non_negative_integer_item


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", 0),
        ("42", 42),
        ("007", 7),
        ("999999999999999", 999_999_999_999_999),  # 15 digits: the largest Integer
        (" 12 ", 12),
        ("12;a", 12),
        ('12;a=1;b=?0;c="s t";d=tok/en:x;e=:AQ==:;f=1.5;g=@17', 12),
        ("12 ; a", None),  # no space before a parameter's ';'
        ("1234567890123456", None),
        ("-1", None),
        ("-0", 0),
        ("1.0", None),
        ("1,2", None),
        ("1 2", None),
        ("", None),
        ("?1", None),
        ("12;A", None),  # parameter keys are lowercase
        ("12;a=", None),
        ("+1", None),
        ("١٢", None),  # non-ASCII digits are not SF digits
    ],
)
def test_non_negative_integer_item(value: str, expected: int | None) -> None:
    assert non_negative_integer_item(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("?1", True),
        ("?0", False),
        ("  ?1", True),
        ("?1;x", True),
        ("?0;x=?1", False),
        ("?1, ?1", None),
        ("?2", None),
        ("true", None),
        ("1", None),
        ("?", None),
        ("", None),
    ],
)
def test_boolean_item(value: str, expected: bool | None) -> None:
    assert boolean_item(value) is expected


def test_absent_fields_are_none() -> None:
    assert non_negative_integer_item(None) is None
    assert boolean_item(None) is None
