"""concatenation extension: partial uploads, and final uploads made of them.

A final upload's manifest is its partials' manifests end to end: creating it stores no chunk
and reads no byte (unlike tuspyserver, which copies). Proved by the chunk table and the
server's own counters staying still while the final is created.
"""

from __future__ import annotations

import re
import uuid

import pytest

from edgestore.engine.concat import MAX_PARTIALS
from tests.helpers import (
    TUS,
    UNKNOWN_ID,
    MiB,
    random_bytes,
    sha256_hex,
    store_unchanged,
    tus_create,
    tus_head,
    tus_patch,
    tus_upload,
    upload_id_of,
)


def _partial(http, data: bytes, *, fill: int | None = None) -> str:
    url = tus_create(http, len(data), headers={"Upload-Concat": "partial"})
    fill = len(data) if fill is None else fill
    if fill:
        assert tus_patch(http, url, 0, data[:fill]).status_code == 204
    return url


def _final(http, urls: list[str], content: bytes | None = None, **headers: str):
    return http.post(
        "/files/",
        content=content,
        headers={**TUS, "Upload-Concat": "final;" + " ".join(urls), **headers},
    )


def _metric(http, name: str) -> float:
    """The sum of a counter's samples (all labels) in /metrics; the counter must exist."""
    total, seen = 0.0, False
    for line in http.get("/metrics").text.splitlines():
        if line.startswith(name) and line[len(name)] in " {":
            total += float(line.rsplit(" ", 1)[1])
            seen = True
    assert seen, f"{name} is not in /metrics"
    return total


def _parts(seed: int) -> list[bytes]:
    return [
        random_bytes(5 * MiB + 1, seed=seed),
        random_bytes(3 * MiB + 7, seed=seed + 1),
        random_bytes(2 * MiB + 11, seed=seed + 2),
    ]


@pytest.mark.parametrize("form", ["absolute", "path"])
def test_final_of_three_partials_is_byte_identical_and_copies_nothing(
    http, probe, server, form: str
) -> None:
    parts = _parts(seed=100 if form == "absolute" else 110)
    urls = [_partial(http, p) for p in parts]
    for url, p in zip(urls, parts, strict=True):
        h = tus_head(http, url)
        assert h.headers["Upload-Concat"] == "partial"
        assert h.headers["Upload-Offset"] == h.headers["Upload-Length"] == str(len(p))
    names = urls if form == "absolute" else [re.sub(r"^https?://[^/]+", "", u) for u in urls]
    key = f"concat-{uuid.uuid4().hex[:10]}"

    chunks_before = probe.chunk_count()
    bytes_in_before = _metric(http, "edgestore_bytes_in_total")
    chunk_metric_before = _metric(http, "edgestore_chunks_total")
    r = _final(http, names, **{"Upload-Metadata": f"key {_b64(key)},filename {_b64('all.bin')}"})
    assert r.status_code == 201, r.text
    assert probe.chunk_count() == chunks_before  # zero-copy: not one chunk stored
    assert _metric(http, "edgestore_bytes_in_total") == bytes_in_before
    assert _metric(http, "edgestore_chunks_total") == chunk_metric_before

    whole = b"".join(parts)
    final = r.headers["Location"]
    h = tus_head(http, final)
    assert h.headers["Upload-Offset"] == h.headers["Upload-Length"] == str(len(whole))
    concat = h.headers["Upload-Concat"]
    assert concat.startswith("final;")
    listed = [upload_id_of(u) for u in concat[len("final;") :].split()]
    assert listed == [upload_id_of(u) for u in urls]
    assert "Upload-Expires" not in h.headers

    got = http.get(final)
    assert got.status_code == 200
    assert sha256_hex(got.content) == sha256_hex(whole)
    by_key = http.get(f"/objects/default/{key}")
    assert sha256_hex(by_key.content) == sha256_hex(whole)
    assert 'filename="all.bin"' in by_key.headers["Content-Disposition"]
    # a range across a partial boundary
    lo, hi = len(parts[0]) - 10, len(parts[0]) + 10
    ranged = http.get(f"/objects/default/{key}", headers={"Range": f"bytes={lo}-{hi - 1}"})
    assert ranged.status_code == 206 and ranged.content == whole[lo:hi]
    assert probe.chunk_count() == chunks_before


def _b64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode()).decode()


