"""The token verifier: find the issuer, get its keys, verify, map to an identity, cache.

This is the I/O-touching shell around the pure `_jwt` checks: it asks a
:class:`~cport.identity._keys.KeySource` for keys (which may fetch) and keeps a bounded cache
of verified tokens, never past the token's ``exp``, keyed by the token's hash: the SHA-256
of its signing input (``header.payload``) followed by its signature segment. Two tokens with
one key have the same signing input (barring a SHA-256 collision) and the same signature, so
they are the same token; and the signature checks reuse that SHA-256 instead of hashing the
signing input a second time (see :data:`~cport.identity._jwt.SignatureCheck`).

Besides that cache, two small memos spare work on tokens never seen before, neither of which
can be filled by an unverified token nor changes any check: the ``(alg, kid)`` of header
segments that verified (an issuer's tokens share one header; the alg allowlist, the key's
type and the signature are still checked per token), and per issuer the label sets of token
holders (see :func:`~cport.identity._claims.oidc_labels`).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from typing import Any

from cport.errors import CredentialError, UnknownIssuer
from cport.identity._claims import PodResolver, kubernetes_labels, oidc_labels, subject_of
from cport.identity._credentials import VerifiedIdentity, verified_identity
from cport.identity._issuer import IssuerConfig
from cport.identity._jwt import (
    HEADER_CACHE_SIZE,
    ascii_token,
    check_alg,
    check_claims,
    check_signature,
    decode_segment,
    decode_signature,
    header_fields,
    split_jws,
)
from cport.identity._keys import KeySource
from cport.identity._labels import Label, Labels

_sha256 = hashlib.sha256


def cache_key(raw: bytes, dot: int) -> tuple[bytes, bytes]:
    """The cache key of token `raw` whose last "." is at `dot`, and the SHA-256 of its signing
    input (the key's first 32 bytes; the signature checks reuse it)."""
    sha256 = _sha256(raw[:dot]).digest()
    return sha256 + raw[dot + 1 :], sha256


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
        # Per `iss`: the issuer, and the memo of its holders' label sets.
        self._by_iss: dict[str, tuple[IssuerConfig, dict[tuple[Any, ...], Labels]]] = {}
        for cfg in issuers:
            self._by_iss[cfg.issuer] = (cfg, {})
        self.keys = keys
        self.cluster = cluster
        self.resolve_pod = resolve_pod
        self._max_bytes = max((i.max_token_bytes for i in issuers), default=16 * 1024)
        self._cache: dict[bytes, VerifiedIdentity] = {}
        self._headers: dict[bytes, tuple[str, str | None]] = {}  # verified header → alg, kid
        self._cache_size = cache_size
        self._clock = clock

    @property
    def issuers(self) -> list[IssuerConfig]:
        return [cfg for cfg, _ in self._by_iss.values()]

    def cached(self, token: str, now: float) -> VerifiedIdentity | None:
        """The cached identity of `token` if it was verified before and has not expired."""
        if not token.isascii():
            return None  # never verified, so never cached
        raw = token.encode("ascii")
        dot = raw.rfind(b".")
        if dot < 0:
            return None  # not a JWS, so never cached
        hit = self._cache.get(cache_key(raw, dot)[0])
        if hit is not None and now < hit.expires_at:
            return hit
        return None

    def verify(self, token: str, now: float | None = None) -> VerifiedIdentity:
        """Verify `token` or raise :class:`~cport.errors.CredentialError` with a reason code."""
        if now is None:
            now = self._clock()
        if len(token) <= self._max_bytes and token.isascii():
            raw = token.encode()
        else:
            raw = ascii_token(token, self._max_bytes)  # raises, naming which
        dot = raw.rfind(b".")
        if dot < 0:
            split_jws(raw)  # raises: a compact JWS has three segments
        key, sha256 = cache_key(raw, dot)
        hit = self._cache.get(key)
        if hit is not None:
            if now < hit.expires_at:
                return hit
            self._cache.pop(key, None)
        identity = self._verify(raw, dot, now, sha256)
        if self._cache_size <= 0:
            return identity
        if len(self._cache) >= self._cache_size:
            self._cache.pop(next(iter(self._cache)), None)  # oldest first
        self._cache[key] = identity
        return identity

    def _verify(self, raw: bytes, dot: int, now: float, sha256: bytes) -> VerifiedIdentity:
        """`raw` verified; its last "." is at `dot` and `sha256` is the SHA-256 of what
        precedes it (the signing input)."""
        first = raw.find(b".")
        if first == dot or raw.count(b".") != 2:
            split_jws(raw)  # raises, naming what the token is instead
        h, p, s = raw[:first], raw[first + 1 : dot], raw[dot + 1 :]
        known = self._headers.get(h)
        header = decode_segment(h, "header") if known is None else None
        claims = decode_segment(p, "payload")
        signature = decode_signature(s)
        iss = claims.get("iss")
        entry = self._by_iss.get(iss) if isinstance(iss, str) else None
        if entry is None:
            raise UnknownIssuer("the token's issuer is not configured")
        issuer, memo = entry
        if len(raw) > issuer.max_token_bytes:
            raise CredentialError("token over this issuer's size limit", code="token-too-large")
        if header is not None:
            alg, kid = header_fields(header)
        else:
            assert known is not None
            alg, kid = known
        if alg not in issuer.usable_algorithms:
            check_alg(alg, issuer)  # raises, naming why
        signing_input = raw[:dot]
        try:
            keys = self.keys.keys(issuer, now)
            check_signature(alg, kid, issuer, keys, signing_input, signature, sha256)
        except CredentialError as exc:
            # A new signing key the cache has not seen: refetch, rate-limited by the source.
            if exc.code != "unknown-kid" or not self.keys.refetch(issuer, now):
                raise
            keys = self.keys.keys(issuer, now)
            check_signature(alg, kid, issuer, keys, signing_input, signature, sha256)
        check_claims(claims, issuer, now)
        if header is not None and len(self._headers) < HEADER_CACHE_SIZE:
            self._headers[h] = (alg, kid)  # only after the signature verified
        exp = float(claims["exp"])
        subject = subject_of(claims)
        jti = claims.get("jti")
        token_id = jti if isinstance(jti, str) and jti else _sha256(raw).hexdigest()
        actor: str | None = None
        kind = issuer.kind
        if kind == "kubernetes":
            labels = kubernetes_labels(claims, self.cluster, self.resolve_pod)
            kind = "k8s-serviceaccount"
        elif kind == "spiffe-jwt":
            from cport.identity._spiffe import parse_spiffe_id

            try:
                td = parse_spiffe_id(subject).trust_domain
            except CredentialError as exc:
                raise CredentialError(exc.message, code="svid-invalid-id") from None
            if td not in issuer.spiffe_trust_domains():
                # An issuer speaks only for its own trust domains: otherwise one trusted for
                # a.example could mint identities of b.example.
                raise CredentialError(
                    f"issuer {issuer.name} does not speak for trust domain {td!r}",
                    code="unknown-trust-domain",
                )
            labels = Labels([Label("spiffe", "id", subject), Label("spiffe", "trust-domain", td)])
        else:
            labels, actor = oidc_labels(claims, issuer, memo, subject=subject)
            kind = "oidc"
        return verified_identity(kind, labels, subject, issuer.name, exp, token_id, actor, claims)
