"""A write lease kept alive on a timer while its writer lives, for a local `put` whose input
may stall (a pipe): no one else can take its upload over, so nothing is gained by a lapse."""

from __future__ import annotations

import contextlib
import logging
import threading
from contextlib import AbstractContextManager
from types import TracebackType

from sqlalchemy.engine import Connection

from edgestore.metadata import uploads as upload_rows
from edgestore.metadata.db import Database
from edgestore.metadata.uploads import UploadRecord

log = logging.getLogger(__name__)


class LeaseKeeper:
    """Renews an upload's write lease every third of its length while the block runs, bytes
    or not. An append renews it only as bytes arrive (a tus client gone quiet lets another
    request take over); with that alone, a `put -` whose pipe stalled past the lease was
    taken by `gc --grace 0` for a dead put: its upload expired, its chunks collected.
    """

    def __init__(self, db: Database, upload_id: str, owner: str, lease: float) -> None:
        self._db, self._upload_id, self._owner, self._lease = db, upload_id, owner, lease
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edgestore-lease", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        held = True

        def renew(conn: Connection) -> None:
            nonlocal held
            held = upload_rows.renew_lock(conn, self._upload_id, self._owner, self._lease)

        while held and not self._stop.wait(self._lease / 3):
            try:
                self._db.try_write(renew)  # the lock busy: the next tick tries again
            except Exception as exc:  # the database unreachable: the same, and said so
                log.warning("could not renew the lease of upload %s: %s", self._upload_id, exc)
        # Not held: taken over or expired; the append finds out at its next renewal or
        # checkpoint, and fails.


def kept_alive(
    db: Database, upload: UploadRecord, owner: str, lease: float
) -> AbstractContextManager[object]:
    """While the block runs: a local put's lease kept alive (it lives with its process); any
    other upload's left to lapse when its client goes quiet, so another request may take over."""
    if upload.kind != "local":
        return contextlib.nullcontext()
    return LeaseKeeper(db, upload.upload_id, owner, lease)
