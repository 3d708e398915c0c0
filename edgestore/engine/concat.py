"""tus concatenation: a final upload made of partial uploads' parts, end to end, no byte
copied; a final whose partials are still receiving waits, open, for the last of them.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from sqlalchemy.engine import Connection

from edgestore.engine.core import EngineCore
from edgestore.engine.keys import DEFAULT_BUCKET, validate_bucket, validate_key, version_for
from edgestore.errors import InvalidInput, QuotaExceeded, TooLarge, UploadNotFound
from edgestore.metadata import concat as concat_rows
from edgestore.metadata import objects as object_rows
from edgestore.metadata import quotas
from edgestore.metadata import uploads as upload_rows
from edgestore.metadata.clock import now
from edgestore.metadata.objects import NewVersion
from edgestore.metadata.uploads import UploadRecord

log = logging.getLogger(__name__)

# Partials one final may name (tus-js-client's parallelUploads uses a handful). Each partial
# completing checks the final's others, and each is locked when the final is created: with
# thousands, every append of every partial would pay for all of them.
MAX_PARTIALS = 1000


def final_length(core: EngineCore, rec: UploadRecord) -> int | None:
    """A final upload's length: the stored one, or, while it waits for its partials, their
    sum once each partial's length is known (None until then)."""
    if rec.length is not None or rec.concat_of is None:
        return rec.length
    with core.db.read() as conn:
        try:
            return known_total([upload_rows.get(conn, pid).length for pid in rec.concat_of])
        except UploadNotFound:
            return None


def known_total(lengths: list[int | None]) -> int | None:
    """The sum of the partials' lengths; None while one of them is deferred."""
    return None if None in lengths else sum(n for n in lengths if n is not None)


def concatenate(
    core: EngineCore,
    partial_ids: list[str],
    *,
    bucket: str | None,
    key: str | None,
    content_type: str | None,
    filename: str | None,
    user_metadata: dict[str, Any] | None,
    partial_urls: list[str] | None = None,
) -> UploadRecord:
    """A final upload made of partial uploads, in order: no byte is copied.

    `partial_urls`: how the client named the partials, kept to be echoed (tus).

    The new version's manifest is the partials' manifests end to end; the partials keep
    their own references until they expire, so a retried final is still possible. If some
    partials are still receiving bytes (tus concatenation-unfinished), the final upload
    waits, open, and becomes a version in the transaction that completes its last partial.

    The same request again (a client retrying a POST whose answer it lost) returns the final
    it made, while that one still waits or its version is still its key's latest: a second
    version would hold the same bytes and metadata.
    """
    if not partial_ids:
        raise InvalidInput("a final upload needs at least one partial upload")
    if len(partial_ids) > MAX_PARTIALS:
        raise InvalidInput(
            f"a final upload names {len(partial_ids)} partial uploads, more than the "
            f"{MAX_PARTIALS} allowed: make them fewer and larger"
        )
    if bucket is not None:
        validate_bucket(bucket)
    if key is not None:
        validate_key(key)
    settings = core.settings
    with core.db.write() as conn:
        # Locked: a partial completing now either committed before (seen complete here)
        # or waits for this transaction, and then finds the final waiting for it. Locked in
        # one order (not the one named): two finals naming the same partials in different
        # orders would each hold one and wait for the other's (a deadlock on PostgreSQL).
        locked = {
            pid: upload_rows.get_open(conn, pid, for_update=True)
            for pid in sorted(set(partial_ids))
        }
        parts = [locked[pid] for pid in partial_ids]
        known = known_total([p.length for p in parts])
        for part in parts:
            if not part.is_partial:
                raise InvalidInput(f"upload {part.upload_id} is not a partial upload")
        request = concat_rows.request_key(
            partial_ids,
            bucket=bucket,
            key=key,
            content_type=content_type,
            filename=filename,
            user_metadata=user_metadata,
        )
        earlier = _same_final(conn, request)
        if earlier is not None:  # before the quota: the first one counts already
            return earlier
        if known is not None:
            if known > settings.max_upload_size:
                raise TooLarge(f"concatenated length {known} exceeds the maximum")
            quotas.check_bucket(conn, settings, bucket, known, replacing=partial_ids)
        finished = all(p.state == upload_rows.COMPLETE for p in parts)
        uid = upload_rows.create(
            conn,
            kind="tus",
            bucket=bucket,
            key=key,
            length=known,
            expires_at=None if finished else now(conn) + settings.upload_expiry_seconds,
            hash_state=None,
            content_type=content_type,
            filename=filename,
            user_metadata=user_metadata,
            concat_of=list(partial_ids),
            concat_urls=partial_urls,
            concat_key=request,
        )
        if finished and not finish_final(core, conn, upload_rows.get(conn, uid)):
            raise AssertionError("partial uploads locked complete are no longer complete")
        return upload_rows.get(conn, uid)


