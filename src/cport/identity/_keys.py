"""Where verification keys come from: a small interface, a static source (tests, pinned keys)
and a JWKS source that discovers, caches and refreshes an issuer's keys.

JWKS policy (docs/identity.md): keys are fetched over HTTPS (HTTP only for loopback issuers),
refreshed every `refresh_interval`, refetched on an unknown ``kid`` at most once per
`min_refetch_interval`, kept as last-known-good through an IdP outage for up to `max_stale`,
and then dropped: with no valid keys every token of that issuer is rejected (``no-keys``).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from joserfc.jwk import KeySet

from cport.errors import CredentialError
from cport.identity._issuer import IssuerConfig
from cport.identity._jwt import VerificationKey

log = logging.getLogger("cport.identity")
FetchJSON = Callable[[str, float], Any]


class KeySource(Protocol):
    """Keys for an issuer. `keys` may fetch; `refetch` is the rate-limited unknown-kid path."""

    def keys(self, issuer: IssuerConfig, now: float) -> Sequence[VerificationKey]: ...

    def refetch(self, issuer: IssuerConfig, now: float) -> bool: ...


class StaticKeySource:
    """Fixed keys per issuer name (tests, and keys pinned in configuration)."""

    def __init__(self, keys: Mapping[str, Sequence[VerificationKey]]) -> None:
        self._keys = {name: list(ks) for name, ks in keys.items()}

    def keys(self, issuer: IssuerConfig, now: float) -> Sequence[VerificationKey]:
        found = self._keys.get(issuer.name)
        if not found:
            raise CredentialError(f"no keys for issuer {issuer.name}", code="no-keys")
        return found

    def refetch(self, issuer: IssuerConfig, now: float) -> bool:
        return False


def keys_from_jwks(doc: Any) -> list[VerificationKey]:
    """Public signature keys from a JWKS document. Symmetric keys and keys marked for
    encryption are skipped; malformed keys are skipped with a warning (one bad key must not
    take the issuer's other keys down)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError("not a JWKS document (no 'keys' list)")
    out: list[VerificationKey] = []
    for raw in doc["keys"]:
        if not isinstance(raw, dict) or raw.get("kty") not in ("RSA", "EC", "OKP"):
            continue
        if raw.get("use", "sig") != "sig":
            continue
        public = {k: v for k, v in raw.items() if k not in ("d", "p", "q", "dp", "dq", "qi")}
        try:
            key = KeySet.import_key_set({"keys": [public]}).keys[0]
        except Exception as exc:  # joserfc raises several types for bad key material
            log.warning("skipping unusable JWK kid=%r: %s", raw.get("kid"), exc)
            continue
        pub = key.public_key
        if not isinstance(
            pub,
            (
                rsa.RSAPublicKey,
                ec.EllipticCurvePublicKey,
                ed25519.Ed25519PublicKey,
                ed448.Ed448PublicKey,
            ),
        ):
            continue  # X25519/X448 are key-agreement keys, never signature keys
        alg = raw.get("alg")
        kid = raw.get("kid")
        out.append(
            VerificationKey(
                kid if isinstance(kid, str) else None, pub, alg if isinstance(alg, str) else None
            )
        )
    return out


def _loopback(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str) -> None:
    """Keys travel over HTTPS; plain HTTP is accepted only for loopback (development, tests)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https" or (parts.scheme == "http" and _loopback(url)):
        return
    raise CredentialError(
        f"refusing to fetch keys from {url}: HTTPS required", code="insecure-key-url"
    )


def http_fetch_json(url: str, timeout: float) -> Any:
    """GET a JSON document (httpx; no redirects to other schemes, bounded size)."""
    import httpx

    check_url(url)
    with httpx.Client(timeout=timeout, follow_redirects=False) as client:
        resp = client.get(url, headers={"Accept": "application/json"})
        resp.raise_for_status()
        if len(resp.content) > 1024 * 1024:
            raise ValueError("document over 1 MiB")
        return json.loads(resp.content)


@dataclass
class _State:
    keys: list[VerificationKey] = field(default_factory=list)
    fetched_at: float = float("-inf")  # last successful fetch
    attempted_at: float = float("-inf")  # last attempt, successful or not
    refetched_at: float = float("-inf")  # last unknown-kid refetch
    jwks_uri: str | None = None
    error: str = ""
    error_code: str = ""  # a specific refusal (e.g. insecure-key-url) instead of no-keys


class JWKSKeySource:
    """Keys fetched from each issuer's JWKS, found by OpenID discovery unless configured.

    `fetch_json(url, timeout)` does the I/O (injectable for tests); `clock` is not used for
    decisions, only `now` passed by the caller is."""

    def __init__(self, fetch_json: FetchJSON = http_fetch_json) -> None:
        self._fetch = fetch_json
        self._state: dict[str, _State] = {}
        self._lock = threading.Lock()

    def status(self) -> dict[str, dict[str, object]]:
        """Per issuer: key ids, when fetched, last error (for `cport status`, metrics)."""
        return {
            name: {"kids": [k.kid for k in st.keys], "fetchedAt": st.fetched_at, "error": st.error}
            for name, st in self._state.items()
        }

    def keys(self, issuer: IssuerConfig, now: float) -> Sequence[VerificationKey]:
        with self._lock:
            st = self._state.setdefault(issuer.name, _State())
            due = now - st.fetched_at >= issuer.refresh_interval
            # After a failure, wait before trying again, so an outage is not hammered.
            backoff_over = now - st.attempted_at >= issuer.min_refetch_interval
            if due and backoff_over:
                self._refresh(issuer, st, now)
            if st.keys and now - st.fetched_at <= issuer.refresh_interval + issuer.max_stale:
                return st.keys
            st.keys = []
            raise CredentialError(
                f"no valid keys for issuer {issuer.name} (last error: {st.error or 'none'})",
                code=st.error_code or "no-keys",
            )

    def refetch(self, issuer: IssuerConfig, now: float) -> bool:
        with self._lock:
            st = self._state.setdefault(issuer.name, _State())
            if now - st.refetched_at < issuer.min_refetch_interval:
                return False
            st.refetched_at = now
            before = {k.kid for k in st.keys}
            self._refresh(issuer, st, now)
            return {k.kid for k in st.keys} != before

    def _refresh(self, issuer: IssuerConfig, st: _State, now: float) -> None:
        st.attempted_at = now
        try:
            uri = issuer.jwks_uri or st.jwks_uri or self._discover(issuer)
            st.jwks_uri = uri
            check_url(uri)
            keys = keys_from_jwks(self._fetch(uri, issuer.http_timeout))
            if not keys:
                raise ValueError("the key set holds no usable signature key")
        except Exception as exc:  # any failure: keep last-known-good keys, record why
            st.error = f"{type(exc).__name__}: {exc}"[:300]
            st.error_code = exc.code if isinstance(exc, CredentialError) else ""
            log.warning("JWKS refresh for issuer %s failed: %s", issuer.name, st.error)
            return
        st.keys, st.fetched_at, st.error, st.error_code = keys, now, "", ""

    def _discover(self, issuer: IssuerConfig) -> str:
        url = issuer.issuer.rstrip("/") + "/.well-known/openid-configuration"
        check_url(url)
        doc = self._fetch(url, issuer.http_timeout)
        if not isinstance(doc, dict) or doc.get("issuer") != issuer.issuer:
            raise ValueError("discovery document names another issuer")
        uri = doc.get("jwks_uri")
        if not isinstance(uri, str):
            raise ValueError("discovery document has no jwks_uri")
        return uri


__all__ = ["JWKSKeySource", "KeySource", "StaticKeySource", "keys_from_jwks"]
