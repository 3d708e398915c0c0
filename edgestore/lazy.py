"""Names a package exports but loads on first use (PEP 562 module __getattr__).

The CLI's local commands import light submodules of edgestore.engine and edgestore.client
(option defaults, file paths); importing the package must not pull in SQLAlchemy, the whole
engine or httpx with them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from importlib import import_module
from typing import Any


def lazy_names(package: str, where: dict[str, str]) -> Callable[[str], Any]:
    """The `__getattr__` of `package`: each name in `where` imported from its module once."""

    def __getattr__(name: str) -> Any:
        if name not in where:  # a submodule (`from edgestore.engine import staging`) is next
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(where[name]), name)
        setattr(sys.modules[package], name, value)  # once: found directly from now on
        return value

    return __getattr__
