"""Which request failures are worth another try, and how long to wait before it.

Retried: connection errors, timeouts, a connection dropped mid-response, 5xx but 501, 505 and
507, 429 (rate limited), 423 (a tus upload still locked by a dying request) and 460 (tus: the
bytes were corrupted in transit). Waits grow exponentially with full jitter (a uniform draw in
[0, min(cap, base * 2^attempt)]), so many clients hitting a restarting server spread out; a
`Retry-After` from the server is honoured as a minimum. The number of tries in a row that made
no progress is bounded, and the final error says how to resume, because nothing already
acknowledged is lost.
"""

from __future__ import annotations

import random
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

import httpx

from edgestore.errors import InvalidInput, TransferInterrupted

RETRY_STATUSES = frozenset({423, 429, 460})
# 5xx answers that waiting does not change: not implemented, HTTP version not supported, and
# 507 (a bucket's quota, or a full store): retried, they ended as "transfer interrupted, run
# the same command again" (exit code 7) a minute later instead of the quota error (exit 9).
PERMANENT_5XX = frozenset({501, 505, 507})
# httpx errors that mean "the request may not have arrived, or its answer got lost".
RETRY_ERRORS: tuple[type[Exception], ...] = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
)
DEFAULT_RESUME_HINT = "run the same command again to resume where it stopped"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How persistent a client is: `tries` attempts in all, waits from `base` up to `cap`."""

    tries: int = 10
    base: float = 0.25
    cap: float = 30.0
    max_retry_after: float = 300.0  # a server asking for longer is waited on this long

    def backoff(self, attempt: int, draw: Callable[[], float] = random.random) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**attempt)] (attempt 0 = first retry)."""
        return draw() * min(self.cap, self.base * (2.0 ** min(attempt, 62)))

    def delay(self, attempt: int, retry_after: float | None) -> float:
        wait = self.backoff(attempt)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.max_retry_after))
        return wait


def retryable_status(status: int) -> bool:
    return (status >= 500 and status not in PERMANENT_5XX) or status in RETRY_STATUSES


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def describe(exc: BaseException) -> str:
    text = str(exc) or exc.__class__.__name__
    return f"{exc.__class__.__name__}: {text}" if text != exc.__class__.__name__ else text


def untrusted_certificate(exc: BaseException) -> InvalidInput | None:
    """The error for a server certificate that failed verification (else None): waiting does
    not make it trusted, so it is reported at once rather than retried for a minute and
    then called an interruption to resume."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            reason = seen.verify_message or seen.reason or str(seen)
            return InvalidInput(
                f"the server's TLS certificate is not trusted ({reason}); for a private or "
                "self-signed one, name its CA file with --ca-cert (EDGESTORE_CA_CERT; "
                "or in SSL_CERT_FILE, or a directory of CA certificates in SSL_CERT_DIR)"
            )
        seen = seen.__cause__ or seen.__context__
    return None


def _status_text(resp: httpx.Response) -> str:
    try:
        message = resp.json().get("message")
    except Exception:  # not JSON: a proxy's page, or nothing
        message = None
    return f"HTTP {resp.status_code}" + (f" ({message})" if message else "")


def call_with_retry(
    send: Callable[[], httpx.Response],
    policy: RetryPolicy,
    *,
    what: str,
    resume_hint: str = DEFAULT_RESUME_HINT,
    sleep: Callable[[float], None] = time.sleep,
    on_retry: Callable[[str], None] | None = None,
    progressed: Callable[[], bool] | None = None,
) -> httpx.Response:
    """Call `send` until it returns a response that is not worth retrying, or tries run out.

    Returns that response (success or a definite error: the caller maps it). Raises
    TransferInterrupted, naming `what` and the last failure, when `policy.tries` tries in a row
    failed. `progressed`, asked after each failed try, says whether that try moved the
    transfer on (a tus PATCH cut after some bytes landed): such a try starts the count again,
    so a link that drops every few megabytes still completes a long PATCH.
    """
    last = "no attempt made"
    tries = max(1, policy.tries)
    failed = 0  # tries in a row that failed without progress
    while True:
        retry_after = None
        try:
            resp = send()
        except RETRY_ERRORS as exc:
            if (untrusted := untrusted_certificate(exc)) is not None:
                raise untrusted from None
            last = describe(exc)
        except httpx.ProxyError as exc:
            # The proxy refused to open a tunnel: its status says whether waiting may help.
            status = str(exc)[:3]
            if not (status.isdigit() and retryable_status(int(status))):
                raise InvalidInput(
                    f"{what}: the HTTP proxy refused ({exc}); check HTTPS_PROXY, HTTP_PROXY, "
                    "ALL_PROXY and NO_PROXY"
                ) from None
            last = describe(exc)
        else:
            if not retryable_status(resp.status_code):
                return resp
            last = _status_text(resp)
            retry_after = parse_retry_after(resp.headers.get("retry-after"))
            resp.close()
        failed = 1 if progressed is not None and progressed() else failed + 1
        if failed >= tries:
            break
        if on_retry is not None:
            on_retry(last)
        sleep(policy.delay(failed - 1, retry_after))
    raise TransferInterrupted(
        f"{what} failed {failed} times in a row (last: {last}); nothing acknowledged is lost: "
        f"{resume_hint}"
    )
