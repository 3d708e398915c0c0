"""Conditional requests on an object version (RFC 9110 13.1), in 13.2.2's order.

A download manager resuming a file (If-Range), a browser revalidating its cache
(If-None-Match, If-Modified-Since) and a client that must not read another version than
the one it saw (If-Match, If-Unmodified-Since) all get what the RFC promises. Malformed
values are ignored, never a 400: a condition the server cannot read is no condition.
"""

from __future__ import annotations

import re

from starlette.requests import Request

from edgestore.api.http import parse_http_date

# An entity-tag (8.8.3): an optional weak marker, then a quoted string without quotes.
_ENTITY_TAG = re.compile(r'(W/)?("[^"]*")')


def field(request: Request, name: str) -> str | None:
    """Every field of that name as one list (5.3: several fields are one comma list)."""
    values = request.headers.getlist(name)
    return ", ".join(values) if values else None


def matches(header: str, etag: str, *, weak: bool) -> bool:
    """If-Match (strong comparison: a weak tag never matches) or If-None-Match (weak): `*`
    or a listed tag; malformed members are skipped."""
    if header.strip() == "*":
        return True
    return any(tag == etag and (weak or not w) for w, tag in _ENTITY_TAG.findall(header))


def _date(request: Request, name: str) -> int | None:
    """A date condition, or None: a field sent twice is ignored, as an invalid date is."""
    values = request.headers.getlist(name)
    return parse_http_date(values[0]) if len(values) == 1 else None


def evaluate(request: Request, etag: str, modified: int) -> int | None:
    """Steps 1-4 of 13.2.2 for GET and HEAD: 412, 304, or None to go on (to If-Range).

    `modified`: the Last-Modified sent, in whole seconds."""
    if_match = field(request, "if-match")
    if if_match is not None:
        if not matches(if_match, etag, weak=False):
            return 412
    else:
        since = _date(request, "if-unmodified-since")
        if since is not None and modified > since:
            return 412
    if_none_match = field(request, "if-none-match")
    if if_none_match is not None:
        if matches(if_none_match, etag, weak=True):
            return 304
    else:
        since = _date(request, "if-modified-since")
        if since is not None and modified <= since:
            return 304
    return None


def if_range_date(value: str) -> int | None:
    """If-Range's validator when it is a date (13.1.5), else None (an entity-tag)."""
    value = value.strip()
    return None if value.startswith(('"', "W/")) else parse_http_date(value)
