"""Authentication and authorization as plain ASGI middleware, in front of every route.

Each request gets an Identity: an API key (`Authorization: Bearer <key>`), a pre-signed
grant (`es_signature` in the query), an upload token (`es_upload_token`, for one tus upload),
or anyone when auth is off (loopback only). api/policy.py says what each route needs; this
module checks it, binds pre-signed uploads to what was signed, and answers 401/403 through
the one error table. Plain ASGI, like api/middleware.py, so upload bodies stream untouched.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import time
from urllib.parse import parse_qs, urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edgestore.api import direct, policy, presign, protocol
from edgestore.api.errors import error_response
from edgestore.api.identity import KEY, OPEN, PRESIGNED, SCOPES, UPLOAD_TOKEN, Identity, Target
from edgestore.api.keyring import CHALLENGE, KeyRing
from edgestore.api.limits import Limiter, client_of
from edgestore.api.presign import Grant, Signer
from edgestore.api.revocation import BODY_METHODS, RevocationWatch
from edgestore.api.state import Services
from edgestore.api.tus.common import upload_id_from_url
from edgestore.api.tus.concatenation import Concat, parse_concat
from edgestore.api.tus.creation import object_key
from edgestore.api.tus.headers import UploadMetadata, encode_metadata, parse_metadata, parse_size
from edgestore.api.tus.ietf import INTEROP_HEADER
from edgestore.api.tus.structured import field_value, non_negative_integer_item
from edgestore.config import Settings
from edgestore.engine.concat import known_total
from edgestore.engine.keys import DEFAULT_BUCKET
from edgestore.errors import (
    ConfigError,
    EdgestoreError,
    InvalidInput,
    OutOfScope,
    RateLimited,
    SignatureExpired,
    TooLarge,
    Unauthorized,
)

UPLOAD_TOKEN_SLACK = 3600  # an upload token outlives its upload's expiry by this much
MAX_JSON_BODY = 64 * 1024  # JSON bodies read to find their object (limited keys only)
OPEN_IDENTITY = Identity(OPEN, frozenset(SCOPES))


def check_bind(settings: Settings) -> None:
    """Refuse to serve without auth anywhere but loopback: a typo must not open a store."""
    if settings.auth_enabled:
        return
    host = settings.host.strip("[]")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ConfigError(
            f"--no-auth (auth_enabled=false) only listens on loopback (127.0.0.0/8, ::1, "
            f"localhost), not {settings.host!r}: anyone who can reach it could read and write "
            "everything. Create a key with `edgestore keys create` instead."
        )


def refuse_nul(scope: Scope) -> None:
    """No bucket, key, id or query parameter of this API may hold a NUL byte, and PostgreSQL
    cannot even compare one (a query would fail with 500): refuse it at the door."""
    if "\x00" in scope["path"] or b"%00" in scope.get("query_string", b""):
        raise InvalidInput("NUL bytes are not allowed in paths or query parameters")


def effective_method(scope: Scope) -> str:
    """The method a request stands for: tus lets clients that cannot send PATCH or DELETE
    POST with X-HTTP-Method-Override, and the override is what must be authorized."""
    method: str = scope["method"]
    if method == "POST":
        override = Headers(scope=scope).get("x-http-method-override", "").strip().upper()
        if override in ("PATCH", "DELETE"):  # any other value: authorized as the POST it is
            return override
    return method


class AccessControl:
    """The ASGI middleware: identify, authorize, bind, then call the app."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        settings: Settings,
        keys: KeyRing,
        signer: Signer,
        limiter: Limiter | None = None,
    ) -> None:
        self.app = app
        self.settings = settings
        self.keys = keys
        self.signer = signer
        self.limiter = limiter
        self.rules = policy.rules(settings.metrics_public)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            identity, scope, receive, send = await self._admit(scope, receive, send)
            refuse_nul(scope)
        except EdgestoreError as exc:
            refusal = await self._counted(scope, exc)
            headers = refusal.details.get("headers") if isinstance(refusal, Unauthorized) else None
            await error_response(refusal, headers)(scope, receive, send)
            return
        # Into the request's one state dict, not a copy: what a route puts there (its error
        # headers) must still be seen by the middleware that answers its unexpected errors.
        scope.setdefault("state", {})["identity"] = identity
        key_id = identity.revocable
        if key_id is None or scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        watch = RevocationWatch(lambda: self._still_active(identity, key_id))
        task = asyncio.ensure_future(watch.run())
        try:
            await self.app(watch.scope(scope), watch.receive(receive), send)
        finally:
            task.cancel()

    async def _still_active(self, identity: Identity, key_id: str) -> None:
        """Unauthorized once the key behind a streaming request has been revoked."""
        if identity.kind == KEY:
            try:
                await self.keys.require_active(key_id, "this request")
            except Unauthorized:
                raise Unauthorized(f"API key {key_id} was revoked") from None
        else:
            await self.keys.require_active(key_id, "the pre-signed URL this upload began with")

    async def _counted(self, scope: Scope, refusal: EdgestoreError) -> EdgestoreError:
        """A refused request never reaches the limits (api/limits.py), so it is counted here,
        against its address: else unknown keys and forged URLs could be tried without limit
        (each unknown key costs a database query). Over the limit, the answer is the 429."""
        if self.limiter is None:
            return refusal
        try:
            await self.limiter.check_request(client_of(scope))
        except RateLimited as limited:
            return limited
        return refusal

    async def _admit(
        self, scope: Scope, receive: Receive, send: Send
    ) -> tuple[Identity, Scope, Receive, Send]:
        method, path = effective_method(scope), scope["path"]
        rule, m = policy.match(self.rules, method, path)
        if rule.is_open:
            return OPEN_IDENTITY, scope, receive, send
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        authorization = Headers(scope=scope).get("authorization")
        if authorization is not None and self.settings.auth_enabled:
            identity = await self._bearer(authorization)
        elif presign.carries_grant(query):
            grant = self.signer.verify(query)
            if grant.key_id is not None:
                await self.keys.require_active(grant.key_id, "this pre-signed URL")
            scope = await self._bind_grant(scope, grant, method, path)
            scope, send = self._issue_upload_tokens(scope, send, grant.key_id)
            return Identity(PRESIGNED, minted_by=grant.key_id), scope, receive, send
        elif presign.P_UPLOAD_TOKEN in query:
            key_id = await self._check_upload_token(scope, query, method, path)
            return Identity(UPLOAD_TOKEN, minted_by=key_id), scope, receive, send
        elif not self.settings.auth_enabled:
            return OPEN_IDENTITY, scope, receive, send
        else:
            raise Unauthorized(
                "credentials required: send 'Authorization: Bearer <key>' or use a pre-signed URL",
                headers=CHALLENGE,
            )
        policy.authorize(identity, rule)
        if identity.restricted:
            if rule.target == policy.JSON_BODY:
                scope = direct.disallow(scope)
                receive = await _check_json_target(receive, identity)
            else:
                scope = await self._check_target(scope, identity, rule, m, query)
        return identity, scope, receive, send

    async def _bearer(self, authorization: str) -> Identity:
        scheme, _, secret = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise Unauthorized("use 'Authorization: Bearer <key>'", headers=CHALLENGE)
        key = await self.keys.verify(secret.strip())
        return Identity(KEY, key.scopes, key.key_id, key.name, key.bucket, key.prefix)

    async def _check_target(
        self,
        scope: Scope,
        identity: Identity,
        rule: policy.Rule,
        m: re.Match[str] | None,
        query: dict[str, list[str]],
    ) -> Scope:
        svc: Services = scope["app"].state.services
        if rule.target == policy.CREATION:
            return await _bind_key_creation(scope, identity, svc)
        resolved = await policy.target_of(rule, m, query, identity, svc)
        if not resolved.skip:
            identity.require_target(resolved.target, resolved.shown)
        await policy.bind(resolved.claims, identity, svc)  # let through: nothing refuses it now
        if resolved.query_string is not None:
            scope = {**scope, "query_string": resolved.query_string}
        return scope

    # --- pre-signed grants and upload tokens --------------------------------------------------

    async def _bind_grant(self, scope: Scope, grant: Grant, method: str, path: str) -> Scope:
        if grant.action == presign.ACTION_DOWNLOAD:
            wanted = f"/objects/{grant.bucket}/{grant.key}"
            if method in ("GET", "HEAD") and path == wanted:
                return scope
            raise OutOfScope(f"this pre-signed URL grants GET/HEAD {wanted}, not {method} {path}")
        if method == "OPTIONS" and path in ("/files", "/files/"):
            return scope
        if method != "POST" or path not in ("/files", "/files/"):
            raise OutOfScope(
                f"this pre-signed URL grants creating a tus upload (POST {presign.UPLOAD_PATH}) "
                f"of {grant.bucket}/{grant.key}, not {method} {path}"
            )
        headers = Headers(scope=scope)
        concat = _concat(headers)
        length = _declared_length(headers)
        if concat is not None and not concat.partial:  # a final upload: check the partials
            length = await self._partials_length(scope, headers)
        if grant.max_size is not None:
            if length is None and concat is not None and not concat.partial:
                raise OutOfScope(
                    f"this pre-signed URL limits the upload to {grant.max_size} bytes: a "
                    "final upload's partials must declare their Upload-Length first"
                )
            if length is None:
                raise OutOfScope(
                    f"this pre-signed URL limits the upload to {grant.max_size} bytes: "
                    "send Upload-Length (deferred length is not allowed)"
                )
            if length > grant.max_size:
                raise TooLarge(
                    f"Upload-Length {length} is above the {grant.max_size} bytes this "
                    "pre-signed URL allows"
                )
        if concat is not None and concat.partial:
            # A partial belongs to no object (the final is bound below), but counts in the
            # bucket it is for (quotas): the signed one.
            return _bind_grant_creation(scope, grant, fields=("bucket",))
        return _bind_grant_creation(scope, grant)

    async def _partials_length(self, scope: Scope, headers: Headers) -> int | None:
        """The final upload's length (None while a partial's length is deferred); each
        partial must carry its upload token, proving it was created with a pre-signed URL
        too."""
        urls = headers.get("upload-concat", "").strip()[len("final;") :].split()
        svc: Services = scope["app"].state.services
        lengths: list[int | None] = []
        for url in urls:
            upload_id = upload_id_from_url(url)
            tokens = parse_qs(urlsplit(url).query).get(presign.P_UPLOAD_TOKEN)
            if not tokens:
                raise OutOfScope(
                    f"partial upload {upload_id} was not created with a pre-signed URL "
                    f"(its URL carries no {presign.P_UPLOAD_TOKEN})"
                )
            await self._check_signer(self.signer.verify_upload_token(upload_id, tokens[0]))
            rec = await asyncio.to_thread(svc.engine.uploads.get, upload_id)
            lengths.append(rec.length)  # None: concatenation-unfinished, it may still grow
        return known_total(lengths)

    def _issue_upload_tokens(
        self, scope: Scope, send: Send, key_id: str | None
    ) -> tuple[Scope, Send]:
        """Give the Location of an upload created with a grant its own upload token: in the
        final response, and in an IETF creation's 104 interim response (written outside ASGI,
        api/protocol.py), where a client whose creation drops learns where to resume."""

        async def send_with_token(message: Message) -> None:
            # 201 normally; also errors that carry Location so the client can resume (IETF).
            if message["type"] == "http.response.start":
                headers = [
                    (name, self._with_token(value.decode("latin-1"), key_id).encode())
                    if name.lower() == b"location"
                    else (name, value)
                    for name, value in message.get("headers", [])
                ]
                message = {**message, "headers": headers}
            await send(message)

        extensions = scope.get("extensions") or {}
        interim = extensions.get(protocol.INFORMATIONAL)
        if interim is not None:

            def interim_with_token(status: int, fields: list[tuple[str, str]]) -> bool:
                fields = [
                    (name, self._with_token(value, key_id) if name.lower() == "location" else value)
                    for name, value in fields
                ]
                sent: bool = interim(status, fields)
                return sent

            scope = {
                **scope,
                "extensions": {**extensions, protocol.INFORMATIONAL: interim_with_token},
            }
        return scope, send_with_token

    def _with_token(self, url: str, key_id: str | None) -> str:
        """An upload URL carrying its upload token, valid as long as the upload can live
        (and its grant's key, if a key minted it, is not revoked)."""
        expires = int(time.time()) + self.settings.upload_expiry_seconds + UPLOAD_TOKEN_SLACK
        token = self.signer.upload_token(upload_id_from_url(url), expires, key_id)
        return presign.with_query(url, presign.P_UPLOAD_TOKEN, token)

    async def _check_signer(self, key_id: str | None) -> None:
        if key_id is not None:
            await self.keys.require_active(key_id, "the pre-signed URL this upload began with")

    async def _check_upload_token(
        self, scope: Scope, query: dict[str, list[str]], method: str, path: str
    ) -> str | None:
        """Pass (the id of the key behind the token, if any) or raise."""
        tokens = query[presign.P_UPLOAD_TOKEN]
        parts = path.rstrip("/").split("/")
        if len(tokens) != 1 or len(parts) != 3 or parts[1] != "files":
            raise OutOfScope(f"an upload URL's token only grants its own upload, not {path}")
        try:
            key_id = self.signer.verify_upload_token(parts[2], tokens[0])
        except SignatureExpired:
            # Progress pushes an upload's expiry back, past the token's: while the upload is
            # open, it is the upload's expiry that counts ("valid as long as it can live").
            svc: Services = scope["app"].state.services
            try:
                await asyncio.to_thread(svc.engine.uploads.get_open, parts[2])
            except EdgestoreError:
                raise SignatureExpired(
                    f"{presign.P_UPLOAD_TOKEN} has expired, and so has upload {parts[2]}"
                ) from None
            key_id = self.signer.verify_upload_token(parts[2], tokens[0], expired_ok=True)
        if method not in ("HEAD", "PATCH", "DELETE", "OPTIONS"):
            raise OutOfScope(
                f"an upload URL's token grants HEAD/PATCH/DELETE of upload {parts[2]}, not {method}"
            )
        await self._check_signer(key_id)
        return key_id