def _same_final(conn: Connection, request: str) -> UploadRecord | None:
    """The final upload an identical request made, if it stands for what a new one would
    be: still waiting for its partials, or complete with its version still the latest of
    its key (not deleted, nothing uploaded over it)."""
    for fid in concat_rows.finals_by_request(conn, request):
        final = upload_rows.get(conn, fid)
        if final.state == upload_rows.OPEN:
            if final.expires_at is None or final.expires_at >= now(conn):
                return final
        elif final.state == upload_rows.COMPLETE and final.version_id is not None:
            made = object_rows.get_version(conn, final.version_id)
            if made is not None:
                latest = object_rows.find_version(conn, object_id=made.object_id)
                if latest is not None and latest.version_id == made.version_id:
                    return final
    return None


def complete_waiting_finals(
    core: EngineCore, conn: Connection, partial_id: str, uncounted: Counter[str]
) -> None:
    """A partial upload just completed: make the final uploads that waited only for it into
    their versions, in the same transaction. `uncounted`: the references of the partial's
    last parts, counted here in the one pass that takes the finals' (so every chunk row is
    locked in chunk id order; then the object rows, then the totals rows, by bucket)."""
    finals = [  # locked in id order, as terminating or expiring the partial locks them
        upload_rows.get(conn, fid, for_update=True)
        for fid in concat_rows.pending_finals(conn, partial_id)
    ]
    ready: list[tuple[UploadRecord, NewVersion]] = []
    # By bucket: a quota check locks the bucket (PostgreSQL), in the order of the totals.
    for final in sorted(finals, key=lambda f: (f.bucket or DEFAULT_BUCKET, f.upload_id)):
        if final.state != upload_rows.OPEN or final.concat_of is None:
            continue
        if concat_rows.all_complete(conn, final.concat_of):
            try:
                new = final_version(core, conn, final)
            except (TooLarge, QuotaExceeded) as exc:  # before any write: the partial lands
                log.warning("final upload %s cannot complete: %s", final.upload_id, exc)
                upload_rows.release_data(conn, final.upload_id, upload_rows.TERMINATED)
                continue
            if new is not None:
                ready.append((final, new))
    made = object_rows.create_versions(
        core.db, conn, [new for _, new in ready], take_refs=True, ref_change=uncounted
    )
    for (final, _), version_id in zip(ready, made, strict=True):
        upload_rows.mark_complete(conn, final.upload_id, version_id)


def abandon_waiting_finals(
    conn: Connection, partial_id: str, state: str = upload_rows.TERMINATED
) -> None:
    """A partial upload is being terminated or expired: the final uploads waiting for it can
    never complete (its bytes are released), so they end now (410, in `state`), not when
    they expire (pushed back for as long as their other partials go on)."""
    for fid in concat_rows.pending_finals(conn, partial_id):
        if upload_rows.get(conn, fid, for_update=True).state == upload_rows.OPEN:
            upload_rows.release_data(conn, fid, state)


def finish_final(core: EngineCore, conn: Connection, final: UploadRecord) -> bool:
    """Make a final upload whose partials are all complete into its object version; False
    (and nothing written) if one of them is no longer complete (terminated or expired by
    another node meanwhile)."""
    new = final_version(core, conn, final)
    if new is None:
        return False
    (version_id,) = object_rows.create_versions(core.db, conn, [new], take_refs=True)
    upload_rows.mark_complete(conn, final.upload_id, version_id)
    return True


def final_version(core: EngineCore, conn: Connection, final: UploadRecord) -> NewVersion | None:
    """The version a final upload whose partials are all complete becomes, its length set;
    None (and nothing written) if one of them is no longer complete. TooLarge or
    QuotaExceeded (nothing written) if it may not be made."""
    assert final.concat_of is not None
    sources = concat_rows.complete_parts(conn, final.concat_of)
    if sources is None:
        return None
    entries: list[tuple[str, int, int]] = []
    total = 0
    for pid in final.concat_of:
        size, parts = sources[pid]
        for cid, off, length in parts:
            entries.append((cid, total + off, length))
        total += size
    if total > core.settings.max_upload_size:
        raise TooLarge(f"concatenated length {total} exceeds the maximum")
    if final.length is None:  # created before its size was known: nothing was reserved
        # (its partials counted their bytes instead, which it now takes over)
        quotas.check_bucket(conn, core.settings, final.bucket, total, replacing=final.concat_of)
    concat_rows.set_concatenated(conn, final.upload_id, total)
    # SHA-256 states cannot be joined: the maintenance task fills the digest in.
    return version_for(final, entries, None)
