"""Retries: the backoff rules, then uploads through a real fault-injecting proxy in front of a
real server (503, 429 with Retry-After, 460, dropped connections, a lost finalize answer)."""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import httpx
import pytest

from edgestore.client import Client, RetryPolicy
from edgestore.client.retry import call_with_retry, parse_retry_after, retryable_status
from edgestore.errors import InvalidKey, TransferInterrupted
from tests.faults import FaultProxy
from tests.helpers import KiB, MiB, random_bytes
from tests.native import versions_of

FAST = RetryPolicy(tries=6, base=0.01, cap=0.05)
CHUNK_PUT = r"^/v1/uploads/[^/]+/chunks/"


def upload(proxy: FaultProxy, tmp_path: Path, data: bytes, key: str, **kwargs):
    src = tmp_path / "f.bin"
    if not src.exists() or src.read_bytes() != data:  # rewriting would void the resume hint
        src.write_bytes(data)
    client = Client(proxy.url, retry=kwargs.pop("retry", FAST), state_dir=tmp_path / "hints")
    return client.upload(src, key=key, **kwargs)


# --- the rules ---------------------------------------------------------------------------------


def test_full_jitter_stays_under_the_exponential_cap() -> None:
    policy = RetryPolicy(base=0.5, cap=8.0)
    assert policy.backoff(0, draw=lambda: 1.0) == 0.5
    assert policy.backoff(3, draw=lambda: 1.0) == 4.0
    assert policy.backoff(10, draw=lambda: 1.0) == 8.0
    assert policy.backoff(10, draw=lambda: 0.0) == 0.0
    assert all(0 <= policy.backoff(4) <= 8.0 for _ in range(100))
    assert policy.delay(0, retry_after=3.0) >= 3.0  # Retry-After is a floor
    assert RetryPolicy(max_retry_after=10).delay(0, retry_after=3600) <= 10


def test_retry_after_forms() -> None:
    assert parse_retry_after("7") == 7.0
    when = datetime.now(UTC) + timedelta(seconds=30)
    assert 25 < parse_retry_after(format_datetime(when, usegmt=True)) <= 31
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_what_is_retried() -> None:
    assert all(retryable_status(s) for s in (500, 502, 503, 504, 429, 460, 423))
    assert not any(retryable_status(s) for s in (400, 401, 403, 404, 409, 410, 413, 422))
    assert not any(retryable_status(s) for s in (501, 505, 507))  # waiting does not change them


def test_tries_are_bounded_and_the_error_says_how_to_resume() -> None:
    calls = []

    def send() -> httpx.Response:
        calls.append(1)
        raise httpx.ConnectError("refused")

    with pytest.raises(TransferInterrupted, match="run the same command again") as err:
        call_with_retry(send, RetryPolicy(tries=4, base=0), what="sending x", sleep=lambda s: None)
    assert len(calls) == 4 and "ConnectError" in str(err.value) and "sending x" in str(err.value)


def test_a_try_that_made_progress_starts_the_count_again() -> None:
    """A tus PATCH cut after some bytes landed is progress: only tries in a row without any
    are bounded, so a link that drops every few megabytes still finishes a long PATCH."""
    calls = []

    def send() -> httpx.Response:
        calls.append(1)
        if len(calls) < 12:
            raise httpx.ReadError("reset")
        return httpx.Response(204)

    policy, nap = RetryPolicy(tries=3, base=0), lambda s: None
    moved = iter([True, False] * 6)  # every other try moved the upload on
    resp = call_with_retry(send, policy, what="x", sleep=nap, progressed=lambda: next(moved))
    assert resp.status_code == 204 and len(calls) == 12
    calls.clear()
    with pytest.raises(TransferInterrupted, match="failed 3 times in a row"):
        call_with_retry(send, policy, what="x", sleep=nap, progressed=lambda: False)
    assert len(calls) == 3


# --- against a server ----------------------------------------------------------------------------


def test_503s_are_retried(server, http, proxy, tmp_path) -> None:
    proxy.add("PUT", CHUNK_PUT, times=3, status=503)
    proxy.add("POST", r"/missing$", times=2, status=502)
    data = random_bytes(1 * MiB, seed=50)
    r = upload(proxy, tmp_path, data, "retry/503", workers=2)
    assert r.retries >= 5 and r.sha256 == hashlib.sha256(data).hexdigest()
    assert http.get(f"/ids/{r.object_id}").content == data


def test_429_retry_after_is_honoured(server, proxy, tmp_path) -> None:
    proxy.add("POST", r"^/v1/uploads$", times=1, status=429, retry_after="1")
    started = time.monotonic()
    r = upload(proxy, tmp_path, random_bytes(100 * KiB, seed=51), "retry/429")
    assert time.monotonic() - started >= 1.0 and r.retries == 1


def test_460_corrupted_in_transit_is_sent_again(server, proxy, tmp_path) -> None:
    proxy.add("PUT", CHUNK_PUT, times=2, status=460)
    r = upload(proxy, tmp_path, random_bytes(500 * KiB, seed=52), "retry/460", workers=1)
    assert r.retries == 2 and proxy.count("PUT", CHUNK_PUT) == r.chunks_sent + 2


def test_dropped_connections_are_retried(server, http, proxy, tmp_path) -> None:
    proxy.add("PUT", CHUNK_PUT, times=2)  # dropped before the server saw them
    proxy.add("PUT", CHUNK_PUT, times=2, forward_first=True)  # stored, but the answer is lost
    data = random_bytes(1 * MiB, seed=53)
    r = upload(proxy, tmp_path, data, "retry/drop", workers=3)
    assert r.retries == 4 and http.get(f"/ids/{r.object_id}").content == data


def test_a_lost_finalize_answer_is_retried_into_the_same_version(server, probe, proxy, tmp_path):
    proxy.add("POST", r"/finalize$", times=1, forward_first=True)
    r = upload(proxy, tmp_path, random_bytes(300 * KiB, seed=54), "retry/final")
    assert r.retries == 1 and r.version == 1
    assert versions_of(probe, "retry/final") == 1


def test_persistent_failure_gives_up_with_a_resume_hint(server, proxy, tmp_path) -> None:
    proxy.add("PUT", CHUNK_PUT, times=1000, status=503)
    data = random_bytes(500 * KiB, seed=55)
    with pytest.raises(TransferInterrupted, match="run the same command again") as err:
        upload(proxy, tmp_path, data, "retry/down", retry=RetryPolicy(tries=3, base=0.01))
    assert "HTTP 503" in str(err.value)
    assert list((tmp_path / "hints").glob("*.json"))  # kept for the rerun
    proxy.rules.clear()  # the server is back
    r = upload(proxy, tmp_path, data, "retry/down")
    assert r.resumed and r.sha256 == hashlib.sha256(data).hexdigest()


def test_client_errors_are_not_retried(server, proxy, tmp_path) -> None:
    with pytest.raises(InvalidKey):
        upload(proxy, tmp_path, b"x", "../bad")
    assert proxy.count("POST", r"^/v1/uploads$") == 1
