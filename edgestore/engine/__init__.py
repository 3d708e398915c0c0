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

from importlib import import_module
from typing import TYPE_CHECKING, Any

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


def __getattr__(name: str) -> Any:
    if name not in _WHERE:  # a submodule (`from edgestore.engine import staging`) is found next
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(_WHERE[name]), name)
    globals()[name] = value  # once
    return value
