"""What a settings error says beside the pydantic message: what the value may be, and which
setting a misspelt name meant (edgestore/config.py's messages)."""

from __future__ import annotations

import difflib
from typing import Any

from edgestore.units import DURATION_FORMS, SIZE_FORMS, WHOLE_DURATION_FORMS

# Errors about a number or a choice, whose value is worth repeating (never a secret).
PARSING = {
    "int_parsing",
    "int_from_float",
    "float_parsing",
    "bool_parsing",
    "size_parsing",  # edgestore.units': a size or a duration it could not read
    "duration_parsing",
    "whole_duration_parsing",
}
# What a whole-second setting (units.WholeSeconds) is refused with: pydantic's for an int from a
# plain number (`1.5`), units' for a string with units (`1500ms`). Its hint lists no `500ms`.
WHOLE = {"int_parsing", "int_from_float", "whole_duration_parsing"}
BOUNDS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}


def allowed(key: str, kind: str) -> str:
    """What a value of `key` may be, for a value of the wrong `kind` ('' if nothing to add)."""
    if kind == "bool_parsing":
        return "true or false; also yes/no, on/off, 1/0"
    if kind not in PARSING:
        return ""
    if kind.endswith("duration_parsing") or key.endswith(("_seconds", "_timeout")):
        return WHOLE_DURATION_FORMS if kind in WHOLE else DURATION_FORMS
    if kind == "size_parsing" or "_bytes" in key or key.endswith(("_size", "_bandwidth")):
        return SIZE_FORMS
    return SIZE_FORMS if key.startswith("bucket_quotas.") else ""


def did_you_mean(name: str, known: Any, prefix: str) -> str:
    """A hint naming the setting `name` most likely meant ('' if none is close)."""
    close = difflib.get_close_matches(name.lower(), list(known), n=1, cutoff=0.75)
    return f"did you mean {prefix}{close[0].upper() if prefix else close[0]}?" if close else ""
