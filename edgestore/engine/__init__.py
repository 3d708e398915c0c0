"""The engine: the one core API the HTTP server and the CLI share.

with Engine.open(settings) as engine:
    version = engine.put(blocks, bucket="default", key="big.iso")
    for piece in engine.objects.read(version):
        ...

The names below load on first use (PEP 562): importing a light submodule such as
edgestore.engine.keys (the CLI's option defaults) must not pull in SQLAlchemy and the whole
engine with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgestore.lazy import lazy_names

if TYPE_CHECKING:
    from edgestore.engine.engine import Engine
    from edgestore.engine.objects import ObjectSelector
    from edgestore.metadata.objects import VersionInfo

__all__ = ["Engine", "ObjectSelector", "VersionInfo"]

_WHERE = {
    "Engine": "edgestore.engine.engine",
    "ObjectSelector": "edgestore.engine.objects",
    "VersionInfo": "edgestore.metadata.objects",
}


__getattr__ = lazy_names(__name__, _WHERE)
