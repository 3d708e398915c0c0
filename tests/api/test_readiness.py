"""/readyz in process: honest about the database file and full disks, and cheap however many
load balancers probe it while the database does not answer."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from edgestore.api.app import create_app
from edgestore.api.state import Services
from edgestore.errors import StorageUnavailable
from edgestore.metadata import chunks as chunk_index
from edgestore.storage.backend import Usage
from edgestore.storage.local import LocalBackend
from tests.conftest import SettingsFactory

Probe = Callable[[httpx.AsyncClient, Services], Any]


def _probe(make_settings: SettingsFactory, probe: Probe) -> Any:
    """Run `probe(client, services)` against the real app, its store open."""
    app: FastAPI = create_app(make_settings(auth_enabled=False, maintenance_interval_seconds=0))

    async def run() -> Any:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://es") as client:
                return await probe(client, app.state.services)

    return asyncio.run(run())


@pytest.fixture
def sqlite_settings(make_settings: SettingsFactory, db_url: str) -> SettingsFactory:
    if not db_url.startswith("sqlite"):
        pytest.skip("a SQLite database file")
    return make_settings


def test_a_deleted_sqlite_database_file_is_not_ready(
    sqlite_settings: SettingsFactory, db_url: str
) -> None:
    """The database file deleted under a running server: its pooled connections keep
    writing to the unlinked file (all of it lost at the next start), and `SELECT 1` touches
    no file, so /readyz said ready."""
    path = db_url.removeprefix("sqlite:///")

    async def probe(client: httpx.AsyncClient, _svc: Services) -> list[httpx.Response]:
        before = await client.get("/readyz")
        moved = path + ".moved"
        os.rename(path, moved)
        try:
            after = await client.get("/readyz")
        finally:
            os.rename(moved, path)
        return [before, after, await client.get("/readyz")]

    before, gone, back = _probe(sqlite_settings, probe)
    assert before.status_code == 200, before.text
    assert gone.status_code == 503
    assert gone.json()["problems"] == ["metadata database not usable; the server log says why"]
    assert back.status_code == 200


def test_a_full_data_dir_is_not_ready(
    make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A data dir with no room left takes no shard and no staged tail: every upload fails
    (507), yet /readyz said ready and the load balancer kept sending them here."""
    real = LocalBackend.usage

    def usage(self: LocalBackend) -> Usage:
        found = real(self)
        return Usage(found.total_bytes, 4096) if self.name == "d2" else found

    async def probe(client: httpx.AsyncClient, _svc: Services) -> httpx.Response:
        assert (await client.get("/readyz")).status_code == 200
        monkeypatch.setattr(LocalBackend, "usage", usage)
        return await client.get("/readyz")

    r = _probe(make_settings, probe)
    assert r.status_code == 503
    (problem,) = r.json()["problems"]
    assert "d2" in problem and "full" in problem and "4096 bytes free" in problem
    assert "/" not in problem  # the dir's name, never its path


def _gauges(text: str) -> dict[str, float]:
    """The health gauges of a /metrics page: name{labels} -> value."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith(("edgestore_data_dir_up", "edgestore_database_up")) or (
                sample.name == "edgestore_repair_queue_chunks"
            ):
                labels = "".join(f"{{{v}}}" for v in sample.labels.values())
                found[sample.name + labels] = sample.value
    return found


def test_metrics_show_each_data_dir_the_database_and_the_repair_queue(
    make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lost or full disk showed only in /readyz and the log: nothing a Prometheus alert
    could watch, nor when redundancy was whole again (the repair queue empty)."""
    real = LocalBackend.usage

    def usage(self: LocalBackend) -> Usage:
        found = real(self)
        return Usage(found.total_bytes, 4096) if self.name == "d2" else found

    async def probe(client: httpx.AsyncClient, svc: Services) -> list[dict[str, float]]:
        whole = _gauges((await client.get("/metrics")).text)
        eng = svc.engine
        info = eng.put([b"x" * 100_000], key="queued")
        with eng.core.db.write() as conn:
            chunk = eng.objects.manifest(info)[0].chunk_id
            assert chunk_index.queue_repair(eng.core.db, conn, chunk, "test", [0])
        monkeypatch.setattr(LocalBackend, "usage", usage)
        return [whole, _gauges((await client.get("/metrics")).text)]

    whole, hurt = _probe(make_settings, probe)
    dirs = {f"edgestore_data_dir_up{{d{i}}}" for i in range(9)}
    assert whole == {
        **dict.fromkeys(dirs, 1.0),
        "edgestore_database_up": 1.0,
        "edgestore_repair_queue_chunks": 0.0,
    }
    assert hurt == {
        **dict.fromkeys(dirs, 1.0),
        "edgestore_data_dir_up{d2}": 0.0,
        "edgestore_database_up": 1.0,
        "edgestore_repair_queue_chunks": 1.0,
    }


