"""JWT verification: strict parsing and every check, as pure functions.

`parse_jws` splits and decodes a compact JWS without trusting it; `verify_jws` checks the
signature against the issuer's keys and then the claims, given the current time. No I/O, no
clock of its own. Each rejection raises a :class:`~cport.errors.CredentialError` whose `code`
is a stable reason:

``malformed``, ``token-too-large``, ``alg-not-allowed``, ``crit-header``,
``untrusted-key-header``, ``unknown-kid``, ``bad-signature``, ``issuer-mismatch``,
``audience-mismatch``, ``expired``, ``not-yet-valid``, ``issued-in-future``,
``missing-claim``, ``claim-mismatch``.

Signatures are checked with `cryptography` directly: measured here, JOSE libraries spend most
of their time around the signature (bench/bench_verify.py), and their leniencies (padding,
string ``exp``, last-of-duplicate keys, ``crit: []``) are exactly what this module refuses.
Keys are imported and validated from JWKS by joserfc (see `_keys`).
"""

from __future__ import annotations

import binascii
import hmac
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from cport.errors import BadSignature, CredentialError, TokenExpired
from cport.identity._issuer import HMAC_ALGORITHMS, IssuerConfig

_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_TO_STD = bytes.maketrans(b"-_", b"+/")
_PAD = (b"", b"", b"==", b"=")
_HASHES = {"256": hashes.SHA256(), "384": hashes.SHA384(), "512": hashes.SHA512()}
_CURVES = {"ES256": ("secp256r1", 32), "ES384": ("secp384r1", 48), "ES512": ("secp521r1", 66)}
_PKCS1 = padding.PKCS1v15()
_UNTRUSTED_HEADERS = ("jku", "x5u", "jwk")
PublicKey = (
    rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
)


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """A public key from an issuer's key set, with the JWK fields that constrain its use."""

    kid: str | None
    key: PublicKey
    alg: str | None = None  # the JWK's own "alg", if it named one


@dataclass(frozen=True, slots=True)
class ParsedJWS:
    """A compact JWS split and decoded, not yet trusted."""

    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes

    @property
    def alg(self) -> str:
        return str(self.header.get("alg"))

    @property
    def kid(self) -> str | None:
        kid = self.header.get("kid")
        return kid if isinstance(kid, str) else None


def _reject(code: str, message: str) -> CredentialError:
    return CredentialError(message, code=code)


def _b64(segment: str, what: str) -> bytes:
    if not _B64URL.fullmatch(segment) or len(segment) % 4 == 1:
        raise _reject("malformed", f"{what} is not unpadded base64url")
    try:
        data = segment.encode("ascii").translate(_TO_STD) + _PAD[len(segment) % 4]
        return binascii.a2b_base64(data, strict_mode=True)
    except (binascii.Error, ValueError):
        raise _reject("malformed", f"{what} is not base64url") from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            # Parsers disagree on which duplicate wins; an attacker can exploit the gap.
            raise _reject("malformed", f"duplicate member {key!r}")
        out[key] = value
    return out


def _no_constants(name: str) -> Any:
    # NaN and Infinity are not JSON; Python's parser accepts them, and an `exp` of NaN or
    # Infinity would never expire.
    raise _reject("malformed", f"{name} is not a JSON value")


_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
HEADER_CACHE_SIZE = 64


def _json(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = _DECODER.decode(raw.decode("utf-8"))
    except CredentialError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _reject("malformed", f"{what} is not JSON") from None
    if not isinstance(value, dict):
        raise _reject("malformed", f"{what} is not a JSON object")
    return value


def parse_jws(
    token: str, max_bytes: int = 16 * 1024, headers: dict[str, dict[str, Any]] | None = None
) -> ParsedJWS:
    """Split and decode a compact JWS (``header.payload.signature``) without trusting it.
    `headers`: header segments already decoded (see :func:`remember_header`)."""
    if len(token) > max_bytes:
        raise _reject("token-too-large", f"token is {len(token)} bytes, over {max_bytes}")
    parts = token.split(".")
    if len(parts) != 3:
        what = "an encrypted JWT (JWE)" if len(parts) == 5 else f"{len(parts)} segments"
        raise _reject("malformed", f"not a signed JWT: {what}")
    h, p, s = parts
    cached = headers.get(h) if headers is not None else None
    header = dict(cached) if cached is not None else _json(_b64(h, "header"), "header")
    claims = _json(_b64(p, "payload"), "payload")
    signature = _b64(s, "signature")
    if not signature:
        raise _reject("bad-signature", "the token carries no signature")
    return ParsedJWS(header, claims, f"{h}.{p}".encode("ascii"), signature)


def remember_header(jws: ParsedJWS, headers: dict[str, dict[str, Any]]) -> None:
    """Keep a *verified* token's header decoded in `headers` for the next token carrying the
    same one (an issuer's tokens share one header). Call it only after the signature
    verified, so an attacker cannot fill the cache; only flat headers of scalars are kept, so
    the copies handed out share nothing mutable."""
    if len(headers) >= HEADER_CACHE_SIZE:
        return
    if all(isinstance(v, (str, int, float, bool)) for v in jws.header.values()):
        segment = jws.signing_input.split(b".", 1)[0].decode("ascii")
        headers[segment] = dict(jws.header)


def _check_header(jws: ParsedJWS, issuer: IssuerConfig) -> str:
    header = jws.header
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise _reject("malformed", "header has no alg")
    if "crit" in header:
        raise _reject("crit-header", "critical header extensions are not supported")
    for name in _UNTRUSTED_HEADERS:
        if name in header:
            raise _reject(
                "untrusted-key-header",
                f"header {name!r} would choose the key; keys come only from the issuer",
            )
    if "kid" in header and not isinstance(header["kid"], str):
        raise _reject("malformed", "header kid is not a string")
    if alg not in issuer.algorithms or alg == "none":
        raise _reject("alg-not-allowed", f"alg {alg!r} is not allowed for issuer {issuer.name}")
    if alg in HMAC_ALGORITHMS and issuer.hmac_secret is None:
        raise _reject("alg-not-allowed", f"alg {alg!r} needs a shared secret for {issuer.name}")
    return alg


def _key_fits(alg: str, vk: VerificationKey) -> bool:
    if vk.alg is not None and vk.alg != alg:
        return False
    key = vk.key
    if alg.startswith(("RS", "PS")):
        return isinstance(key, rsa.RSAPublicKey) and key.key_size >= 2048
    if alg in _CURVES:
        return isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == _CURVES[alg][0]
    if alg == "EdDSA":
        return isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey))
    return False


