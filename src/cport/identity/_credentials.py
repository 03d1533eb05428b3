"""What a verified credential becomes: an identity the engine can decide on.

Stage between the verifiers (`_jwt`, `_spiffe`, `_aws`) and the table: a
:class:`VerifiedIdentity` carries the label set (one security identity), who and what vouched
for it, and when it stops being valid. It never holds the credential itself: `token_id` is the
``jti`` when the issuer set one, else a SHA-256 of the credential.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
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