def test_a_partial_upload_is_not_an_object(http, probe) -> None:
    before = probe.counts()
    _partial(http, random_bytes(1000, seed=120))
    after = probe.counts()
    assert after["objects"] == before["objects"]
    assert after["object_versions"] == before["object_versions"]


def test_partials_created_with_data_in_the_post(http) -> None:
    """tus-js-client's parallelUploads with uploadDataDuringCreation does this."""
    parts = [random_bytes(70_000, seed=121), random_bytes(30_000, seed=122)]
    urls = []
    for p in parts:
        r = http.post(
            "/files/",
            content=p,
            headers={
                **TUS,
                "Upload-Length": str(len(p)),
                "Upload-Concat": "partial",
                "Content-Type": "application/offset+octet-stream",
            },
        )
        assert r.status_code == 201 and r.headers["Upload-Offset"] == str(len(p))
        urls.append(r.headers["Location"])
    r = _final(http, urls)
    assert r.status_code == 201
    assert http.get(r.headers["Location"]).content == b"".join(parts)


def test_the_same_partial_twice(http) -> None:
    p = random_bytes(1000, seed=123)
    url = _partial(http, p)
    r = _final(http, [url, url])
    assert r.status_code == 201
    assert http.get(r.headers["Location"]).content == p + p


def test_the_final_survives_its_partials(http) -> None:
    parts = [random_bytes(2 * MiB + 1, seed=124), random_bytes(MiB + 2, seed=125)]
    urls = [_partial(http, p) for p in parts]
    r = _final(http, urls)
    assert r.status_code == 201
    for url in urls:
        assert http.delete(url, headers=TUS).status_code == 204
    assert http.get(r.headers["Location"]).content == b"".join(parts)


def test_a_partial_can_feed_two_finals(http) -> None:
    a, b = random_bytes(500, seed=126), random_bytes(700, seed=127)
    ua, ub = _partial(http, a), _partial(http, b)
    r1, r2 = _final(http, [ua, ub]), _final(http, [ub, ua])
    assert http.get(r1.headers["Location"]).content == a + b
    assert http.get(r2.headers["Location"]).content == b + a


def test_a_final_waits_for_unfinished_partials(http, probe) -> None:
    """concatenation-unfinished: the final exists at once, has no offset until its last
    partial completes, refuses PATCH, and becomes the object in that partial's last PATCH."""
    parts = [random_bytes(n, seed=128 + i) for i, n in enumerate((100_000, 70_000, 50_000))]
    done = _partial(http, parts[0])
    half = _partial(http, parts[1], fill=30_000)
    empty = _partial(http, parts[2], fill=0)
    versions = probe.counts()["object_versions"]
    r = _final(http, [done, half, empty])
    assert r.status_code == 201 and "Upload-Offset" not in r.headers
    final = r.headers["Location"]

    def waiting() -> bool:
        h = tus_head(http, final)
        assert h.status_code == 200
        assert h.headers["Upload-Length"] == str(sum(map(len, parts)))
        assert h.headers["Upload-Concat"].startswith("final;")
        return "Upload-Offset" not in h.headers

    assert waiting()
    assert http.get(final).status_code == 404
    assert tus_patch(http, final, 0, b"x").status_code == 403
    assert tus_patch(http, half, 30_000, parts[1][30_000:]).status_code == 204
    assert waiting() and probe.counts()["object_versions"] == versions
    assert tus_patch(http, empty, 0, parts[2]).status_code == 204
    assert not waiting()
    assert tus_head(http, final).headers["Upload-Offset"] == str(sum(map(len, parts)))
    assert http.get(final).content == b"".join(parts)
    assert probe.counts()["object_versions"] == versions + 1


@pytest.mark.parametrize("which", ["finished", "unfinished"])
def test_terminating_a_partial_a_final_waits_for_ends_the_final(http, which: str) -> None:
    """A final that waits for its partials can never complete once one of them is
    terminated (its bytes are released): it is gone (410) at once, rather than reported
    waiting, without an offset, until it expires a day later."""
    parts = [random_bytes(1000, seed=145), random_bytes(2000, seed=146)]
    done = _partial(http, parts[0])
    half = _partial(http, parts[1], fill=500)
    final = _final(http, [done, half]).headers["Location"]
    assert "Upload-Offset" not in tus_head(http, final).headers  # waiting
    assert http.delete(done if which == "finished" else half, headers=TUS).status_code == 204
    assert http.head(final, headers=TUS).status_code == 410
    assert http.get(final).status_code == 410
    if which == "finished":  # the other partial still completes; the final stays gone
        assert tus_patch(http, half, 500, parts[1][500:]).status_code == 204
        assert http.head(final, headers=TUS).status_code == 410