def _verify_signature(alg: str, key: PublicKey, data: bytes, sig: bytes) -> bool:
    try:
        if alg.startswith("RS"):
            assert isinstance(key, rsa.RSAPublicKey)
            key.verify(sig, data, _PKCS1, _HASHES[alg[2:]])
        elif alg.startswith("PS"):
            assert isinstance(key, rsa.RSAPublicKey)
            h = _HASHES[alg[2:]]
            key.verify(sig, data, padding.PSS(padding.MGF1(h), h.digest_size), h)
        elif alg in _CURVES:
            assert isinstance(key, ec.EllipticCurvePublicKey)
            size = _CURVES[alg][1]
            if len(sig) != 2 * size:
                return False
            der = encode_dss_signature(
                int.from_bytes(sig[:size], "big"), int.from_bytes(sig[size:], "big")
            )
            key.verify(der, data, ec.ECDSA(_HASHES[alg[2:]]))
        else:
            assert isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey))
            key.verify(sig, data)
    except InvalidSignature:
        return False
    return True


_MAX_TIME = 2.0**53  # far beyond any real time, and exact as a float


def _num(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _reject("malformed", f"claim {name!r} is not a number")
    if not -_MAX_TIME <= value <= _MAX_TIME:  # also false for NaN, so NaN is refused too
        raise _reject("malformed", f"claim {name!r} is not a usable time")
    return float(value)


def claim_at(claims: dict[str, Any], path: str) -> Any:
    """The claim at a dot-separated path (``realm_access.roles``); a top-level claim whose name
    contains dots (``https://corp.example/roles``) is found first."""
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def check_claims(claims: dict[str, Any], issuer: IssuerConfig, now: float) -> None:
    """Registered and required claims, with the issuer's clock skew."""
    # JWT-SVIDs need not carry iss: their issuer is the trust domain of sub.
    if issuer.kind != "spiffe-jwt" and claims.get("iss") != issuer.issuer:
        raise _reject("issuer-mismatch", f"iss is not {issuer.issuer!r}")
    aud = claims.get("aud")
    auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else None
    if not auds or not all(isinstance(a, str) for a in auds):
        raise _reject("audience-mismatch", "the token names no audience")
    if not set(auds) & set(issuer.audiences):
        raise _reject("audience-mismatch", "the token is for another audience")
    skew = issuer.clock_skew
    exp = _num(claims, "exp")
    if exp is None:
        raise _reject("missing-claim", "the token has no exp")
    if now > exp + skew:
        raise TokenExpired(f"the token expired {int(now - exp)} s ago")
    nbf = _num(claims, "nbf")
    if nbf is not None and now + skew < nbf:
        raise _reject("not-yet-valid", f"the token is valid only in {int(nbf - now)} s")
    iat = _num(claims, "iat")
    if iat is not None and iat > now + skew:
        raise _reject("issued-in-future", f"the token was issued {int(iat - now)} s from now")
    for name in ("sub", "client_id", "azp", "jti"):
        if name in claims and not isinstance(claims[name], str):
            raise _reject("malformed", f"claim {name!r} is not a string")
    if not any(isinstance(claims.get(n), str) for n in ("sub", "client_id", "azp")):
        raise _reject("missing-claim", "the token names no subject (sub, client_id or azp)")
    for path, allowed in issuer.required_claims:
        value = claim_at(claims, path)
        if value is None:
            raise _reject("missing-claim", f"required claim {path!r} is missing")
        values = value if isinstance(value, list) else [value]
        if allowed and not any(str(v) in allowed for v in values):
            raise _reject("claim-mismatch", f"claim {path!r} has no allowed value")


def verify_jws(
    jws: ParsedJWS, issuer: IssuerConfig, keys: Sequence[VerificationKey], now: float
) -> dict[str, Any]:
    """Check `jws` against `issuer`'s policy and `keys`; return the trusted claims."""
    alg = _check_header(jws, issuer)
    if alg in HMAC_ALGORITHMS:
        assert issuer.hmac_secret is not None
        import hashlib

        mac = hmac.new(
            issuer.hmac_secret, jws.signing_input, getattr(hashlib, "sha" + alg[2:])
        ).digest()
        if not hmac.compare_digest(mac, jws.signature):
            raise BadSignature("the signature does not verify")
    else:
        kid = jws.kid
        candidates = [k for k in keys if kid is None or k.kid == kid]
        if kid is not None and not candidates:
            raise _reject("unknown-kid", "no key of this issuer has the token's kid")
        fitting = [k for k in candidates if _key_fits(alg, k)]
        if not fitting:
            raise _reject("alg-not-allowed", f"no key of this issuer is usable with {alg}")
        if not any(
            _verify_signature(alg, k.key, jws.signing_input, jws.signature) for k in fitting
        ):
            raise BadSignature("the signature does not verify")
    check_claims(jws.claims, issuer, now)
    return jws.claims
