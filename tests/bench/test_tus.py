"""bench.tus's own parts that run without the peers: the disk figure, its line, the options.

The whole benchmark (Node and tuspyserver peers, 2 GiB uploads) is not run by the suite; the
peer scripts it drives are exercised by tests/client/test_tus.py and tests/interop.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from bench import datasets, peers
from bench.tus import disk_rate, main
from bench.tus_report import Measure, disk_line, failure_summary
from tests.helpers import TUS, MiB, random_bytes, sha256_hex, tus_create, tus_patch
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


@pytest.mark.parametrize("option", ["--size", "--rss-size"])
def test_a_bad_size_is_refused_before_anything_runs(
    option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--rss-size was read after every measurement: a typo lost hours of results."""
    with pytest.raises(SystemExit) as exc:
        main([option, "2 gigs"])
    assert exc.value.code == 2
    assert "not a size: '2 gigs'" in capsys.readouterr().err


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

    from bench.tus_report import print_results, targets

    concurrent = {"uploads": 8, "each": 2**30, "failure": "concurrent uploads failed: [507]"}
    checks = targets([], [], concurrent)
    assert checks == [
        {"check": "peak RSS MiB, 8 concurrent uploads", "value": "n/a", "target": 300,
         "at_most": True, "pass": False}
    ]  # fmt: skip
    print_results(Console(width=200), [], [], 2**30, concurrent, checks)
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
    from bench.tus_report import targets

    results = [
        _measured("edgestore", "tus-js-client", 400e6),
        _measured("edgestore", "tus-js-client x4", 450e6),
        _measured("edgestore", "tus-js-client, same file again", 600e6),
        Measure("@tus/server", "tus-js-client", "random", failure="exited at start"),
        _measured("tuspyserver", "tus-js-client", 600e6),
        Measure("tuspyserver", "tus-js-client x4", "random", failure="500: boom"),
    ]
    checks = _by_name(targets(results, ["random"], {}))
    for name in (
        "edgestore / @tus/server (tus-js-client)",
        "parallelUploads 4, edgestore / tuspyserver",
    ):
        assert checks[name]["pass"] is False, checks[name]
        assert checks[name]["value"] == "n/a"
    assert checks["parallelUploads 4 / edgestore single stream"]["pass"] is True
    # edgestore's own single upload failed: neither ratio against it passes
    results[0] = Measure("edgestore", "tus-js-client", "random", failure="timeout")
    checks = _by_name(targets(results, ["random"], {}))
    for name in (
        "parallelUploads 4 / edgestore single stream",
        "second upload of the same file / first",
        "CPU-s/GB edgestore / tuspyserver",
    ):
        assert checks[name]["pass"] is False, checks[name]


def test_a_measure_with_a_failed_repeat_is_not_a_figure() -> None:
    """A repeat that failed after others succeeded shows as n/a; its checks are n/a too, not
    a median of the repeats that happened to work."""
    from bench.tus_report import targets

    ours = _measured("edgestore", "tus-js-client", 400e6)
    ours.failure = "stored bytes differ"
    results = [ours, _measured("@tus/server", "tus-js-client", 300e6)]
    checks = _by_name(targets(results, ["random"], {}))
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


def _parallel_upload(data: Path) -> Callable[[str], peers.ClientResult]:
    """What tus-js-client's parallelUploads does, without Node: two partial uploads, then a
    final one made of them (tus concatenation)."""

    def upload(endpoint: str) -> peers.ClientResult:
        body = data.read_bytes()
        half = len(body) // 2
        t0 = time.monotonic()
        base = endpoint.removesuffix("/files/")
        with httpx.Client(base_url=base, timeout=60) as http:
            parts = []
            for piece in (body[:half], body[half:]):
                url = tus_create(http, len(piece), headers={"Upload-Concat": "partial"})
                assert tus_patch(http, url, 0, piece).status_code == 204
                parts.append(url)
            final = http.post(
                endpoint,
                headers={**TUS, "Upload-Concat": "final;" + " ".join(parts)},
            )
            assert final.status_code == 201, final.text
        location = final.headers["Location"]
        return peers.ClientResult(time.monotonic() - t0, True, url=location)

    return upload


