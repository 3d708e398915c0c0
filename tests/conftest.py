"""Shared fixtures: stores on SQLite and on the real PostgreSQL, small-chunk settings, data.

PostgreSQL tests use the server on 127.0.0.1:5432 (override with EDGESTORE_TEST_PG_URL). Where
it is down they skip with the reason, unless EDGESTORE_REQUIRE_PG=1 (CI), where they fail.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from edgestore.config import Settings, load_settings
from edgestore.engine import Engine
from tests import stores
from tests.helpers import SMALL_CHUNKS
from tests.require import unavailable

PG_ADMIN_URL = os.environ.get(
    "EDGESTORE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


# `make test` puts the suite's files on a RAM disk where there is one (/dev/shm), so parallel
# workers do not queue on one device's fsyncs. Tests marked `disk` (all of tests/storage and
# tests/bench: O_DIRECT, which tmpfs refuses, device counters, a second filesystem) get their
# tmp_path on a real disk instead: EDGESTORE_TEST_DISK_DIR, else the system temp dir.
_ON_DISK = ("tests/storage/", "tests/bench/")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.nodeid.startswith(_ON_DISK):
            item.add_marker(pytest.mark.disk)


_PASSED = pytest.StashKey[dict[str, bool]]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    """Remember how each phase of a test went: its tmp_path is kept only if one failed."""
    report = yield
    item.stash.setdefault(_PASSED, {})[report.when] = report.passed
    return report


@pytest.fixture
def tmp_path(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """pytest's own tmp_path (under --basetemp), or for a `disk` test one on a real disk.

    A passed test's files are removed at once: kept until the next run, the suite's stores
    and uploads took ~12 GB of /dev/shm (RAM) after a full run, more than a small machine's
    RAM disk holds. A failed test's stay for a look (pytest empties --basetemp next run).
    """
    if request.node.get_closest_marker("disk") is None:
        path = tmp_path_factory.mktemp(re.sub(r"\W", "_", request.node.name)[:30], numbered=True)
        yield path
        if all(request.node.stash.get(_PASSED, {}).values()):
            shutil.rmtree(path, ignore_errors=True)
        return
    root = os.environ.get("EDGESTORE_TEST_DISK_DIR") or tempfile.gettempdir()
    path = Path(tempfile.mkdtemp(prefix="edgestore-disk-test-", dir=root))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _browser_or_reason() -> tuple[str | None, str]:
    """Chromium's path, or None and why the browser tests cannot run."""
    interop = Path(__file__).parent / "interop"
    if shutil.which("node") is None:
        return None, "node is not installed"
    for package in ("tus-js-client", "playwright-core", "uppy"):
        if not (interop / "node_modules" / package).is_dir():
            return None, f"tests/interop/node_modules/{package} is missing (run `make npm`)"
    from bench.peers import chromium as find_chromium

    found = find_chromium()
    if found is None:
        return None, "Chromium is not installed (apt-get install chromium, or set CHROMIUM)"
    return found, ""


@pytest.fixture(scope="session")
def chromium() -> str:
    """Chromium's path, for the browser tests; skips when it, node or the npm packages are
    missing, unless EDGESTORE_REQUIRE_BROWSER is set (CI), where that is a failure."""
    found, reason = _browser_or_reason()
    if found is None:
        unavailable("EDGESTORE_REQUIRE_BROWSER", reason)
    return found


