"""OPTIONS (core protocol): what the server advertises, without Tus-Resumable."""

from __future__ import annotations

import pytest

from tests.helpers import TUS, store_unchanged, tus_create

EXTENSIONS = [
    "creation",
    "creation-with-upload",
    "creation-defer-length",
    "termination",
    "expiration",
    "checksum",
    "checksum-trailer",
    "concatenation",
    "concatenation-unfinished",
]


def _options(http, path: str = "/files/"):
    r = http.options(path)
    assert r.status_code in (200, 204), r.text
    return r


def test_options_advertises_the_protocol_version(http, probe) -> None:
    with store_unchanged(http, probe):
        r = _options(http)
    assert "1.0.0" in [v.strip() for v in r.headers["Tus-Version"].split(",")]
    assert r.content == b""


@pytest.mark.parametrize("extension", EXTENSIONS)
def test_options_lists_each_extension(http, extension: str) -> None:
    listed = [v.strip() for v in _options(http).headers["Tus-Extension"].split(",")]
    assert extension in listed


def test_options_tus_max_size_is_the_configured_limit(http) -> None:
    value = _options(http).headers["Tus-Max-Size"]
    assert value.isdigit()
    assert int(value) == 1 << 40  # the default max_upload_size


@pytest.mark.parametrize("algorithm", ["sha1", "md5", "sha256"])
def test_options_lists_the_registry_checksum_algorithms(http, algorithm: str) -> None:
    listed = [v.strip() for v in _options(http).headers["Tus-Checksum-Algorithm"].split(",")]
    assert algorithm in listed


def test_options_needs_no_tus_resumable_and_ignores_a_wrong_one(http) -> None:
    assert _options(http).status_code in (200, 204)
    r = http.options("/files/", headers={"Tus-Resumable": "0.2.2"})
    assert r.status_code in (200, 204)
    assert "Tus-Version" in r.headers


def test_options_on_an_upload_url(http) -> None:
    url = tus_create(http, 10)
    r = _options(http, url)
    assert r.headers["Tus-Version"]
    assert "creation" in r.headers["Tus-Extension"]


def test_options_on_the_collection_without_slash(http) -> None:
    r = _options(http, "/files")
    assert r.headers["Tus-Version"]
    assert r.headers.get("Tus-Resumable") in (None, TUS["Tus-Resumable"])
