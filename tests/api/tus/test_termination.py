"""termination extension: DELETE ends an upload; its staged bytes are released."""

from __future__ import annotations

import uuid

import pytest

from tests.helpers import (
    TUS,
    UNKNOWN_ID,
    MiB,
    random_bytes,
    store_unchanged,
    tus_create,
    tus_offset,
    tus_patch,
    tus_upload,
    upload_id_of,
)

# The spec allows 404 or 410 for every later request; edgestore keeps track of terminated
# uploads and answers 410 Gone.
GONE = 410


def test_terminate_then_every_request_is_gone(http, probe) -> None:
    data = random_bytes(5 * MiB + 3, seed=81)
    url = tus_create(http, len(data))
    assert tus_patch(http, url, 0, data[: 4 * MiB + 1]).status_code == 204
    uid = upload_id_of(url)
    assert probe.parts(uid) or probe.upload(uid)["tail_length"] > 0

    r = http.delete(url, headers=TUS)
    assert r.status_code == 204
    assert r.headers["Tus-Resumable"] == "1.0.0"
    assert r.content == b""

    assert http.head(url, headers=TUS).status_code == GONE
    assert tus_patch(http, url, 4 * MiB + 1, data[4 * MiB + 1 :]).status_code == GONE
    assert tus_patch(http, url, 0, data).status_code == GONE
    assert http.delete(url, headers=TUS).status_code == GONE
    assert http.get(url).status_code in (404, 410)
    # its durable bytes are released
    assert probe.parts(uid) == []
    row = probe.upload(uid)
    assert row["tail_length"] == 0 and row["committed_offset"] == 0
    assert probe.tail(uid) in (None, b"")


def test_terminate_an_upload_that_has_no_bytes(http) -> None:
    url = tus_create(http, 100)
    assert http.delete(url, headers=TUS).status_code == 204
    assert http.head(url, headers=TUS).status_code == GONE


@pytest.mark.parametrize("upload_id", [UNKNOWN_ID, "nope"])
def test_terminate_an_unknown_upload_is_404(http, probe, upload_id: str) -> None:
    with store_unchanged(http, probe):
        r = http.delete(f"/files/{upload_id}", headers=TUS)
    assert r.status_code == 404


@pytest.mark.parametrize("version", [None, "0.2.2"])
def test_terminate_without_tus_resumable_is_412_and_keeps_the_upload(http, probe, version) -> None:
    data = random_bytes(1000, seed=82)
    url = tus_create(http, len(data))
    assert tus_patch(http, url, 0, data[:400]).status_code == 204
    headers = {} if version is None else {"Tus-Resumable": version}
    with store_unchanged(http, probe, url):
        r = http.delete(url, headers=headers)
    assert r.status_code == 412
    assert "1.0.0" in r.headers["Tus-Version"]
    assert tus_offset(http, url) == 400


def test_terminating_a_finished_upload_keeps_its_object(http) -> None:
    data = random_bytes(3000, seed=83)
    key = f"term-{uuid.uuid4().hex[:10]}"
    url = tus_upload(http, data, metadata={"key": key})
    assert http.delete(url, headers=TUS).status_code == 204
    assert http.head(url, headers=TUS).status_code == GONE
    assert http.get(f"/objects/default/{key}").content == data


def test_get_on_a_terminated_upload_url_is_gone(http) -> None:
    url = tus_upload(http, random_bytes(100, seed=84))
    assert http.delete(url, headers=TUS).status_code == 204
    assert http.get(url).status_code in (404, 410)


def _refcounts(probe, chunk_ids: list[str]) -> dict[str, int]:
    return {
        cid: probe._rows("SELECT refcount FROM chunks WHERE chunk_id = :c", c=cid)[0][0]
        for cid in set(chunk_ids)
    }


def test_terminate_frees_the_upload_for_gc(http, probe) -> None:
    """The chunks it referenced lose their references (refcount goes back down)."""
    data = random_bytes(20 * MiB, seed=85)
    url = tus_create(http, len(data))
    assert tus_patch(http, url, 0, data[: 17 * MiB]).status_code == 204
    uid = upload_id_of(url)
    chunk_ids = [cid for cid, _, _ in probe.parts(uid)]
    assert chunk_ids
    before = _refcounts(probe, chunk_ids)
    assert http.delete(url, headers=TUS).status_code == 204
    after = _refcounts(probe, chunk_ids)
    for cid in chunk_ids:
        assert after[cid] == before[cid] - chunk_ids.count(cid)
