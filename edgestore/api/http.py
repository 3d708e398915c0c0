"""Small HTTP helpers shared by the tus and object routes."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_tz


def http_date(ts: float) -> str:
    """An IMF-fixdate (RFC 9110), as in Upload-Expires and Last-Modified."""
    return format_datetime(datetime.fromtimestamp(ts, UTC), usegmt=True)


# The three forms RFC 9110 5.6.7 makes recipients accept: IMF-fixdate, obsolete RFC 850 and
# asctime. Anything else (a numeric zone, a bare date) is no HTTP-date, and is ignored.
_HTTP_DATE = re.compile(
    r"[A-Za-z]{3}, \d{2} [A-Za-z]{3} \d{4} \d{2}:\d{2}:\d{2} GMT"
    r"|[A-Za-z]{6,9}, \d{2}-[A-Za-z]{3}-\d{2} \d{2}:\d{2}:\d{2} GMT"
    r"|[A-Za-z]{3} [A-Za-z]{3} [ \d]\d \d{2}:\d{2}:\d{2} \d{4}"
)


def parse_http_date(value: str) -> int | None:
    """An HTTP-date in Unix seconds, or None when it is not one (a conditional then ignored)."""
    value = value.strip()
    if not _HTTP_DATE.fullmatch(value):
        return None
    parts = parsedate_tz(value)
    if parts is None:
        return None
    try:  # a day or hour out of range is no date either (not normalised into another one)
        return int(datetime(*parts[:6], tzinfo=UTC).timestamp())
    except (ValueError, OverflowError):
        return None
