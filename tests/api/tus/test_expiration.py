"""expiration extension: Upload-Expires on unfinished uploads; expired uploads are gone (410)
and their staged bytes are reclaimed by the server's background upkeep.

An expiry far in the future (7 days) cannot be waited for, and the engine's `expires_in` is
not reachable over HTTP: tests move `expires_at` into the past in the database directly.
"""

from __future__ import annotations

import time
from email.utils import parsedate_to_datetime

import pytest

from tests.helpers import (
    TUS,
    MiB,
    StoreProbe,
    random_bytes,
    store_unchanged,
    tus_create,
    tus_head,
    tus_patch,
    tus_upload,
    upload_id_of,
)

WEEK = 7 * 24 * 3600


def _expires(headers) -> float:
    return parsedate_to_datetime(headers["Upload-Expires"]).timestamp()


def test_creation_and_head_and_patch_carry_upload_expires(http) -> None:
    r = http.post("/files/", headers={**TUS, "Upload-Length": "10"})
    assert r.status_code == 201
    t = _expires(r.headers)
    assert abs(t - (time.time() + WEEK)) < 120
    assert r.headers["Upload-Expires"].endswith(" GMT")  # an RFC 9110 IMF-fixdate
    url = r.headers["Location"]
    assert _expires(tus_head(http, url).headers) == t
    p = tus_patch(http, url, 0, b"01234")
    assert p.status_code == 204
    assert "Upload-Expires" in p.headers


def test_a_finished_upload_has_no_upload_expires(http) -> None:
    data = random_bytes(1000, seed=91)
    url = tus_create(http, len(data))
    r = tus_patch(http, url, 0, data)
    assert r.status_code == 204
    assert "Upload-Expires" not in r.headers
    assert "Upload-Expires" not in tus_head(http, url).headers


def test_an_expired_upload_is_410_for_head_patch_and_delete(http, probe) -> None:
    data = random_bytes(3 * MiB, seed=92)
    url = tus_create(http, len(data))
    assert tus_patch(http, url, 0, data[: MiB + 5]).status_code == 204
    probe.set_expires_at(upload_id_of(url), time.time() - 5)
    with store_unchanged(http, probe, url):
        assert http.head(url, headers=TUS).status_code == 410
        assert tus_patch(http, url, MiB + 5, data[MiB + 5 :]).status_code == 410
        assert http.delete(url, headers=TUS).status_code == 410
    assert http.get(url).status_code in (404, 410)


def test_an_expired_partial_upload_is_gone(http, probe) -> None:
    url = http.post(
        "/files/", headers={**TUS, "Upload-Length": "3", "Upload-Concat": "partial"}
    ).headers["Location"]
    assert tus_patch(http, url, 0, b"abc").status_code == 204
    probe.set_expires_at(upload_id_of(url), time.time() - 5)
    with store_unchanged(http, probe):
        r = http.post("/files/", headers={**TUS, "Upload-Concat": f"final;{url}"})
        assert r.status_code in (404, 410)
    assert http.head(url, headers=TUS).status_code == 410


def test_progress_pushes_the_expiry_back(http, probe) -> None:
    data = random_bytes(2000, seed=93)
    url = tus_create(http, len(data))
    soon = time.time() + 600
    probe.set_expires_at(upload_id_of(url), soon)
    r = tus_patch(http, url, 0, data[:1000])
    assert r.status_code == 204
    assert _expires(r.headers) > soon + 3600


@pytest.mark.slow
def test_background_upkeep_reclaims_an_expired_upload(fresh_server) -> None:
    fresh_server.env_extra["EDGESTORE_MAINTENANCE_INTERVAL_SECONDS"] = "1"
    fresh_server.start()
    probe = StoreProbe(fresh_server.database_url)
    try:
        with fresh_server.client() as c:
            data = random_bytes(20 * MiB, seed=94)
            url = tus_create(c, len(data))
            assert tus_patch(c, url, 0, data[: 17 * MiB + 3]).status_code == 204
            uid = upload_id_of(url)
            assert probe.parts(uid)
            probe.set_expires_at(uid, time.time() - 5)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and probe.upload(uid)["state"] != "expired":
                time.sleep(0.2)
            row = probe.upload(uid)
            assert row["state"] == "expired"
            assert probe.parts(uid) == []
            assert row["tail_length"] == 0
            assert c.head(url, headers=TUS).status_code == 410
            # a completed object is never touched by expiry
            done = tus_upload(c, b"kept", metadata={"key": "kept"})
            probe.set_expires_at(upload_id_of(done), time.time() - 5)
            time.sleep(2.5)
            assert c.get("/objects/default/kept").content == b"kept"
    finally:
        probe.close()
