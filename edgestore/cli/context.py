"""What the global options hand to every command: how to load settings and open the store.

Settings (pydantic) and the engine (SQLAlchemy) load when a command asks for them, not when
the CLI starts: `--help` and the remote commands need neither."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgestore.config import Settings
    from edgestore.engine import Engine


@dataclass
class CliState:
    config_file: Path | None = None
    home: Path | None = None

    def settings(self, flags: dict[str, str] | None = None, **overrides: Any) -> Settings:
        """`flags`: the command-line flag of each override, which an error about its value
        names (the user gave `--port`, not EDGESTORE_PORT)."""
        from edgestore.config import load_settings

        flags = {"home": "--home", **(flags or {})}
        return load_settings(self.config_file, flags=flags, home=self.home, **overrides)

    def engine(self, **kwargs: Any) -> Engine:
        from edgestore.engine.engine import Engine

        return Engine.open(self.settings(), **kwargs)
