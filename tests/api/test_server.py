"""The server's signal handling: SIGTERM stops streaming uploads without waiting on a lock
the interrupted main thread may hold."""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Iterator

import uvicorn

from edgestore.api.app import create_app
from edgestore.api.bodies import BodyBridge
from edgestore.api.server import _Server
from edgestore.api.state import Services
from edgestore.engine import Engine
from edgestore.errors import TransferInterrupted
from tests.helpers import KiB, random_bytes


def test_sigterm_inside_a_body_bridge_put_stops_the_upload(small_engine: Engine) -> None:
    """The signal lands while the event loop is inside `queue.put` to an upload's body bridge
    (its lock held). Interrupting that upload takes the same lock: run from the handler, it
    deadlocked the main thread on itself and the server never stopped (CI: "shutdown took
    35.0s"). The handler must return at once and the upload still be told to stop."""
    settings = small_engine.core.settings
    app = create_app(settings, engine=small_engine)
    app.state.services = Services(settings=settings, engine=small_engine)  # as lifespan does
    server = _Server(uvicorn.Config(app))
    up = small_engine.uploads.create(length=1024 * KiB)
    outcome: list[BaseException | None] = []
    release = threading.Event()

    async def scenario() -> bool:
        bridge = BodyBridge(asyncio.get_running_loop())

        def source() -> Iterator[bytes]:
            yield random_bytes(64 * KiB, seed=1)
            release.wait(10)  # a client that has gone quiet
            yield random_bytes(64 * KiB, seed=2)

        def append() -> None:
            try:
                small_engine.uploads.append(
                    up.upload_id, 0, source(), interrupt=bridge.interrupt_now
                )
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)

        writer = threading.Thread(target=append)
        writer.start()
        while not small_engine.uploads._active:  # the append is registered
            await asyncio.sleep(0.01)
        with bridge._queue.mutex:  # the loop, inside queue.put, when the signal comes
            server.handle_exit(signal.SIGTERM, None)
        await asyncio.sleep(0.1)  # the loop runs the stop
        interrupted = bridge._queue.get(timeout=5) is not None
        release.set()
        await asyncio.to_thread(writer.join, 10)
        return interrupted

    result: list[bool] = []
    runner = threading.Thread(target=lambda: result.append(asyncio.run(scenario())), daemon=True)
    runner.start()
    runner.join(20)
    release.set()
    assert not runner.is_alive(), "handle_exit deadlocked on the lock its own thread held"
    assert result == [True] and server.should_exit
    assert len(outcome) == 1 and isinstance(outcome[0], TransferInterrupted), outcome
    assert small_engine.uploads.get(up.upload_id).offset == 64 * KiB  # what arrived is kept
