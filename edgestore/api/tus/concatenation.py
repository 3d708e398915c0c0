"""Upload-Concat (concatenation extension): partial uploads, and finals made of them.

A final upload is a new object version whose manifest is the partials' manifests end to end:
no byte is read or copied, so tus-js-client's parallelUploads costs no extra I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgestore.api.tus.common import upload_id_from_url
from edgestore.errors import InvalidInput


@dataclass(frozen=True)
class Concat:
    partial: bool
    parts: list[str]  # upload ids of a final upload's partials, in order
    urls: list[str]  # those partials as the client named them (echoed as received)


def parse_concat(header: str | None) -> Concat | None:
    if header is None:
        return None
    value = header.strip()
    if value == "partial":
        return Concat(True, [], [])
    if value.startswith("final;"):
        urls = value[len("final;") :].split()
        if not urls:
            raise InvalidInput("Upload-Concat final names no partial uploads")
        return Concat(False, [upload_id_from_url(u) for u in urls], urls)
    raise InvalidInput(f"Upload-Concat must be 'partial' or 'final;<urls>', got {value!r}")
