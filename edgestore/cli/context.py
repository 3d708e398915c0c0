"""What the global options hand to every command: how to load settings and open the store."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgestore.config import Settings, load_settings
from edgestore.engine import Engine


@dataclass
class CliState:
    config_file: Path | None = None
    home: Path | None = None

    def settings(self, **overrides: Any) -> Settings:
        return load_settings(self.config_file, home=self.home, **overrides)

    def engine(self, **kwargs: Any) -> Engine:
        return Engine.open(self.settings(), **kwargs)