def test_the_work_a_parallel_upload_leaves_for_later_is_counted(tmp_path: Path) -> None:
    """A concatenation's whole-file SHA-256 is computed afterwards, by the server's upkeep
    (reading the object back): the benchmark runs it and counts its CPU as the upload's, or
    edgestore's parallel uploads would look cheaper than they are by that much."""
    from bench.tus import measure

    data = tmp_path / "up.bin"
    data.write_bytes(random_bytes(6 * MiB + 3, seed=9))
    right = sha256_hex(data.read_bytes())

    def server() -> peers.ServerRun:
        return peers.edgestore_server(tmp_path)

    par = Measure("edgestore", "tus-js-client x4", "random")
    measure(server, _parallel_upload(data), data, right, par, tmp_path)
    assert not par.failure, par.failure
    assert par.deferred_cpu_per_gb[0] > 0 and par.deferred_seconds[0] > 0
    assert par.cpu_per_gb[0] > par.deferred_cpu_per_gb[0]  # the upload's own, and the rest

    single = Measure("edgestore", "tuspy", "random")
    measure(server, lambda e: peers.run_tuspy(e, data, 2), data, right, single, tmp_path)
    assert not single.failure and single.deferred_cpu_per_gb == [0.0]
    datasets.empty_discarded()


def test_deferred_digests_are_computed_once(tmp_path: Path) -> None:
    """Run where the upkeep would: after the server stopped, on its store; a second pass
    finds nothing left to do."""
    data = tmp_path / "up.bin"
    data.write_bytes(random_bytes(3 * MiB, seed=11))
    server = peers.edgestore_server(tmp_path).start(tmp_path / "server.log")
    try:
        result = _parallel_upload(data)(server.endpoint)
        assert server.verify(result.url, 3 * MiB, sha256_hex(data.read_bytes())) == ""
        done = server.finish()
        assert done.versions == 1 and done.cpu > 0
        assert peers.edgestore_deferred_work(server.data).versions == 0  # type: ignore[arg-type]
    finally:
        server.stop()
    datasets.empty_discarded()


def test_deferred_work_is_shown_beside_the_figure(capsys: pytest.CaptureFixture[str]) -> None:
    from rich.console import Console

    from bench.tus_report import print_results

    par = _measured("edgestore", "tus-js-client x4", 450e6, cpu=2.9)
    par.deferred_cpu_per_gb, par.deferred_seconds = [0.7], [3.2]
    single = _measured("edgestore", "tus-js-client", 400e6, cpu=2.4)
    single.deferred_cpu_per_gb, single.deferred_seconds = [0.0], [0.0]
    print_results(Console(width=400), [par, single], ["random"], 2**30, {}, [])
    out = capsys.readouterr().out
    assert "2.90 (0.70 later)" in out and "2.40 │" in out
    assert "tus-js-client x4: 0.70 of its CPU-s/GB are work it left for later" in out
    assert "3.2 s per upload after the client was done, not in its MB/s" in out
    assert "edgestore ← tus-js-client:" not in out  # nothing deferred: no line


def test_servers_take_turns_and_each_clients_runs_are_back_to_back() -> None:
    """The ratios compare servers under one client: those runs follow each other (the disk
    drifts by the hour), and which server goes first changes from repeat to repeat, so no
    server always inherits the state the one before it left (dirty pages, a deleted store)."""
    from bench.tus import run_order

    servers, clients = ["edgestore", "@tus/server", "tuspyserver"], ["tus-js-client", "tuspy"]
    first = run_order(servers, clients, 0)
    assert first == [
        ("edgestore", "tus-js-client"),
        ("@tus/server", "tus-js-client"),
        ("tuspyserver", "tus-js-client"),
        ("edgestore", "tuspy"),
        ("@tus/server", "tuspy"),
        ("tuspyserver", "tuspy"),
    ]
    leaders = {run_order(servers, clients, rep)[0][0] for rep in range(3)}
    assert leaders == set(servers)
    for rep in range(3):
        assert sorted(run_order(servers, clients, rep)) == sorted(first)
