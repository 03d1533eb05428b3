"""The token verifier: find the issuer, get its keys, verify, map to an identity, cache.

This is the I/O-touching shell around the pure `_jwt` checks: it asks a
:class:`~cport.identity._keys.KeySource` for keys (which may fetch) and keeps a bounded cache
of verified tokens keyed by the SHA-256 of the token, never past the token's ``exp``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from typing import Any

from cport.errors import CredentialError, UnknownIssuer
from cport.identity._claims import PodResolver, kubernetes_labels, oidc_labels, subject_of
from cport.identity._credentials import VerifiedIdentity
from cport.identity._issuer import IssuerConfig
from cport.identity._jwt import parse_jws, remember_header, verify_jws
from cport.identity._keys import KeySource
from cport.identity._labels import Label, Labels


class Verifier:
    """Verify bearer tokens (OIDC, Kubernetes service-account, JWT-SVID) from configured
    issuers. `clock` is used only when `verify` is not given `now`.

    >>> v = Verifier([issuer], StaticKeySource({"corp": [key]}))      # doctest: +SKIP
    >>> v.verify(token).labels                                        # doctest: +SKIP
    """

    def __init__(
        self,
        issuers: Sequence[IssuerConfig],
        keys: KeySource,
        *,
        cluster: str = "default",
        resolve_pod: PodResolver | None = None,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._by_iss: dict[str, IssuerConfig] = {}
        for cfg in issuers:
            self._by_iss[cfg.issuer] = cfg
        self.keys = keys
        self.cluster = cluster
        self.resolve_pod = resolve_pod
        self._max_bytes = max((i.max_token_bytes for i in issuers), default=16 * 1024)
        self._cache: dict[bytes, VerifiedIdentity] = {}
        self._headers: dict[str, dict[str, Any]] = {}  # decoded headers of verified tokens
        self._cache_size = cache_size
        self._clock = clock

    @property
    def issuers(self) -> list[IssuerConfig]:
        return list(self._by_iss.values())

    def cached(self, token: str, now: float) -> VerifiedIdentity | None:
        """The cached identity of `token` if it was verified before and has not expired."""
        hit = self._cache.get(hashlib.sha256(token.encode()).digest())
        if hit is not None and now < hit.expires_at:
            return hit
        return None

    def verify(self, token: str, now: float | None = None) -> VerifiedIdentity:
        """Verify `token` or raise :class:`~cport.errors.CredentialError` with a reason code."""
        if now is None:
            now = self._clock()
        digest = hashlib.sha256(token.encode()).digest()
        hit = self._cache.get(digest)
        if hit is not None:
            if now < hit.expires_at:
                return hit
            del self._cache[digest]
        identity = self._verify(token, now, digest)
        if self._cache_size <= 0:
            return identity
        if len(self._cache) >= self._cache_size:
            del self._cache[next(iter(self._cache))]  # oldest first
        self._cache[digest] = identity
        return identity

    def _verify(self, token: str, now: float, digest: bytes) -> VerifiedIdentity:
        jws = parse_jws(token, self._max_bytes, self._headers)
        iss = jws.claims.get("iss")
        issuer = self._by_iss.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise UnknownIssuer("the token's issuer is not configured")
        if len(token) > issuer.max_token_bytes:
            raise CredentialError("token over this issuer's size limit", code="token-too-large")
        try:
            claims = verify_jws(jws, issuer, self.keys.keys(issuer, now), now)
        except CredentialError as exc:
            # A new signing key the cache has not seen: refetch, rate-limited by the source.
            if exc.code != "unknown-kid" or not self.keys.refetch(issuer, now):
                raise
            claims = verify_jws(jws, issuer, self.keys.keys(issuer, now), now)
        remember_header(jws, self._headers)
        exp = float(claims["exp"])
        subject = subject_of(claims)
        jti = claims.get("jti")
        token_id = jti if isinstance(jti, str) and jti else digest.hex()
        actor: str | None = None
        if issuer.kind == "kubernetes":
            labels = kubernetes_labels(claims, self.cluster, self.resolve_pod)
            kind = "k8s-serviceaccount"
        elif issuer.kind == "spiffe-jwt":
            from cport.identity._spiffe import parse_spiffe_id

            try:
                td = parse_spiffe_id(subject).trust_domain
            except CredentialError as exc:
                raise CredentialError(exc.message, code="svid-invalid-id") from None
            labels = Labels([Label("spiffe", "id", subject), Label("spiffe", "trust-domain", td)])
            kind = "spiffe-jwt"
        else:
            labels, actor = oidc_labels(claims, issuer)
            kind = "oidc"
        return VerifiedIdentity(
            kind=kind,
            labels=labels,
            subject=subject,
            issuer=issuer.name,
            expires_at=exp,
            token_id=token_id,
            actor=actor,
            claims=claims,
        )
