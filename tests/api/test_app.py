"""The server's background upkeep, run in-process for one round."""

from __future__ import annotations

import asyncio

import pytest

from edgestore.api import app as app_module
from edgestore.api.state import Services
from edgestore.buffers import AlignedPool
from edgestore.engine import Engine
from tests.conftest import SettingsFactory


def test_upkeep_gives_idle_buffers_back(
    make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Spare blocks kept for a busy store are unmapped once it has gone quiet."""
    monkeypatch.setattr(app_module, "POOL_IDLE_SECONDS", 0.0)
    settings = make_settings(maintenance_interval_seconds=1)
    pool = AlignedPool(idle_blocks=2)
    spare = pool.get(3 << 20)
    del spare
    assert pool.idle == 3 << 20

    async def one_round(svc: Services) -> None:
        task = asyncio.create_task(app_module.upkeep(svc))
        deadline = asyncio.get_running_loop().time() + 10
        while pool.idle and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        task.cancel()

    with Engine.open(settings) as engine:
        svc = Services(settings=settings, engine=engine)
        try:
            asyncio.run(one_round(svc))
        finally:
            svc.close()
    assert pool.idle == 0, "the upkeep left the idle block mapped"
