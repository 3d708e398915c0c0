"""The object API's versions: the history (paged), info, and deleting versions, with
If-Match so that a retried DELETE of the latest cannot take the one before.

Objects are made through tus on the module's server, as in test_objects.py.
"""

from __future__ import annotations

import uuid

import pytest

from tests.api.test_objects import _bucket, _put
from tests.helpers import random_bytes


def test_versions(http) -> None:
    bucket, key = _bucket(), "doc.txt"
    contents = [random_bytes(100 + i, seed=210 + i) for i in range(3)]
    for c in contents:
        oid = _put(http, bucket, key, c)
    assert http.get(f"/objects/{bucket}/{key}").content == contents[-1]
    for n, c in enumerate(contents, start=1):
        r = http.get(f"/objects/{bucket}/{key}", params={"version": n})
        assert r.status_code == 200 and r.content == c
        assert r.headers["X-Edgestore-Version"] == str(n)
        assert http.get(f"/ids/{oid}", params={"version": n}).content == c
        assert http.head(f"/objects/{bucket}/{key}", params={"version": n}).status_code == 200
    history = http.get(f"/ids/{oid}/versions").json()
    assert history["next_after"] is None
    assert [v["version"] for v in history["versions"]] == [3, 2, 1]
    assert [v["size"] for v in history["versions"]] == [len(c) for c in reversed(contents)]
    assert http.get(f"/objects/{bucket}/{key}", params={"version": 4}).status_code == 404
    for bad in ("0", "-1", "abc"):
        assert http.get(f"/objects/{bucket}/{key}", params={"version": bad}).status_code == 400


@pytest.mark.parametrize("query", ["after=", "limit=", "after=&limit=", "after"])
def test_blank_version_history_parameters_count_as_not_given(http, query: str) -> None:
    """`?after=` or `?limit=` on the history was a 400; a blank parameter counts as not given
    (docs/api.md), as on the object listing."""
    bucket, key = _bucket(), "blank-history"
    for n in range(3):
        oid = _put(http, bucket, key, f"v{n}".encode())
    r = http.get(f"/ids/{oid}/versions?{query}")
    assert r.status_code == 200, r.text
    assert [v["version"] for v in r.json()["versions"]] == [3, 2, 1]


def test_a_blank_version_means_the_latest(http) -> None:
    """`?version=` (a form's empty field) was a 400 on every read, info and delete route."""
    bucket, key = _bucket(), "blank-version"
    for n in range(2):
        oid = _put(http, bucket, key, f"v{n}".encode())
    for path in (f"/objects/{bucket}/{key}", f"/ids/{oid}"):
        r = http.get(f"{path}?version=")
        assert r.status_code == 200 and r.content == b"v1", r.text
        assert http.head(f"{path}?version=").headers["X-Edgestore-Version"] == "2"
    assert http.get(f"/ids/{oid}/info?version=").json()["version"] == 2
    assert http.delete(f"/objects/{bucket}/{key}?version=").status_code == 204
    assert [v["version"] for v in http.get(f"/ids/{oid}/versions").json()["versions"]] == [1]


def test_versions_are_listed_page_by_page(http) -> None:
    """The history came whole, however many versions an object had (a key rewritten every
    minute for a year: half a million rows in one answer); it pages as the listing does."""
    bucket, key = _bucket(), "paged"
    for n in range(5):
        oid = _put(http, bucket, key, f"v{n}".encode())
    assert http.delete(f"/ids/{oid}", params={"version": 3}).status_code == 204
    seen, after, pages = [], None, 0
    while True:
        params = {"limit": 2, **({"after": after} if after is not None else {})}
        r = http.get(f"/ids/{oid}/versions", params=params)
        assert r.status_code == 200, r.text
        body = r.json()
        seen += [v["version"] for v in body["versions"]]
        after, pages = body["next_after"], pages + 1
        if after is None:
            break
    assert seen == [5, 4, 2, 1] and pages == 2  # a full last page says it is the last
    page = http.get(f"/ids/{oid}/versions", params={"after": 4, "limit": 1}).json()
    assert [v["version"] for v in page["versions"]] == [2] and page["next_after"] == 2
    assert http.get(f"/ids/{oid}/versions", params={"after": 1}).json() == {
        "versions": [],
        "next_after": None,
    }
    # Blank, as a form's empty fields send them: not given (as in the object listing).
    blank = http.get(f"/ids/{oid}/versions", params={"after": "", "limit": ""})
    assert blank.status_code == 200, blank.text
    assert blank.json() == http.get(f"/ids/{oid}/versions").json()
    for bad in ({"limit": 0}, {"limit": 10_001}, {"after": 0}, {"after": "x"}):
        assert http.get(f"/ids/{oid}/versions", params=bad).status_code == 400, bad
    missing = http.get(f"/ids/{uuid.uuid4()}/versions", params={"after": 3})
    assert missing.status_code == 404