async def _check_json_target(receive: Receive, identity: Identity) -> Receive:
    """Read a small JSON body naming `bucket` and `key` (native session creation), check
    them, and hand the same body on to the route."""
    messages: list[Message] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            break
        size += len(message.get("body", b""))
        if size > MAX_JSON_BODY:
            raise TooLarge(f"a JSON request body is limited to {MAX_JSON_BODY} bytes")
        if not message.get("more_body", False):
            break
    try:
        doc = json.loads(b"".join(m.get("body", b"") for m in messages) or b"{}")
    except ValueError:
        doc = None  # the route answers 400
    if isinstance(doc, dict):
        bucket, key = doc.get("bucket") or DEFAULT_BUCKET, doc.get("key")
        if key is None and isinstance(doc.get("filename"), str):
            key = object_key(UploadMetadata({"filename": doc["filename"]}))
        if not isinstance(bucket, str) or not (key is None or isinstance(key, str)):
            bucket, key = "", None  # the route answers 400
        if key is None and identity.prefix:
            raise OutOfScope(
                f"{identity.describe()} may only write keys under {identity.prefix!r}: "
                "name the object with 'key'"
            )
        identity.require_target(Target(bucket, key or ""))

    async def replay() -> Message:
        return messages.pop(0) if messages else await receive()

    return replay


