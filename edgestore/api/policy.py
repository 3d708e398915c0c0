"""Which credential each route needs, by method and path pattern, and which object it touches.

Routes are matched by pattern rather than decorated one by one, so a router added later (the
native API under /v1) is guarded from its first commit: reads there need `read` or `upload`,
writes need `upload`. Anything no rule matches needs `admin`, so a forgotten route fails
closed. Keys limited to a bucket or prefix are let through only where the route's object is
known (`target`); add a rule with a target to open a new route to them.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlencode

from edgestore.api.identity import ADMIN, READ, UPLOAD, Identity, Target
from edgestore.api.state import Services
from edgestore.engine import ObjectSelector
from edgestore.engine.keys import DEFAULT_BUCKET
from edgestore.errors import EdgestoreError, OutOfScope
from edgestore.metadata import unbound
from edgestore.metadata.uploads import UploadRecord

OPEN = "open"  # no credential at all (load balancers' probes)
ANY = "any"  # any valid credential, whatever its scopes

# How a rule finds the object a request touches, for bucket/prefix-limited keys.
OBJECT_PATH = "object_path"  # /objects/{bucket}/{key}
LISTING = "listing"  # ?bucket=&prefix=
OBJECT_ID = "object_id"  # looked up
UPLOAD_ID = "upload_id"  # the upload (tus) or session (native) row's bucket and key
CREATION = "creation"  # tus Upload-Metadata (api/auth.py)
JSON_BODY = "json_body"  # "bucket" and "key" of a small JSON body (api/auth.py)
HANDLER = "handler"  # the route checks the request itself
NONE = "none"  # the route touches no object


@dataclass(frozen=True, slots=True)
class Rule:
    methods: frozenset[str]
    pattern: re.Pattern[str]
    needs: tuple[str, ...]  # any one of these scopes; (OPEN,) or (ANY,) for the special cases
    target: str | None = None  # how to find the object; None: unknown (limited keys refused)
    binds: bool = False  # may bind an unbound partial to the key's bucket (`partial_bucket`)

    @property
    def is_open(self) -> bool:
        return self.needs == (OPEN,)


def _rule(
    methods: str, pattern: str, *needs: str, target: str | None = None, binds: bool = False
) -> Rule:
    return Rule(frozenset(methods.split()), re.compile(pattern), needs, target, binds)


_SESSION = r"/v1/uploads/(?P<upload_id>[^/]+)"


def rules(metrics_public: bool) -> list[Rule]:
    """The route table, first match wins."""
    return [
        _rule("GET HEAD", r"/healthz|/readyz", OPEN),
        _rule("GET HEAD", r"/metrics", OPEN if metrics_public else ADMIN),
        _rule("GET HEAD", r"/openapi\.json|/docs|/docs/oauth2-redirect|/redoc", ANY),
        # tus (api/tus/): creating and writing uploads, and reading a finished one
        _rule("OPTIONS", r"/files(/[^/]*)?", ANY),
        _rule("POST", r"/files/?", UPLOAD, target=CREATION),
        _rule(
            "HEAD PATCH DELETE",
            r"/files/(?P<upload_id>[^/]+)",
            UPLOAD,
            target=UPLOAD_ID,
            binds=True,
        ),
        _rule("GET", r"/files/(?P<upload_id>[^/]+)", READ, target=UPLOAD_ID),
        # objects (api/objects.py): versions are history, so only admins delete them
        _rule("GET HEAD", r"/objects", READ, target=LISTING),
        _rule("GET HEAD", r"/objects/(?P<bucket>[^/]+)/(?P<key>.+)", READ, target=OBJECT_PATH),
        _rule("DELETE", r"/objects/(?P<bucket>[^/]+)/(?P<key>.+)", ADMIN, target=OBJECT_PATH),
        _rule("GET HEAD", r"/ids/(?P<object_id>[^/]+)(/info|/versions)?", READ, target=OBJECT_ID),
        _rule("DELETE", r"/ids/(?P<object_id>[^/]+)", ADMIN, target=OBJECT_ID),
        # access (api/presign_route.py), the native API (api/native.py); other /v1 routes by method
        _rule("POST", r"/v1/presign", UPLOAD, READ, target=HANDLER),
        _rule("GET HEAD", r"/v1/params", UPLOAD, READ, target=NONE),
        _rule("POST", r"/v1/uploads", UPLOAD, target=JSON_BODY),
        _rule("GET", r"/v1/uploads/(?P<upload_id>[^/]+)", UPLOAD, target=UPLOAD_ID),
        _rule("POST PUT DELETE", _SESSION + r"(/.*)?", UPLOAD, target=UPLOAD_ID),
        _rule("GET HEAD", r"/v1/.*", UPLOAD, READ),
        _rule("POST PUT PATCH DELETE", r"/v1/.*", UPLOAD),
    ]


FALLBACK = Rule(frozenset(), re.compile(""), (ADMIN,))


def match(table: list[Rule], method: str, path: str) -> tuple[Rule, re.Match[str] | None]:
    for rule in table:
        if method in rule.methods:
            m = rule.pattern.fullmatch(path)
            if m is not None:
                return rule, m
    return FALLBACK, None


def authorize(identity: Identity, rule: Rule) -> None:
    """Scope check (not the object check, which may need the database: see `target_of`)."""
    if rule.needs == (ANY,):
        return
    identity.require(*rule.needs)


# --- the object a request touches ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Resolved:
    """What `target_of` found: the target (None if unknown), and a query to use instead."""

    target: Target | None
    query_string: bytes | None = None
    skip: bool = False  # nothing to check: the route answers 404, or checks for itself
    shown: str | None = None  # a looked-up target's name in a refusal (never its bucket/key)
    claims: tuple[str, ...] = ()  # unbound partials to `bind` once the request is let through


async def target_of(
    rule: Rule,
    m: re.Match[str] | None,
    query: Mapping[str, list[str]],
    identity: Identity,
    svc: Services,
) -> Resolved:
    """Find the object of a request made with a limited key (creation is handled apart)."""
    if rule.target == OBJECT_PATH and m is not None:
        return Resolved(Target(m["bucket"], m["key"]))
    if rule.target == LISTING:
        return _listing(query, identity)
    if rule.target == OBJECT_ID and m is not None:
        try:
            info = await asyncio.to_thread(
                svc.engine.objects.stat, ObjectSelector(object_id=m["object_id"])
            )
        except EdgestoreError:
            return Resolved(None, skip=True)  # the route itself answers 400/404
        return Resolved(Target(info.bucket, info.key), shown=f"object {m['object_id']}")
    if rule.target == UPLOAD_ID and m is not None:
        try:
            rec = await asyncio.to_thread(svc.engine.uploads.get, m["upload_id"])
        except EdgestoreError:
            return Resolved(None, skip=True)
        shown = f"upload {m['upload_id']}"
        if rec.is_partial:  # belongs to no object until a final names one, but to a bucket
            bucket, binds = await partial_bucket(rec, identity, svc, binds=rule.binds)
            claims = (rec.upload_id,) if binds else ()
            return Resolved(partial_target(bucket, identity), shown=shown, claims=claims)
        return Resolved(Target(rec.bucket or DEFAULT_BUCKET, rec.key or rec.upload_id), shown=shown)
    if rule.target in (HANDLER, NONE):
        return Resolved(None, skip=True)
    return Resolved(None)


async def partial_bucket(
    rec: UploadRecord, identity: Identity, svc: Services, *, binds: bool
) -> tuple[str | None, bool]:
    """The bucket a partial upload is for, and whether this request binds it there.

    One an older release wrote without any (listed by migration 0013: any key could touch it
    then) goes to the bucket of the first bucket-limited key let through to write it
    (`binds`: its upload routes), so that key's paused parallel upload goes on. It is checked
    as that bucket's, and bound (`bind`) only once every check of the request has passed: a
    refused request must not hand it to the refused key's bucket, away from its owner's."""
    if rec.bucket is not None or identity.bucket is None or not binds:
        return rec.bucket, False

    def waiting() -> bool:
        with svc.engine.core.db.read() as conn:
            return unbound.is_unbound(conn, rec.upload_id)

    if await asyncio.to_thread(waiting):
        return identity.bucket, True
    return None, False


async def bind(upload_ids: Sequence[str], identity: Identity, svc: Services) -> None:
    """Bind the unbound partials a request was let through on to its key's bucket, all or
    none; refused if another key bound one of them since it was checked."""
    bucket = identity.bucket
    if not upload_ids or bucket is None:
        return

    def claim_all() -> None:
        with svc.engine.core.db.write() as conn:  # rolled back by the refusal: none bound
            for upload_id in upload_ids:
                if not unbound.claim(conn, upload_id, bucket):
                    raise OutOfScope(
                        f"{identity.describe()} is limited to {identity.limits()}; partial "
                        f"upload {upload_id} is not an upload of that bucket"
                    )

    await asyncio.to_thread(claim_all)


def partial_target(bucket: str | None, identity: Identity) -> Target:
    """What a partial upload is checked as: the bucket it was created for (a limited key's
    partials record its bucket; one that names none is in no bucket, so no bucket-limited
    key may touch it). It has no key yet, so a key's prefix cannot be checked on it."""
    return Target(bucket or "", None, identity.prefix or "")


def _listing(query: Mapping[str, list[str]], identity: Identity) -> Resolved:
    """A limited key lists inside its bucket and prefix; missing filters are filled in."""
    values = {k: list(v) for k, v in query.items()}
    bucket = (values.get("bucket") or [None])[-1] or None  # `bucket=`: not given, as prefix=
    prefix = (values.get("prefix") or [""])[-1]
    if bucket is None and identity.bucket is not None:
        bucket = identity.bucket
        values["bucket"] = [bucket]
    if not prefix and identity.prefix:
        prefix = identity.prefix
        values["prefix"] = [prefix]
    target = Target(bucket if bucket is not None else "*", None, prefix)
    if not identity.allows(target):
        raise OutOfScope(
            f"{identity.describe()} is limited to {identity.limits()}; list within it "
            f"(bucket= and prefix= query parameters)"
        )
    return Resolved(target, urlencode(values, doseq=True).encode("latin-1"))
