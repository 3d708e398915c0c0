"""Small HTTP helpers shared by the tus and object routes."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime


def http_date(ts: float) -> str:
    """An IMF-fixdate (RFC 9110), as in Upload-Expires and Last-Modified."""
    return format_datetime(datetime.fromtimestamp(ts, UTC), usegmt=True)
