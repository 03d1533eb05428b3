"""What a verified credential becomes: an identity the engine can decide on.

Stage between the verifiers (`_jwt`, `_spiffe`, `_aws`) and the table: a
:class:`VerifiedIdentity` carries the label set (one security identity), who and what vouched
for it, and when it stops being valid. It never holds the credential itself: `token_id` is the
``jti`` when the issuer set one, else a SHA-256 of the credential.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from cport.identity._labels import Labels


def credential_hash(credential: str | bytes) -> str:
    """The SHA-256 (hex) of a credential: what logs and caches keep instead of the secret."""
    data = credential.encode() if isinstance(credential, str) else credential
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True)
class VerifiedIdentity:
    """A credential that passed verification, as labels plus provenance."""

    kind: str  # oidc | k8s-serviceaccount | spiffe-x509 | spiffe-jwt | aws
    labels: Labels
    subject: str
    issuer: str  # the configured issuer name, trust domain, or "aws"
    expires_at: float  # unix seconds; a grant made from this never outlives it
    token_id: str  # jti, or sha256 of the credential
    actor: str | None = None  # delegation: the agent acting for `subject`
    claims: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "kind": self.kind,
            "subject": self.subject,
            "issuer": self.issuer,
            "expiresAt": self.expires_at,
            "tokenId": self.token_id,
            "labels": self.labels.strings(),
        }
        if self.actor is not None:
            out["actor"] = self.actor
        return out


def _slot_setter(name: str) -> Any:
    return getattr(VerifiedIdentity, name).__set__


_SET_KIND, _SET_LABELS, _SET_SUBJECT, _SET_ISSUER = map(
    _slot_setter, ("kind", "labels", "subject", "issuer")
)
_SET_EXPIRES_AT, _SET_TOKEN_ID, _SET_ACTOR, _SET_CLAIMS = map(
    _slot_setter, ("expires_at", "token_id", "actor", "claims")
)
assert [f.name for f in fields(VerifiedIdentity)] == [
    "kind", "labels", "subject", "issuer", "expires_at", "token_id", "actor", "claims"
]  # fmt: skip


def verified_identity(
    kind: str,
    labels: Labels,
    subject: str,
    issuer: str,
    expires_at: float,
    token_id: str,
    actor: str | None,
    claims: Mapping[str, Any],
) -> VerifiedIdentity:
    """``VerifiedIdentity(kind, labels, …, claims)``, made by setting its slots directly:
    the frozen dataclass's own ``__init__`` goes through ``object.__setattr__`` once per
    field, which is a measurable share of verifying a token (bench/bench_verify.py)."""
    obj: VerifiedIdentity = object.__new__(VerifiedIdentity)
    _SET_KIND(obj, kind)
    _SET_LABELS(obj, labels)
    _SET_SUBJECT(obj, subject)
    _SET_ISSUER(obj, issuer)
    _SET_EXPIRES_AT(obj, expires_at)
    _SET_TOKEN_ID(obj, token_id)
    _SET_ACTOR(obj, actor)
    _SET_CLAIMS(obj, claims)
    return obj
