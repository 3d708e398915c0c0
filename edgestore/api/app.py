"""The FastAPI application: routes, error mapping, request ids, metrics, background upkeep."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from edgestore import __version__
from edgestore.api import errors, native, objects, ops, security, tus
from edgestore.api.middleware import RequestContext
from edgestore.api.state import Services
from edgestore.api.tus.override import MethodOverride
from edgestore.buffers import trim_pools
from edgestore.config import Settings
from edgestore.engine import Engine
from edgestore.errors import MetadataBehind
from edgestore.maintenance import gc, hashes
from edgestore.maintenance import repair as repairs
from edgestore.storage.datadirs import SINGLE_DISK_WARNING

log = logging.getLogger("edgestore.http")

# Chunks queued for repair that one upkeep round repairs (each: read every shard, rebuild,
# store again); the rest wait for the next rounds.
REPAIRS_PER_ROUND = 20
# A node that scrubbed a slice (filled digests) keeps the scrub (the digest filling) this many
# upkeep intervals: the other nodes of the store leave it to that node; they take it over once
# it has missed a round.
SCRUB_HOLD_ROUNDS = 2
# Pooled buffers idle this long are unmapped by the upkeep (buffers.trim_pools).
POOL_IDLE_SECONDS = 60.0
# At shutdown, an upkeep round under way is given this long to reach its next step and end.
STOP_WAIT_SECONDS = 10.0


class UpkeepStopped(Exception):
    """Raised inside an upkeep step once the server is shutting down."""


class Upkeep:
    """Background upkeep: expire abandoned uploads, collect garbage, fill missing digests,
    scrub a slice of the store, repair chunks found damaged.

    A round runs on a worker thread, where cancelling the task would not stop it (the engine
    would be closed under it, and the process's exit wait for it, minutes for a big orphan
    sweep or a digest read back): `stop()` asks it to end at its next step, and waits.
    """

    def __init__(self, svc: Services) -> None:
        self._svc = svc
        self._stopping = threading.Event()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._behind: str | None = None  # the restore guard's last message
        # This process, as the holder of leases on shared jobs (the scrub, the digest
        # filling); unique per start.
        self.owner = f"{socket.gethostname()[:40]}/{os.getpid()}/{secrets.token_hex(4)}"

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def halt(self) -> None:
        """Start no new round and end the one under way at its next step (on the loop)."""
        self._stopping.set()
        self._wake.set()

    async def stop(self, wait: float = STOP_WAIT_SECONDS) -> None:
        self.halt()
        if self._task is None:
            return
        done, _ = await asyncio.wait({self._task}, timeout=wait)
        if not done:
            log.warning("upkeep round did not stop within %.0f s; leaving it", wait)
            self._task.cancel()
            return
        # Another node goes on with the shared jobs at once, not after this one's hold.
        jobs = [("digest filling", hashes.leave)]
        if self._svc.settings.scrub_bytes_per_round:
            jobs.append(("background scrub", repairs.leave_scrub))
        for name, leave in jobs:
            try:
                await asyncio.to_thread(leave, self._svc.engine, self.owner)
            except Exception as exc:  # the database gone at shutdown: the lease runs out
                log.warning("could not give the %s up (%s); it frees itself", name, exc)

    def _check(self, _stage: str = "", _count: int = 0) -> None:
        if self._stopping.is_set():
            raise UpkeepStopped

    async def _collect(self, *, orphans: bool) -> None:
        """One gc; paused while the metadata is a restored older backup, which the log says
        once (the operator must decide: see restore_guard), while the rest of upkeep goes on."""
        try:
            report = await asyncio.to_thread(
                gc.collect, self._svc.engine, orphans=orphans, progress=self._check
            )
        except MetadataBehind as exc:
            if self._behind != exc.message:
                log.error("upkeep: gc paused: %s", exc.message)
            self._behind = exc.message
            return
        self._behind = None
        if report.uploads_expired or report.chunks_deleted or report.orphan_files_deleted:
            log.info("upkeep: %s", report)

    async def _run(self) -> None:
        svc = self._svc
        interval = svc.settings.maintenance_interval_seconds
        # The orphan sweep lists every data dir: the first comes one sweep interval after the
        # start, not at once (a restart loop must not list millions of files each time).
        last_sweep = time.monotonic()
        repair_cursor = repairs.RepairCursor()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)
            if self._stopping.is_set():
                return
            try:
                now = time.monotonic()
                sweep = now - last_sweep >= svc.settings.orphan_sweep_interval_seconds
                if sweep:
                    last_sweep = now
                await self._collect(orphans=sweep)
                await asyncio.to_thread(
                    hashes.fill_round,
                    svc.engine,
                    owner=self.owner,
                    hold=SCRUB_HOLD_ROUNDS * interval,  # this node goes on while it lives
                    check=self._check,
                )
                if svc.settings.scrub_bytes_per_round:
                    found = await asyncio.to_thread(
                        repairs.scrub_round,
                        svc.engine,
                        owner=self.owner,
                        budget=svc.settings.scrub_bytes_per_round,
                        # Held past the next round: this node scrubs on while it lives.
                        hold=SCRUB_HOLD_ROUNDS * interval,
                        progress=self._check,
                    )
                    if found is not None and found.chunks_damaged:
                        log.warning("upkeep: scrub found damage: %s", found)
                fixed = await asyncio.to_thread(
                    repairs.repair,
                    svc.engine,
                    limit=REPAIRS_PER_ROUND,
                    cursor=repair_cursor,
                    due_only=True,
                    progress=self._check,
                )
                # A round paused (no new shards can be stored) was logged once by repair.
                if fixed.repaired or fixed.intact or fixed.spread or fixed.unrecoverable:
                    log.info("upkeep: %s", fixed)
                trim_pools(POOL_IDLE_SECONDS)  # spare buffers of a store that went quiet
            except UpkeepStopped:
                return
            except Exception:
                log.exception("upkeep round failed; will retry")


def create_app(settings: Settings, engine: Engine | None = None) -> FastAPI:
    """The app for these settings; opens the store at start-up unless an engine is given."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        eng = engine or await asyncio.to_thread(Engine.open, settings)
        if eng.core.dirs.single_disk:  # the CLI prints it; a server's operator reads the log
            logging.getLogger("edgestore.storage").warning(SINGLE_DISK_WARNING)
        if warning := eng.core.policy.dirs_warning(len(eng.core.dirs.names)):
            logging.getLogger("edgestore.storage").warning(warning)
        svc = Services(settings=settings, engine=eng)
        app.state.services = svc
        await app.state.security.start(eng)
        upkeep = Upkeep(svc)
        svc.on_shutdown.append(upkeep.halt)  # at the signal, not after the drain
        if settings.maintenance_interval_seconds:
            upkeep.start()
        try:
            yield
        finally:
            svc.begin_shutdown("server is shutting down")
            await upkeep.stop()
            await app.state.security.stop()
            await asyncio.to_thread(svc.close)
            if engine is None:
                await asyncio.to_thread(eng.close)

    app = FastAPI(
        title="edgestore",
        version=__version__,
        summary="Resumable uploads of huge files into a deduplicated, erasure-coded store.",
        description="tus 1.0 uploads live at /files/ (see docs/api.md); this schema covers "
        "the other routes.",
        lifespan=lifespan,
    )
    errors.install(app)
    app.include_router(tus.router)
    app.include_router(native.router)
    app.include_router(objects.router)
    app.include_router(ops.router)

    security.install(app, settings)  # CORS, auth, limits, /v1/presign (api/security.py)
    app.add_middleware(MethodOverride)  # outside auth: scopes see the real method
    app.add_middleware(RequestContext)
    return app