def _concat(headers: Headers) -> Concat | None:
    """Upload-Concat as the creation route will read it: the IETF draft has no concatenation
    and its creation ignores the header, so a draft `partial` is an ordinary upload, bound to
    its bucket and key like any other."""
    if INTEROP_HEADER in headers:
        return None
    return parse_concat(headers.get("upload-concat"))


def _declared_length(headers: Headers) -> int | None:
    """Upload-Length as the creation route will read it: a draft request's is a Structured
    Field (parameters allowed; malformed means absent), a tus one's a plain number."""
    if INTEROP_HEADER in headers:
        return non_negative_integer_item(field_value(headers, "upload-length"))
    return parse_size("Upload-Length", headers.get("upload-length"))


def _replace_metadata(scope: Scope, raw: dict[str, str | None]) -> Scope:
    headers = [(n, v) for n, v in scope["headers"] if n.lower() != b"upload-metadata"]
    headers.append((b"upload-metadata", encode_metadata(raw).encode("latin-1")))
    return {**scope, "headers": headers}


async def _bind_key_creation(scope: Scope, identity: Identity, svc: Services) -> Scope:
    """A limited key creates uploads inside its bucket (filled in when left out) and prefix.

    Partials belong to no object, but are recorded with the bucket they are for, and a final
    may only join partials of the key's bucket: else a key could read (or write, or delete)
    another tenant's partial upload by naming it. Unbound partials it joins are bound to the
    key's bucket last, once nothing here refuses the request."""
    headers = Headers(scope=scope)
    concat = _concat(headers)
    meta = parse_metadata(headers.get("upload-metadata"))
    raw = dict(meta.raw)
    if raw.get("bucket") is None and identity.bucket is not None:
        raw["bucket"] = identity.bucket
    if concat is not None and concat.partial:
        identity.require_target(policy.partial_target(raw.get("bucket"), identity))
        return scope if raw == meta.raw else _replace_metadata(scope, raw)
    claims: list[str] = []
    for upload_id in concat.parts if concat is not None else ():
        try:
            part = await asyncio.to_thread(svc.engine.uploads.get, upload_id)
        except EdgestoreError:
            continue  # the route answers 404
        if part.is_partial:
            bucket, binds = await policy.partial_bucket(part, identity, svc, binds=True)
            target = policy.partial_target(bucket, identity)
            if not identity.allows(target):
                raise OutOfScope(
                    f"{identity.describe()} is limited to {identity.limits()}; partial upload "
                    f"{upload_id} is not an upload of that bucket"
                )
            if binds and upload_id not in claims:  # a final may name a partial twice
                claims.append(upload_id)
    key = object_key(UploadMetadata(raw))
    if key is None and identity.prefix:
        raise OutOfScope(
            f"{identity.describe()} may only write keys under {identity.prefix!r}: name the "
            "object with Upload-Metadata 'key'"
        )
    identity.require_target(Target(raw.get("bucket") or DEFAULT_BUCKET, key or ""))
    await policy.bind(claims, identity, svc)
    return scope if raw == meta.raw else _replace_metadata(scope, raw)


def _bind_grant_creation(
    scope: Scope, grant: Grant, fields: tuple[str, ...] = ("bucket", "key", "content type")
) -> Scope:
    """An upload created with a grant gets the signed bucket, key and content type (those of
    `fields`): values the client sent must match them, missing ones are filled in."""
    meta = parse_metadata(Headers(scope=scope).get("upload-metadata"))
    raw = dict(meta.raw)
    for name, signed in (("bucket", grant.bucket), ("key", grant.key)):
        if name not in fields:
            continue
        if raw.get(name) not in (None, signed):
            raise OutOfScope(
                f"this pre-signed URL grants {grant.describe()}; Upload-Metadata {name} "
                f"{raw[name]!r} is outside it"
            )
        raw[name] = signed
    if grant.content_type is not None and "content type" in fields:
        for alias in ("filetype", "contentType", "type"):
            if raw.get(alias) not in (None, grant.content_type):
                raise OutOfScope(
                    f"this pre-signed URL is for content type {grant.content_type!r}, "
                    f"not {raw[alias]!r}"
                )
        raw["filetype"] = grant.content_type
    return scope if raw == meta.raw else _replace_metadata(scope, raw)
