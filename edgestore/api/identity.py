"""Who is calling and what they may touch: the identity the auth middleware attaches to a
request (`request.state.identity`), and the checks every guarded route shares.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from edgestore.errors import OutOfScope, Unauthorized
from edgestore.metadata.keys import ADMIN, READ, SCOPES, UPLOAD

__all__ = ["ADMIN", "READ", "SCOPES", "UPLOAD", "Identity", "Target", "identity_of"]

KEY, PRESIGNED, UPLOAD_TOKEN, OPEN = "key", "presigned", "upload_token", "open"


@dataclass(frozen=True, slots=True)
class Target:
    """The object a request touches (key set), or the part of a bucket a listing reads."""

    bucket: str
    key: str | None = None
    prefix: str = ""

    def describe(self) -> str:
        if self.key is not None:
            return f"{self.bucket}/{self.key}"
        return f"{self.bucket}/{self.prefix}*"


@dataclass(frozen=True, slots=True)
class Identity:
    """An API key's holder, the bearer of a pre-signed URL or upload token, or anyone (no auth).

    `bucket`/`prefix` bound an API key to part of the store; pre-signed identities carry
    their grant instead, checked where the request is matched (api/auth.py).
    """

    kind: str
    scopes: frozenset[str] = frozenset()
    key_id: str | None = None
    name: str | None = None
    bucket: str | None = None
    prefix: str | None = None
    minted_by: str | None = None  # the API key behind a pre-signed URL or upload token

    @property
    def revocable(self) -> str | None:
        """The API key whose revocation voids this identity's requests, if any."""
        return self.key_id if self.kind == KEY else self.minted_by

    @property
    def restricted(self) -> bool:
        return self.bucket is not None or bool(self.prefix)

    def describe(self) -> str:
        if self.kind == KEY:
            return f"API key {self.key_id} ({self.name})"
        return {PRESIGNED: "this pre-signed URL", UPLOAD_TOKEN: "this upload URL"}.get(
            self.kind, "this request"
        )

    def has(self, scope: str) -> bool:
        return ADMIN in self.scopes or scope in self.scopes

    def require(self, *scopes: str) -> None:
        """Pass if the identity holds any of `scopes` (admin holds them all)."""
        if not any(self.has(s) for s in scopes):
            raise OutOfScope(
                f"{self.describe()} lacks the {' or '.join(repr(s) for s in scopes)} scope "
                f"(it has {', '.join(sorted(self.scopes)) or 'none'})"
            )

    def allows(self, target: Target) -> bool:
        if self.bucket is not None and target.bucket != self.bucket:
            return False
        if self.prefix:
            named = target.key if target.key is not None else target.prefix
            return named.startswith(self.prefix)
        return True

    def require_target(self, target: Target | None, shown: str | None = None) -> None:
        """Pass if a restricted key may touch `target` (None: a route it cannot be checked on).

        `shown`: what to call a target the request did not name (looked up by id), so that
        a refusal never tells the key where another tenant's object is."""
        if not self.restricted:
            return
        if target is None:
            raise OutOfScope(
                f"{self.describe()} is limited to {self.limits()} and this route's object "
                "cannot be checked against that"
            )
        if not self.allows(target):
            raise OutOfScope(
                f"{self.describe()} is limited to {self.limits()}, not "
                f"{shown if shown is not None else target.describe()}"
            )

    def limits(self) -> str:
        parts = []
        if self.bucket is not None:
            parts.append(f"bucket {self.bucket!r}")
        if self.prefix:
            parts.append(f"keys under {self.prefix!r}")
        return " and ".join(parts) or "everything"


def identity_of(request: Request) -> Identity:
    """The identity the auth middleware attached; routes outside it see none (a bug)."""
    identity = getattr(request.state, "identity", None)
    if identity is None:
        raise Unauthorized("no credentials were checked for this request")
    return identity
