"""Pre-signed URLs: an HMAC-SHA256 grant to upload or download one object until a deadline,
and the per-upload token that lets a browser finish a tus upload begun with such a URL.

A grant is self-describing: its query parameters say what it grants (`es_action`,
`es_bucket`, `es_key`, `es_expires`, optional `es_max_size`, `es_content_type`, and
`es_key_id`: the API key that minted it, whose revocation voids it) and `es_signature` is the
HMAC of their canonical JSON under the store's secret (generated once and kept in the
database, so every node verifies what any node or the CLI signed). Because the parameters
travel in clear, a refusal can say exactly why: malformed or tampered, expired, or used for
something it does not grant.

Upload grants are tus endpoints: POST them to create an upload. The created upload's
Location carries `es_upload_token`, an HMAC of the upload id, which tus clients (they PATCH
the Location verbatim) send back on every PATCH/HEAD/DELETE of that upload and nothing else.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from edgestore.errors import SignatureExpired, SignatureInvalid

VERSION = "edgestore-presign-v1"
ACTION_UPLOAD, ACTION_DOWNLOAD = "upload", "download"
P_ACTION, P_BUCKET, P_KEY = "es_action", "es_bucket", "es_key"
P_EXPIRES, P_MAX_SIZE, P_CONTENT_TYPE = "es_expires", "es_max_size", "es_content_type"
P_SIGNATURE, P_UPLOAD_TOKEN, P_KEY_ID = "es_signature", "es_upload_token", "es_key_id"
GRANT_PARAMS = (
    P_ACTION,
    P_BUCKET,
    P_KEY,
    P_EXPIRES,
    P_MAX_SIZE,
    P_CONTENT_TYPE,
    P_KEY_ID,
    P_SIGNATURE,
)
SECRET_PARAMS = (P_SIGNATURE, P_UPLOAD_TOKEN)  # never logged
SECRET_NAME = "presign_hmac_sha256"
UPLOAD_PATH = "/files/"
LARGEST_SIZE = 2**63 - 1  # es_max_size is read back as at most 19 digits (a 64-bit size)


@dataclass(frozen=True, slots=True)
class Grant:
    action: str
    bucket: str
    key: str
    expires: int  # Unix seconds
    max_size: int | None = None
    content_type: str | None = None
    key_id: str | None = None  # minted through the API by this key: void once it is revoked

    def canonical(self) -> bytes:
        """Unambiguous bytes to sign: a JSON array, so no field can bleed into the next
        (the key id only when there is one, so URLs signed by the store keep their form)."""
        fields = [VERSION, self.action, self.bucket, self.key, self.expires]
        fields += [self.max_size, self.content_type]
        if self.key_id is not None:
            fields.append(self.key_id)
        return json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode()

    def describe(self) -> str:
        return f"{self.action} of {self.bucket}/{self.key}"


def _mac(secret: bytes, message: bytes) -> str:
    digest = hmac.new(secret, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def sign(secret: bytes, grant: Grant) -> str:
    return _mac(secret, grant.canonical())


def grant_query(secret: bytes, grant: Grant) -> dict[str, str]:
    q = {P_ACTION: grant.action, P_BUCKET: grant.bucket, P_KEY: grant.key}
    q[P_EXPIRES] = str(grant.expires)
    if grant.max_size is not None:
        q[P_MAX_SIZE] = str(grant.max_size)
    if grant.content_type is not None:
        q[P_CONTENT_TYPE] = grant.content_type
    if grant.key_id is not None:
        q[P_KEY_ID] = grant.key_id
    q[P_SIGNATURE] = sign(secret, grant)
    return q


def grant_path(grant: Grant) -> str:
    """Where a grant is used: the tus endpoint, or the object's download URL."""
    if grant.action == ACTION_UPLOAD:
        return UPLOAD_PATH
    return f"/objects/{quote(grant.bucket, safe='')}/{quote(grant.key, safe='/')}"


def presigned_url(base: str, secret: bytes, grant: Grant) -> str:
    return f"{base.rstrip('/')}{grant_path(grant)}?{urlencode(grant_query(secret, grant))}"


def carries_grant(query: Mapping[str, list[str]]) -> bool:
    return P_SIGNATURE in query


def _one(query: Mapping[str, list[str]], name: str, required: bool = True) -> str | None:
    values = query.get(name)
    if not values:
        if required:
            raise SignatureInvalid(f"pre-signed URL is malformed: {name} is missing")
        return None
    if len(values) > 1:
        raise SignatureInvalid(f"pre-signed URL is malformed: {name} appears twice")
    return values[0]