def test_a_final_of_deferred_partials_learns_its_length(http) -> None:
    data = random_bytes(40_000, seed=140)
    r = http.post(
        "/files/", headers={**TUS, "Upload-Defer-Length": "1", "Upload-Concat": "partial"}
    )
    part = r.headers["Location"]
    final = _final(http, [part]).headers["Location"]
    h = tus_head(http, final)
    assert not {"Upload-Offset", "Upload-Length", "Upload-Defer-Length"} & set(h.headers)
    r = tus_patch(http, part, 0, data, **{"Upload-Length": str(len(data))})
    assert r.status_code == 204
    h = tus_head(http, final)
    assert h.headers["Upload-Offset"] == h.headers["Upload-Length"] == str(len(data))
    assert http.get(final).content == data


def test_a_waiting_final_reports_its_length_once_it_can_be_calculated(http) -> None:
    """Spec (concatenation): Upload-Length MUST be in a final's HEAD "if the length of the
    final resource can be calculated at the time of the request", also before it is done."""
    known = random_bytes(10_000, seed=141)
    later = random_bytes(20_000, seed=142)
    a = _partial(http, known, fill=1000)  # length known, unfinished
    r = http.post(
        "/files/", headers={**TUS, "Upload-Defer-Length": "1", "Upload-Concat": "partial"}
    )
    b = r.headers["Location"]
    final = _final(http, [a, b]).headers["Location"]
    assert "Upload-Length" not in tus_head(http, final).headers  # b's length: not yet known
    r = tus_patch(http, b, 0, later[:500], **{"Upload-Length": str(len(later))})
    assert r.status_code == 204  # b's length is declared; neither partial is finished
    h = tus_head(http, final)
    assert "Upload-Offset" not in h.headers
    assert h.headers.get("Upload-Length") == str(len(known) + len(later))


def test_head_of_a_final_echoes_the_upload_concat_it_was_created_with(http) -> None:
    """Spec (concatenation): HEAD of a final upload MUST include Upload-Concat "and its value
    as received in the upload creation request" (tus-js-client sends the absolute URLs)."""
    urls = [_partial(http, random_bytes(100, seed=143)), _partial(http, random_bytes(50, seed=144))]
    value = "final;" + " ".join(urls)
    r = http.post("/files/", headers={**TUS, "Upload-Concat": value})
    assert r.status_code == 201
    assert tus_head(http, r.headers["Location"]).headers["Upload-Concat"] == value


def test_head_of_a_final_echoes_relative_partial_urls_as_received(http) -> None:
    """The spec allows relative partial URLs ("MAY be absolute or relative") and wants them
    back "as received", in the POST's answer and in every HEAD (tusd makes them absolute)."""
    urls = [_partial(http, random_bytes(60, seed=148)), _partial(http, random_bytes(40, seed=149))]
    paths = [re.sub(r"^https?://[^/]+", "", u) for u in urls]
    value = f"final;{paths[0]} {urls[1]}"  # one relative, one absolute: each as it came
    r = http.post("/files/", headers={**TUS, "Upload-Concat": value})
    assert r.status_code == 201, r.text
    assert r.headers["Upload-Concat"] == value
    assert tus_head(http, r.headers["Location"]).headers["Upload-Concat"] == value
    again = http.post("/files/", headers={**TUS, "Upload-Concat": value})  # a retried POST
    assert again.headers["Location"] == r.headers["Location"]
    assert again.headers["Upload-Concat"] == value


def test_final_naming_a_non_partial_upload_is_400(http, probe) -> None:
    plain = tus_upload(http, random_bytes(100, seed=132))
    with store_unchanged(http, probe):
        r = _final(http, [plain])
    assert r.status_code == 400


@pytest.mark.parametrize("missing", [UNKNOWN_ID, "not-an-upload"])
def test_final_naming_an_unknown_upload_is_404(http, probe, missing: str) -> None:
    done = _partial(http, random_bytes(100, seed=133))
    with store_unchanged(http, probe):
        r = _final(http, [done, f"/files/{missing}"])
    assert r.status_code == 404


