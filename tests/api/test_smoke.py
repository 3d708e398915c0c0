"""The server starts, answers health checks, and one tus upload round-trips."""

from __future__ import annotations

import hashlib

from tests.helpers import MiB, random_bytes


def test_upload_and_read_back(server) -> None:
    data = random_bytes(3 * MiB + 5, seed=42)
    with server.client() as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        assert c.get("/readyz").status_code == 200
        for probe in ("/healthz", "/readyz"):  # as load balancers and monitors send them
            h = c.head(probe)
            assert h.status_code == 200 and h.content == b"", probe
        r = c.post(
            "/files/",
            headers={"Tus-Resumable": "1.0.0", "Upload-Length": str(len(data))},
        )
        assert r.status_code == 201, r.text
        loc = r.headers["Location"]
        r = c.patch(
            loc,
            content=data,
            headers={
                "Tus-Resumable": "1.0.0",
                "Upload-Offset": "0",
                "Content-Type": "application/offset+octet-stream",
            },
        )
        assert r.status_code == 204, r.text
        assert r.headers["Upload-Offset"] == str(len(data))
        got = c.get(loc)
        assert got.status_code == 200
        assert hashlib.sha256(got.content).hexdigest() == hashlib.sha256(data).hexdigest()
        assert "edgestore_bytes_in" in c.get("/metrics").text