def _pg_unavailable_reason() -> str | None:
    try:
        eng = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with eng.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        eng.dispose()
    except Exception as exc:  # any failure to connect means "not here"
        return f"PostgreSQL not reachable at {PG_ADMIN_URL}: {exc.__class__.__name__}: {exc}"
    return None


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped afterwards."""
    reason = _pg_unavailable_reason()
    if reason:
        unavailable("EDGESTORE_REQUIRE_PG", reason)
    name = f"edgestore_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def reset_pg(url: str) -> None:
    """An empty public schema, so every test migrates a new store from scratch."""
    eng = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with eng.connect() as conn:
        conn.execute(sa.text("DROP SCHEMA public CASCADE"))
        conn.execute(sa.text("CREATE SCHEMA public"))
    eng.dispose()


def server_store_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, base: Path
) -> str:
    """The database of a module's server, on the database `request.param` names: an empty
    store at the schema head, copied rather than migrated (tests/stores.py)."""
    if request.param == "sqlite":
        path = base / "meta.db"
        stores.sqlite_store(path, tmp_path_factory.getbasetemp())
        return f"sqlite:///{path}"
    url = request.getfixturevalue("pg_server_url")
    stores.pg_store(url, reset_pg)
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(
    request: pytest.FixtureRequest, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """The metadata database URL: each test runs once on SQLite and once on PostgreSQL.

    An empty database; for a test of the engine fixtures (`make_settings`), which only needs
    a store, an empty store at the schema head, copied rather than migrated (tests/stores.py).
    """
    store = "make_settings" in request.fixturenames
    if request.param == "sqlite":
        path = tmp_path / "meta.db"
        if store:
            stores.sqlite_store(path, tmp_path_factory.getbasetemp())
        return f"sqlite:///{path}"
    url = request.getfixturevalue("pg_server_url")
    if store:
        stores.pg_store(url, reset_pg)
    else:
        reset_pg(url)
    return url


@pytest.fixture
def pg_url(pg_server_url: str) -> str:
    """PostgreSQL only (concurrency tests that SQLite cannot express)."""
    reset_pg(pg_server_url)
    return pg_server_url


SettingsFactory = Callable[..., Settings]


@pytest.fixture
def make_settings(tmp_path: Path, db_url: str) -> SettingsFactory:
    def factory(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "home": tmp_path / "home",
            "database_url": db_url,
            "gc_grace_seconds": 3600,
        }
        values.update(overrides)
        return load_settings(**values)

    return factory


@pytest.fixture
def engine(make_settings: SettingsFactory) -> Iterator[Engine]:
    """A store with the product's default chunking (1/4/8 MiB)."""
    with Engine.open(make_settings()) as eng:
        yield eng


@pytest.fixture
def small_engine(make_settings: SettingsFactory) -> Iterator[Engine]:
    """A store with small chunks (16/64/256 KiB) for fast multi-chunk tests."""
    with Engine.open(make_settings(**SMALL_CHUNKS)) as eng:
        yield eng


@pytest.fixture
def pg_engine(tmp_path: Path, pg_url: str) -> Iterator[Engine]:
    """A store with small chunks on PostgreSQL: the one database several nodes share, and
    the one whose row locks other connections can hold."""
    settings = load_settings(home=tmp_path / "home", database_url=pg_url, **SMALL_CHUNKS)
    with Engine.open(settings) as eng:
        yield eng


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """A real `edgestore serve` for a test module, on SQLite and on PostgreSQL.

    Tests share it: each creates its own uploads and objects (unique keys).
    """
    from tests.server import ServerProcess

    base = tmp_path_factory.mktemp("server")
    url = server_store_url(request, tmp_path_factory, base)
    proc = ServerProcess(home=base / "home", database_url=url).start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def fresh_server(tmp_path: Path, db_url: str):
    """A server of the test's own (crash and restart tests); stopped afterwards."""
    from tests.server import ServerProcess

    proc = ServerProcess(home=tmp_path / "home", database_url=db_url)
    try:
        yield proc
    finally:
        proc.kill()


@pytest.fixture(scope="module")
def probe(server):
    """Reads the module's server's metadata database: what it really stored."""
    from tests.helpers import StoreProbe

    p = StoreProbe(server.database_url)
    try:
        yield p
    finally:
        p.close()


@pytest.fixture
def http(server):
    """An httpx client on the module's server."""
    with server.client() as c:
        yield c


# --- access control (issue 5): Redis and servers with authentication on -----------------------

REDIS_URL = os.environ.get("EDGESTORE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The real Redis for shared rate limits; skipped where it is down, unless
    EDGESTORE_REQUIRE_REDIS=1 (CI), where the test fails instead."""
    import redis

    try:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
        client.ping()
        client.close()
    except Exception as exc:
        reason = f"Redis not reachable at {REDIS_URL}: {exc.__class__.__name__}: {exc}"
        unavailable("EDGESTORE_REQUIRE_REDIS", reason)
    return REDIS_URL


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def auth_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """A real `edgestore serve` with authentication on (the product default), shared by a
    module; `auth_server.admin_key` is an admin key, which `auth_server.client()` sends."""
    from tests.server import ServerProcess

    base = tmp_path_factory.mktemp("auth-server")
    url = server_store_url(request, tmp_path_factory, base)
    proc = ServerProcess(home=base / "home", database_url=url, auth=True).start()
    try:
        yield proc
    finally:
        proc.stop()