@contextmanager
def _hanging_database(svc: Services, seconds: float) -> Iterator[list[float]]:
    """The database stops answering: every transaction waits `seconds`, then fails as an
    unreachable PostgreSQL does at its connect timeout. Yields when each wait began."""
    db = svc.engine.core.db
    began: list[float] = []

    @contextmanager
    def read() -> Iterator[Any]:
        began.append(time.monotonic())
        time.sleep(seconds)
        raise StorageUnavailable("metadata database unavailable: timeout expired")
        yield  # (a generator)

    db.read = read  # type: ignore[method-assign]
    try:
        yield began
    finally:
        del db.read


def test_probes_of_a_database_that_does_not_answer_stay_cheap(
    make_settings: SettingsFactory,
) -> None:
    """Each probe checked the database on a thread of the event loop's default pool, held
    for up to the connect timeout: thirty load-balancer probes took every thread (the
    requests that use the pool queued behind them) and answered one batch after another.
    Now they share one check, and answer "not ready" within READY_TIMEOUT_S."""
    from edgestore.api import readiness

    async def probe(client: httpx.AsyncClient, svc: Services) -> tuple[Any, ...]:
        with _hanging_database(svc, 2 * readiness.READY_TIMEOUT_S) as began:
            started = time.monotonic()
            probes = asyncio.gather(*(client.get("/readyz") for _ in range(30)))
            await asyncio.sleep(0.3)
            t = time.monotonic()
            await asyncio.to_thread(lambda: None)  # the default pool still has threads
            pool_wait = time.monotonic() - t
            answers = await probes
            took = time.monotonic() - started
        return answers, took, pool_wait, len(began)

    answers, took, pool_wait, checks = _probe(make_settings, probe)
    assert {r.status_code for r in answers} == {503}
    assert took < readiness.READY_TIMEOUT_S + 1.5, took
    assert pool_wait < 0.5, pool_wait
    assert checks == 1
    assert "not responding" in answers[0].json()["problems"][0]


def test_a_node_shutting_down_is_not_ready_and_healthz_still_answers(
    make_settings: SettingsFactory,
) -> None:
    """/readyz is what a load balancer drains by; /healthz only says the process answers."""

    async def probe(client: httpx.AsyncClient, svc: Services) -> list[httpx.Response]:
        before = await client.get("/readyz")
        svc.begin_shutdown("server is shutting down")
        return [before, await client.get("/readyz"), await client.get("/healthz")]

    before, draining, health = _probe(make_settings, probe)
    assert before.status_code == 200, before.text
    assert draining.status_code == 503
    assert draining.json() == {"ready": False, "problems": ["server is shutting down"]}
    assert health.status_code == 200 and health.json() == {"status": "ok"}


def _space(text: str) -> dict[str, dict[str, float]]:
    """The data dir space gauges of a /metrics page: gauge -> dir -> value."""
    found: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in ("edgestore_data_dir_free_bytes", "edgestore_data_dir_size_bytes"):
                found.setdefault(s.name.removeprefix("edgestore_data_dir_"), {})[
                    s.labels["dir"]
                ] = s.value
    return found


def test_metrics_show_each_data_dir_s_free_space_and_size(
    make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only edgestore_data_dir_up told of a filling disk, and only once it was full (uploads
    already refused with 507): nothing an alert could fire on before then. Free and size
    bytes per dir, as its filesystem reports them; none for a dir that is not there."""
    real = LocalBackend.usage

    def usage(self: LocalBackend) -> Usage:
        found = real(self)
        return Usage(found.total_bytes, 4096) if self.name == "d2" else found

    async def probe(client: httpx.AsyncClient, svc: Services) -> list[Any]:
        roots = {n: b.root for n, b in svc.engine.core.dirs.backends.items()}
        whole = _space((await client.get("/metrics")).text)
        fs = {n: os.statvfs(r) for n, r in roots.items()}
        monkeypatch.setattr(LocalBackend, "usage", usage)
        full = _space((await client.get("/metrics")).text)
        moved = roots["d4"].with_name("d4.moved")
        os.rename(roots["d4"], moved)
        try:
            lost = _space((await client.get("/metrics")).text)
        finally:
            os.rename(moved, roots["d4"])
        return [fs, whole, full, lost]

    fs, whole, full, lost = _probe(make_settings, probe)
    dirs = {f"d{i}" for i in range(9)}
    assert set(whole) == {"free_bytes", "size_bytes"}
    assert set(whole["free_bytes"]) == set(whole["size_bytes"]) == dirs
    for d in dirs:
        size, free = whole["size_bytes"][d], whole["free_bytes"][d]
        assert size == fs[d].f_blocks * fs[d].f_frsize
        assert 0 < free <= size
        assert abs(free - fs[d].f_bavail * fs[d].f_frsize) < 256 * 2**20  # others write too
    assert full["free_bytes"]["d2"] == 4096  # full: still shown, so the alert has its figure
    assert full["size_bytes"]["d2"] == whole["size_bytes"]["d2"]
    assert set(lost["free_bytes"]) == set(lost["size_bytes"]) == dirs - {"d4"}
