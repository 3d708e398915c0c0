"""The IETF draft's fields as Structured Fields: what a malformed one does.

`Upload-Offset`, `Upload-Length` and `Upload-Complete` are Items (RFC 9651): an Integer that
"MUST" be non-negative, and a Boolean. The draft: "Other values MUST cause the entire header
field to be ignored", as RFC 9651 section 4.2 does for any field that fails to parse. Ignored
means absent: a malformed `Upload-Length` declares nothing, a malformed `Upload-Complete`
completes nothing, and a PATCH whose `Upload-Offset` is malformed has none (400).
"""

from __future__ import annotations

import pytest

from tests.api.tus.ietf_requests import PARTIAL, VERSIONS, assert_object, draft

MALFORMED_INTEGERS = ["abc", "-1", "1.0", "0x10", "1234567890123456", "1, 2", "?1", '"5"', ""]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("value", MALFORMED_INTEGERS, ids=repr)
def test_a_malformed_upload_length_is_ignored(server, version: str, value: str) -> None:
    with server.client() as c:
        r = c.post("/files/", headers=draft(version, Upload_Complete="?0", Upload_Length=value))
        assert r.status_code == 201, r.text
        assert "Upload-Length" not in r.headers  # nothing declared
        url = r.headers["Location"]
        headers = draft(version, Upload_Offset="0", Upload_Complete="?0", Content_Type=PARTIAL)
        r = c.patch(url, content=b"abc", headers={**headers, "Upload-Length": value})
        assert r.status_code == 204, r.text
        h = c.head(url, headers=draft(version))
        assert (h.headers["Upload-Offset"], h.headers["Upload-Complete"]) == ("3", "?0")
        assert "Upload-Length" not in h.headers


@pytest.mark.parametrize("value", MALFORMED_INTEGERS, ids=repr)
def test_a_malformed_upload_offset_is_a_missing_one(server, value: str) -> None:
    with server.client() as c:
        url = c.post("/files/", headers=draft(Upload_Complete="?0")).headers["Location"]
        headers = draft(Upload_Offset=value, Upload_Complete="?0", Content_Type=PARTIAL)
        r = c.patch(url, content=b"abc", headers=headers)
        assert r.status_code == 400, r.text
        assert "Upload-Offset" in r.json()["message"]
        assert c.head(url, headers=draft()).headers["Upload-Offset"] == "0"


@pytest.mark.parametrize("version", VERSIONS)
def test_well_formed_items_with_parameters_are_read(server, version: str) -> None:
    """An Item may carry parameters and surrounding spaces; its value is what counts."""
    data = b"hello, structured fields"
    with server.client() as c:
        r = c.post(
            "/files/",
            content=data[:5],
            headers=draft(version, Upload_Complete="?0;x=1", Upload_Length=f"{len(data)};a"),
        )
        assert r.status_code == 201, r.text
        assert (r.headers["Upload-Length"], r.headers["Upload-Complete"]) == (str(len(data)), "?0")
        url = r.headers["Location"]
        headers = draft(
            version, Upload_Offset="5;y=?0", Upload_Complete="?1;z", Content_Type=PARTIAL
        )
        r = c.patch(url, content=data[5:], headers=headers)
        assert (r.status_code, r.headers["Upload-Complete"]) == (204, "?1"), r.text
        assert_object(c, url, data)


@pytest.mark.parametrize("value", ["true", "1", "?2", "?1, ?1", "?"], ids=repr)
def test_a_malformed_upload_complete_completes_nothing(server, value: str) -> None:
    with server.client() as c:
        r = c.post("/files/", content=b"abc", headers=draft(Upload_Complete=value))
        assert (r.status_code, r.headers["Upload-Complete"]) == (201, "?0"), r.text
        url = r.headers["Location"]
        headers = draft(Upload_Offset="3", Upload_Complete=value, Content_Type=PARTIAL)
        r = c.patch(url, content=b"def", headers=headers)
        assert (r.status_code, r.headers["Upload-Complete"]) == (204, "?0"), r.text
        assert c.get(url).status_code == 404  # not an object yet


def test_v6_head_and_delete_ignore_malformed_upload_fields(server) -> None:
    """Draft -05 refuses a HEAD or DELETE carrying these fields; a malformed one is ignored
    first, so it is not there to be refused."""
    with server.client() as c:
        url = c.post("/files/", headers=draft(Upload_Complete="?0")).headers["Location"]
        for name in ("Upload-Offset", "Upload-Complete", "Upload-Length"):
            assert c.head(url, headers={**draft(), name: "nonsense"}).status_code == 204, name
        r = c.delete(url, headers={**draft(), "Upload-Offset": "x", "Upload-Complete": "yes"})
        assert r.status_code == 204
