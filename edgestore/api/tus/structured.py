"""RFC 9651 (Structured Fields) Items, as the IETF upload draft's fields use them.

`Upload-Offset` and `Upload-Length` are non-negative Integers, `Upload-Complete` a Boolean;
any other value (or a field that fails to parse) "MUST cause the entire header field to be
ignored": these parsers answer None then, exactly as for an absent field.
"""

from __future__ import annotations

import re

from starlette.datastructures import Headers

_TCHAR = r"!#$%&'*+\-.^_`|~0-9A-Za-z"
_BARE_ITEM = "|".join(
    (
        r"-?[0-9]{1,12}\.[0-9]{1,3}",  # Decimal
        r"-?[0-9]{1,15}",  # Integer
        r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\\"])*"',  # String
        rf"[A-Za-z*][{_TCHAR}:/]*",  # Token
        r":[A-Za-z0-9+/=]*:",  # Byte Sequence
        r"\?[01]",  # Boolean
        r"@-?[0-9]{1,15}",  # Date
        r'%"(?:[\x20\x21\x23\x24\x26-\x5b\x5d-\x7e]|%[0-9a-f]{2})*"',  # Display String
    )
)
_PARAMETERS = rf"(?:; *[a-z*][a-z0-9_\-.*]*(?:=(?:{_BARE_ITEM}))?)*"
_INTEGER_ITEM = re.compile(rf"(-?[0-9]{{1,15}}){_PARAMETERS}")
_BOOLEAN_ITEM = re.compile(rf"\?([01]){_PARAMETERS}")
_OWS = " \t"  # what HTTP strips around a field value before it is parsed


def field_value(headers: Headers, name: str) -> str | None:
    """All of a field's lines joined as one value (RFC 9110 5.3), or None if it is absent:
    a repeated Item field is then a List, which fails to parse, as RFC 9651 wants."""
    lines = headers.getlist(name)
    return ", ".join(lines) if lines else None


def non_negative_integer_item(value: str | None) -> int | None:
    """The Integer of an Item field, parameters ignored; None if absent, malformed or < 0."""
    if value is None:
        return None
    match = _INTEGER_ITEM.fullmatch(value.strip(_OWS))
    if match is None:
        return None
    number = int(match.group(1))
    return number if number >= 0 else None


def boolean_item(value: str | None) -> bool | None:
    """The Boolean of an Item field, parameters ignored; None if absent or malformed."""
    if value is None:
        return None
    match = _BOOLEAN_ITEM.fullmatch(value.strip(_OWS))
    return None if match is None else match.group(1) == "1"