def _int(name: str, text: str | None) -> int | None:
    if text is None:
        return None
    # ASCII only: str.isdigit() also says yes to "²" or "٣", which int() refuses or reads.
    if not (text.isascii() and text.isdigit()) or len(text) > 19:
        raise SignatureInvalid(f"pre-signed URL is malformed: {name} is not a number")
    return int(text)


def verify_grant(secret: bytes, query: Mapping[str, list[str]], now: float) -> Grant:
    """The grant a query carries; SignatureInvalid (tampered) or SignatureExpired → 403."""
    action = _one(query, P_ACTION)
    if action not in (ACTION_UPLOAD, ACTION_DOWNLOAD):
        raise SignatureInvalid(f"pre-signed URL is malformed: {P_ACTION} must be upload/download")
    grant = Grant(
        action=action,
        bucket=_one(query, P_BUCKET) or "",
        key=_one(query, P_KEY) or "",
        expires=_int(P_EXPIRES, _one(query, P_EXPIRES)) or 0,
        max_size=_int(P_MAX_SIZE, _one(query, P_MAX_SIZE, required=False)),
        content_type=_one(query, P_CONTENT_TYPE, required=False),
        key_id=_one(query, P_KEY_ID, required=False),
    )
    given = _one(query, P_SIGNATURE) or ""
    if not hmac.compare_digest(given.encode(), sign(secret, grant).encode()):
        raise SignatureInvalid(
            "pre-signed URL signature does not match: the URL was altered after signing, "
            "or signed for another store"
        )
    if grant.expires <= now:
        raise SignatureExpired(
            f"pre-signed URL expired at {_utc(grant.expires)} ({int(now - grant.expires)} s ago)"
        )
    return grant


def upload_token(secret: bytes, upload_id: str, expires: int, key_id: str | None = None) -> str:
    """`expires.mac`, or `expires.key_id.mac` for an upload begun with a URL a key minted
    (revoking the key stops the upload too)."""
    fields: list[object] = [VERSION, "upload", upload_id, expires]
    if key_id is None:
        return f"{expires}.{_mac(secret, json.dumps(fields).encode())}"
    return f"{expires}.{key_id}.{_mac(secret, json.dumps([*fields, key_id]).encode())}"


def verify_upload_token(secret: bytes, upload_id: str, token: str, now: float) -> str | None:
    """The id of the key behind `token` (None: signed by the store) if it was issued for
    this upload and has not expired; else 403."""
    expires_text, *rest = token.split(".")
    key_id = rest[0] if len(rest) == 2 else None
    expires = _int(P_UPLOAD_TOKEN, expires_text) if expires_text else None
    if expires is None or not hmac.compare_digest(
        token.encode(), upload_token(secret, upload_id, expires, key_id).encode()
    ):
        raise SignatureInvalid(
            f"{P_UPLOAD_TOKEN} does not match upload {upload_id}: it was altered, or issued "
            "for another upload"
        )
    if expires <= now:
        raise SignatureExpired(f"{P_UPLOAD_TOKEN} expired at {_utc(expires)}")
    return key_id


def with_query(url: str, name: str, value: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{urlencode({name: value})}"


def _utc(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


class Signer:
    """The store's signing secret, loaded at start (api/security.py), and what it signs."""

    def __init__(self) -> None:
        self.secret = b""

    def url(self, base: str, grant: Grant) -> str:
        return presigned_url(base, self._key(), grant)

    def verify(self, query: Mapping[str, list[str]]) -> Grant:
        return verify_grant(self._key(), query, time.time())

    def upload_token(self, upload_id: str, expires: int, key_id: str | None = None) -> str:
        return upload_token(self._key(), upload_id, expires, key_id)

    def verify_upload_token(
        self, upload_id: str, token: str, *, expired_ok: bool = False
    ) -> str | None:
        """`expired_ok`: the upload is still open, and its own expiry is what counts."""
        return verify_upload_token(self._key(), upload_id, token, 0 if expired_ok else time.time())

    def _key(self) -> bytes:
        if not self.secret:
            raise RuntimeError("the signing secret is loaded at start-up; the app has not started")
        return self.secret


__all__ = ["GRANT_PARAMS", "SECRET_NAME", "SECRET_PARAMS", "Grant", "Signer"]
