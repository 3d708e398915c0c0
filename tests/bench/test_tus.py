"""bench.tus's own parts that run without the peers: the disk figure, its line, the options.

The whole benchmark (Node and tuspyserver peers, 2 GiB uploads) is not run by the suite; the
peer scripts it drives are exercised by tests/client/test_tus.py and tests/interop.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench import datasets, peers
from bench.tus import Measure, disk_line, disk_rate, failure_summary, main
from tests.helpers import MiB, random_bytes, sha256_hex
from tests.server import ServerProcess


def test_disk_rate_writes_the_files_shards_and_times_them(tmp_path: Path) -> None:
    data = tmp_path / "random.bin"
    data.write_bytes(os.urandom(20 * 1024 * 1024))
    rate = disk_rate(data, tmp_path / "w")
    assert 0 < rate < 1e12
    # The shards went under the workdir and are removed (at once, or when the benchmark ends:
    # see datasets.discard), so runs do not fill the disk.
    datasets.empty_discarded()
    assert not (tmp_path / "w" / "stage-shards").exists()


def test_disk_line_puts_both_servers_against_the_disk() -> None:
    results = [
        Measure("edgestore", "tus-js-client", "random", rates=[100e6]),
        Measure("@tus/server", "tus-js-client", "random", rates=[300e6]),
    ]
    line = disk_line("random", 200e6, results)
    assert "200 MB/s" in line
    assert "reached 0.50 of that" in line
    assert "@tus/server's rate is 1.50 of it" in line


@pytest.mark.parametrize("value", ["0", "-5"])
def test_request_size_must_be_positive(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--chunk-mib", value])
    assert exc.value.code == 2
    assert "--chunk-mib must be at least 1" in capsys.readouterr().err


def test_a_refused_upload_is_shown_by_its_status_and_reason() -> None:
    node = (
        "error tus: unexpected response while creating upload, originated from request "
        "(method: POST, url: http://127.0.0.1:1/files, response code: 501, response text: "
        "Concatenation extension is not (yet) supported. Disable parallel uploads in the tus "
        "client.\n, request id: n/a)"
    )
    assert failure_summary(node) == "501: Concatenation extension is not (yet) supported"
    assert failure_summary("Traceback: boom") == "Traceback: boom"
    assert failure_summary("") == "failed"


def test_the_browser_client_needs_chromium(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("CHROMIUM", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no chromium on it
    with pytest.raises(SystemExit) as exc:
        main(["--browser"])
    assert exc.value.code == 2
    assert "--browser needs Chromium" in capsys.readouterr().err


@pytest.mark.interop
@pytest.mark.browser
def test_the_browser_client_uploads_from_chromium_and_times_the_page(
    chromium: str, tmp_path: Path
) -> None:
    data = random_bytes(3 * MiB + 5, seed=3)
    file = tmp_path / "up.bin"
    file.write_bytes(data)
    server = ServerProcess(
        home=tmp_path / "home",
        database_url=f"sqlite:///{tmp_path / 'meta.db'}",
        env_extra={"EDGESTORE_CORS_ORIGINS": "*"},
    ).start()
    page = peers.PageServer()
    try:
        result = peers.run_browser(chromium, page.page, f"{server.url}/files/", file, 1, 1)
        assert result.ok, result.detail
        assert 0 < result.seconds < 60
        with server.client() as admin:
            listed = admin.get("/objects", params={"bucket": "default"}).json()["objects"]
            assert [o["size"] for o in listed] == [len(data)]
            got = admin.get(f"/objects/default/{listed[0]['key']}")
        assert sha256_hex(got.content) == sha256_hex(data)
    finally:
        page.close()
        server.stop()


def test_a_failed_concurrent_run_is_reported_and_fails_its_check(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from rich.console import Console

    from bench.tus import _checks, _print

    concurrent = {"uploads": 8, "each": 2**30, "failure": "concurrent uploads failed: [507]"}
    checks = _checks([], [], concurrent)
    assert checks == [
        {"check": "peak RSS MiB, 8 concurrent uploads", "value": "n/a", "target": 300,
         "at_most": True, "pass": False}
    ]  # fmt: skip
    _print(Console(width=200), [], [], 2**30, concurrent, checks)
    out = capsys.readouterr().out
    assert "8 concurrent uploads: concurrent uploads failed: [507]" in out
    assert "FAIL" in out


def _measured(server: str, client: str, rate: float, cpu: float = 1.0) -> Measure:
    return Measure(server, client, "random", rates=[rate], cpu_per_gb=[cpu], peak_rss=[1])


def _by_name(checks: list[dict[str, object]]) -> dict[str, dict[str, object]]:
    return {str(c["check"]).removeprefix("random: "): c for c in checks}


def test_a_check_whose_baseline_was_not_measured_does_not_pass() -> None:
    """A peer that failed (or a first upload that did) is no baseline: dividing by a
    stand-in of 1 B/s made every ratio against it a PASS."""
    from bench.tus import _checks

    results = [
        _measured("edgestore", "tus-js-client", 400e6),
        _measured("edgestore", "tus-js-client x4", 450e6),
        _measured("edgestore", "tus-js-client, same file again", 600e6),
        Measure("@tus/server", "tus-js-client", "random", failure="exited at start"),
        _measured("tuspyserver", "tus-js-client", 600e6),
        Measure("tuspyserver", "tus-js-client x4", "random", failure="500: boom"),
    ]
    checks = _by_name(_checks(results, ["random"], {}))
    for name in (
        "edgestore / @tus/server (tus-js-client)",
        "parallelUploads 4, edgestore / tuspyserver",
    ):
        assert checks[name]["pass"] is False, checks[name]
        assert checks[name]["value"] == "n/a"
    assert checks["parallelUploads 4 / edgestore single stream"]["pass"] is True
    # edgestore's own single upload failed: neither ratio against it passes
    results[0] = Measure("edgestore", "tus-js-client", "random", failure="timeout")
    checks = _by_name(_checks(results, ["random"], {}))
    for name in (
        "parallelUploads 4 / edgestore single stream",
        "second upload of the same file / first",
        "CPU-s/GB edgestore / tuspyserver",
    ):
        assert checks[name]["pass"] is False, checks[name]


def test_a_measure_with_a_failed_repeat_is_not_a_figure() -> None:
    """A repeat that failed after others succeeded shows as n/a; its checks are n/a too, not
    a median of the repeats that happened to work."""
    from bench.tus import _checks

    ours = _measured("edgestore", "tus-js-client", 400e6)
    ours.failure = "stored bytes differ"
    results = [ours, _measured("@tus/server", "tus-js-client", 300e6)]
    checks = _by_name(_checks(results, ["random"], {}))
    assert checks["edgestore / @tus/server (tus-js-client)"]["pass"] is False


def test_every_upload_is_verified_against_the_file(tmp_path: Path) -> None:
    """edgestore and tuspy, for real (no Node): the figures count only when the stored
    upload is the file, read back by a GET of the upload's URL outside the timing."""
    from bench.tus import measure

    data = tmp_path / "up.bin"
    data.write_bytes(random_bytes(3 * MiB + 7, seed=5))
    right = sha256_hex(data.read_bytes())

    def tuspy(endpoint: str) -> peers.ClientResult:
        return peers.run_tuspy(endpoint, data, 1)

    def server() -> peers.ServerRun:
        return peers.edgestore_server(tmp_path)

    ok = Measure("edgestore", "tuspy", "random")
    measure(server, tuspy, data, right, ok, tmp_path, before=tuspy)
    assert not ok.failure and len(ok.rates) == 1 and ok.peak_rss[0] > 0

    wrong = Measure("edgestore", "tuspy", "random")
    measure(server, tuspy, data, "0" * 64, wrong, tmp_path)
    assert wrong.failure.startswith(f"stored {3 * MiB + 7} bytes, SHA-256 ")
    assert not wrong.rates and not wrong.measured
    datasets.empty_discarded()


def test_a_peers_upload_is_read_from_the_file_it_wrote(tmp_path: Path) -> None:
    store = tmp_path / "files"
    store.mkdir()
    (store / "abc123").write_bytes(b"hello")
    (store / "abc123.json").write_text("{}")
    run = peers.ServerRun("peer", [], "/files", tmp_path, data=store)
    url = "http://127.0.0.1:1/files/abc123"
    assert run.verify(url, 5, sha256_hex(b"hello")) == ""
    assert run.verify(url, 5, sha256_hex(b"world")).startswith("stored 5 bytes")
    assert run.verify("http://127.0.0.1:1/files/gone", 5, "x").startswith("stored upload unread")
    assert run.verify("", 5, "x") == "the client did not say where it uploaded"