def test_listing_versions_and_info_answer_head_like_get(http) -> None:
    """RFC 9110 9.1 / 9.3.2: HEAD is supported wherever GET is, with GET's headers, no body."""
    bucket = _bucket()
    oid = _put(http, bucket, "h", b"head me")
    for path, params in [
        ("/objects", {"bucket": bucket}),
        (f"/ids/{oid}/versions", {}),
        (f"/ids/{oid}/info", {"version": 1}),
    ]:
        g = http.get(path, params=params)
        h = http.head(path, params=params)
        assert g.status_code == 200
        assert h.status_code == 200, (path, h.status_code)
        assert h.content == b""
        assert h.headers["Content-Type"] == g.headers["Content-Type"]
        assert h.headers["Content-Length"] == g.headers["Content-Length"]


def test_delete_versions(http) -> None:
    bucket, key = _bucket(), "d"
    a, b, c = (random_bytes(50, seed=s) for s in (220, 221, 222))
    for x in (a, b, c):
        oid = _put(http, bucket, key, x)
    # a middle version
    assert http.delete(f"/objects/{bucket}/{key}", params={"version": 2}).status_code == 204
    assert http.get(f"/objects/{bucket}/{key}", params={"version": 2}).status_code == 404
    assert http.get(f"/objects/{bucket}/{key}").content == c
    # the latest: the one before becomes the latest
    assert http.delete(f"/objects/{bucket}/{key}").status_code == 204
    assert http.get(f"/objects/{bucket}/{key}").content == a
    # by id, the last one: the object is gone
    assert http.delete(f"/ids/{oid}", params={"version": 1}).status_code == 204
    assert http.get(f"/objects/{bucket}/{key}").status_code == 404
    assert http.get(f"/ids/{oid}").status_code == 404
    assert http.delete(f"/objects/{bucket}/{key}").status_code == 404


@pytest.mark.parametrize("by_id", [False, True])
def test_delete_if_match_makes_a_retry_harmless(http, by_id: bool) -> None:
    """A DELETE of "the latest" passed on again (a proxy retrying it on another node) deleted
    the version before too; with If-Match: <its ETag>, the repeat is a 412 and nothing more
    goes."""
    bucket, key = _bucket(), "retried"
    oid = _put(http, bucket, key, b"one")
    _put(http, bucket, key, b"two")
    path = f"/ids/{oid}" if by_id else f"/objects/{bucket}/{key}"
    etag = http.head(path).headers["ETag"]
    assert http.delete(path, headers={"If-Match": etag}).status_code == 204
    again = http.delete(path, headers={"If-Match": etag})
    assert again.status_code == 412, again.text
    assert again.json()["error"] == "precondition_failed"
    assert "version 1" in again.json()["message"]  # the one it would have deleted
    assert http.get(path).content == b"one"


def test_delete_if_match_compares_strongly_and_names_the_version_given(http) -> None:
    bucket, key = _bucket(), "cond"
    _put(http, bucket, key, b"first")
    _put(http, bucket, key, b"second")
    path = f"/objects/{bucket}/{key}"
    v1 = http.head(path, params={"version": 1}).headers["ETag"]
    v2 = http.head(path).headers["ETag"]
    for header in (v1, f"W/{v2}", v2.strip('"'), '"nope"', ""):
        r = http.delete(path, headers={"If-Match": header})
        assert r.status_code == 412, (header, r.text)
    # ?version=N: the condition is on that version, not the latest
    assert http.delete(path, params={"version": 1}, headers={"If-Match": v2}).status_code == 412
    assert http.delete(path, params={"version": 1}, headers={"If-Match": v1}).status_code == 204
    # a list holding its tag, and "*" (any current version)
    _put(http, bucket, key, b"third")
    v3 = http.head(path).headers["ETag"]
    assert http.delete(path, headers={"If-Match": f'"x", {v3}'}).status_code == 204
    assert http.delete(path, headers={"If-Match": "*"}).status_code == 204
    # nothing left: a 404 as without the header (RFC 9110 13.2.1), not a 412
    assert http.delete(path, headers={"If-Match": v2}).status_code == 404


def test_a_deleted_latest_version_number_is_not_given_to_the_next_upload(http) -> None:
    """After deleting version 2, the next upload must not become version 2 again: a
    ?version=2 link (or a /versions listing kept by a client) would silently name other
    bytes."""
    bucket, key = _bucket(), "renumber"
    oid = _put(http, bucket, key, b"one")
    _put(http, bucket, key, b"two")
    assert http.delete(f"/objects/{bucket}/{key}").status_code == 204
    assert http.get(f"/objects/{bucket}/{key}").content == b"one"  # latest is version 1 again
    _put(http, bucket, key, b"three")
    history = http.get(f"/ids/{oid}/versions").json()["versions"]
    assert history[0]["version"] != 2, history
    assert http.get(f"/objects/{bucket}/{key}", params={"version": 2}).status_code == 404


# --- listing ----------------------------------------------------------------------------------