@pytest.mark.parametrize("value", ["final;", "final; ", "final", "partial;x", "whole"], ids=str)
def test_malformed_upload_concat_is_400(http, probe, value: str) -> None:
    with store_unchanged(http, probe):
        r = http.post(
            "/files/", headers={**TUS, "Upload-Concat": value.strip(), "Upload-Length": "1"}
        )
    assert r.status_code == 400


def test_final_with_upload_length_is_400(http, probe) -> None:
    p = random_bytes(100, seed=134)
    url = _partial(http, p)
    with store_unchanged(http, probe):
        r = _final(http, [url], **{"Upload-Length": "100"})
    assert r.status_code == 400


def test_final_with_a_body_is_403_and_creates_nothing(http, probe) -> None:
    """A final upload takes no bytes, also not in its creation (tusd: 403, "modifying a
    final upload is not allowed"): a body is refused, not dropped behind a 201."""
    url = _partial(http, random_bytes(100, seed=147))
    with store_unchanged(http, probe):
        r = _final(http, [url], **{"Content-Type": "application/offset+octet-stream"}, content=b"x")
    assert r.status_code == 403, r.text


def test_patch_to_a_final_upload_is_403(http, probe) -> None:
    p = random_bytes(100, seed=135)
    r = _final(http, [_partial(http, p)])
    final = r.headers["Location"]
    with store_unchanged(http, probe, final):
        assert tus_patch(http, final, 100, b"more").status_code == 403
        assert tus_patch(http, final, 0, b"x" * 100).status_code == 403
    assert http.get(final).content == p


def test_final_without_tus_resumable_is_412_and_creates_nothing(http, probe) -> None:
    url = _partial(http, random_bytes(100, seed=136))
    with store_unchanged(http, probe):
        r = http.post("/files/", headers={"Upload-Concat": f"final;{url}"})
    assert r.status_code == 412


@pytest.mark.slow
def test_a_concatenated_objects_etag_is_stable(fresh_server) -> None:
    import time

    fresh_server.env_extra["EDGESTORE_MAINTENANCE_INTERVAL_SECONDS"] = "1"
    fresh_server.start()
    with fresh_server.client() as c:
        parts = [random_bytes(1000, seed=137), random_bytes(2000, seed=138)]
        urls = [_partial(c, p) for p in parts]
        final = _final(c, urls).headers["Location"]
        etag = c.get(final).headers["ETag"]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "X-Edgestore-Sha256" not in c.get(final).headers:
            time.sleep(0.2)
        assert "X-Edgestore-Sha256" in c.get(final).headers, "the upkeep filled no SHA-256"
        assert c.get(final, headers={"If-None-Match": etag}).status_code == 304
        r = c.get(final, headers={"If-Range": etag, "Range": "bytes=10-"})
        assert r.status_code == 206


def test_a_final_sent_again_gets_the_same_upload(http, probe) -> None:
    """A client whose final POST's answer was lost sends it again: the same upload, no
    second version of the same bytes (tus creation is not idempotent by itself)."""
    parts = [random_bytes(3000, seed=130), random_bytes(2000, seed=131)]
    urls = [_partial(http, p) for p in parts]
    meta = {"Upload-Metadata": "key YWdhaW4="}  # key "again"
    first = _final(http, urls, **meta)
    versions = probe.counts()["object_versions"]
    again = _final(http, urls, **meta)
    assert first.status_code == again.status_code == 201
    assert again.headers["Location"] == first.headers["Location"]
    assert again.headers["Upload-Offset"] == str(sum(map(len, parts)))
    assert probe.counts()["object_versions"] == versions
    assert http.get("/objects/default/again").content == b"".join(parts)


def test_a_final_of_too_many_partials_is_400_and_creates_nothing(http, probe) -> None:
    """Each partial completing checks the final's others: a final of thousands would cost
    every one of them that much. Refused with the limit named, before any is looked up."""
    urls = [f"/files/{uuid.UUID(int=i + 1)}" for i in range(MAX_PARTIALS + 1)]
    with store_unchanged(http, probe):
        r = _final(http, urls)
    assert r.status_code == 400
    assert str(MAX_PARTIALS) in r.text
