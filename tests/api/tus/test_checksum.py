"""checksum extension: Upload-Checksum per PATCH; 460 on a mismatch, and nothing of that
PATCH kept — not a chunk boundary's worth, not the staged tail, not after a slow body."""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Iterator

import pytest

from tests.helpers import (
    KiB,
    MiB,
    random_bytes,
    sha256_hex,
    store_unchanged,
    tus_create,
    tus_offset,
    tus_patch,
)

ALGORITHMS = ["sha1", "md5", "sha256", "sha512"]


def checksum(algorithm: str, data: bytes) -> str:
    return f"{algorithm} {base64.b64encode(hashlib.new(algorithm, data).digest()).decode()}"


def _started(http, data: bytes, sent: int) -> str:
    url = tus_create(http, len(data))
    if sent:
        assert tus_patch(http, url, 0, data[:sent]).status_code == 204
    return url


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_matching_checksum_is_accepted(http, algorithm: str) -> None:
    data = random_bytes(200_000, seed=71)
    url = tus_create(http, len(data))
    for lo, hi in [(0, 123_457), (123_457, len(data))]:
        r = tus_patch(
            http, url, lo, data[lo:hi], **{"Upload-Checksum": checksum(algorithm, data[lo:hi])}
        )
        assert r.status_code == 204, r.text
        assert r.headers["Upload-Offset"] == str(hi)
    assert http.get(url).content == data


def test_algorithm_names_are_case_insensitive_or_refused_cleanly(http) -> None:
    url = tus_create(http, 3)
    r = tus_patch(http, url, 0, b"abc", **{"Upload-Checksum": checksum("sha1", b"abc").upper()})
    # the digest's base64 is case-sensitive: upper-casing everything breaks it
    assert r.status_code in (400, 460)
    assert tus_offset(http, url) == 0


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_mismatch_is_460_and_keeps_nothing_of_that_patch(http, probe, algorithm: str) -> None:
    # sha1 over several chunks (nothing may be committed at a chunk boundary); the others small
    data = random_bytes((9 if algorithm == "sha1" else 2) * MiB + 5, seed=72)
    url = _started(http, data, 1 * MiB + 3)  # leaves a staged tail that must stay as it is
    body = data[1 * MiB + 3 :]
    wrong = checksum(algorithm, body[:-1] + bytes([body[-1] ^ 1]))
    with store_unchanged(http, probe, url):
        r = tus_patch(http, url, 1 * MiB + 3, body, **{"Upload-Checksum": wrong})
    assert r.status_code == 460
    assert r.headers["Tus-Resumable"] == "1.0.0"
    assert tus_offset(http, url) == 1 * MiB + 3
    # the same bytes with the right checksum go through, and the object is exact
    r = tus_patch(http, url, 1 * MiB + 3, body, **{"Upload-Checksum": checksum(algorithm, body)})
    assert r.status_code == 204
    got = http.get(url)
    assert sha256_hex(got.content) == sha256_hex(data)


def test_mismatch_on_a_slow_body_keeps_nothing(http, probe) -> None:
    """A body that takes longer than the engine's commit interval (1 s) is still all or
    nothing under a checksum."""
    data = random_bytes(6 * MiB, seed=73)
    url = _started(http, data, 0)

    def slow() -> Iterator[bytes]:
        for i in range(0, len(data), 512 * KiB):
            yield data[i : i + 512 * KiB]
            time.sleep(0.12)

    with store_unchanged(http, probe, url):
        r = tus_patch(http, url, 0, slow(), **{"Upload-Checksum": checksum("sha1", b"other")})
    assert r.status_code == 460
    assert tus_offset(http, url) == 0


def test_a_digest_of_the_wrong_length_is_refused(http, probe) -> None:
    url = tus_create(http, 3)
    short = "sha1 " + base64.b64encode(b"\x00" * 4).decode()
    with store_unchanged(http, probe, url):
        r = tus_patch(http, url, 0, b"abc", **{"Upload-Checksum": short})
    assert r.status_code in (400, 460)


@pytest.mark.parametrize("algorithm", ["crc32", "sha3-256", "blake3", "xxh3"])
def test_unsupported_algorithm_is_400(http, probe, algorithm: str) -> None:
    url = tus_create(http, 3)
    with store_unchanged(http, probe, url):
        r = tus_patch(http, url, 0, b"abc", **{"Upload-Checksum": f"{algorithm} AAAAAAAA"})
    assert r.status_code == 400
    assert tus_offset(http, url) == 0


@pytest.mark.parametrize(
    "header",
    ["sha1", "sha1  abc=", "sha1 a b", "sha1 !!!!", "sha1 qZk+NkcGgWq6PiVxeFDCbJzQ2J0", "sha1,abc"],
    ids=["no-digest", "two-spaces", "three-parts", "not-base64", "no-pad", "comma"],
)
def test_malformed_upload_checksum_is_400(http, probe, header: str) -> None:
    url = tus_create(http, 3)
    with store_unchanged(http, probe, url):
        r = tus_patch(http, url, 0, b"abc", **{"Upload-Checksum": header})
    assert r.status_code == 400
    assert tus_offset(http, url) == 0


def test_checksum_is_over_this_patch_only(http) -> None:
    data = random_bytes(100_000, seed=74)
    url = _started(http, data, 40_000)
    whole = checksum("sha256", data)  # a digest of the whole file is not this PATCH's
    r = tus_patch(http, url, 40_000, data[40_000:], **{"Upload-Checksum": whole})
    assert r.status_code == 460
    good = checksum("sha256", data[40_000:])
    assert (
        tus_patch(http, url, 40_000, data[40_000:], **{"Upload-Checksum": good}).status_code == 204
    )
