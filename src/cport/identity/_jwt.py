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
Keys are imported and validated from JWKS by joserfc (see `_keys`). Segments are decoded by
pybase64 and orjson where the result provably equals the strict reading (see
`decode_segment`), else by the standard library's strict decoders.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import pybase64
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature

from cport.errors import BadSignature, CredentialError, TokenExpired
from cport.identity._issuer import HMAC_ALGORITHMS, IssuerConfig

_TO_STD = bytes.maketrans(b"-_", b"+/")
_NOT_B64URL = b"+/="  # the standard alphabet's own characters, and padding
_PAD = (b"", b"", b"==", b"=")
_HASHES = {"256": hashes.SHA256(), "384": hashes.SHA384(), "512": hashes.SHA512()}
_CURVES = {"ES256": ("secp256r1", 32), "ES384": ("secp384r1", 48), "ES512": ("secp521r1", 66)}
_PKCS1 = padding.PKCS1v15()
_UNTRUSTED_HEADERS = ("jku", "x5u", "jwk")
PublicKey = (
    rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
)
#: A prepared signature check: ``check(signature, signing_input, sha256)`` is True iff the
#: signature verifies; `sha256` is the SHA-256 of `signing_input`, which the verifier has
#: computed already (it is half of the cache key) and SHA-256 algorithms use instead of
#: hashing the input again.
SignatureCheck = Callable[[bytes, bytes, bytes], bool]


def _rsa_pss_check(key: rsa.RSAPublicKey, pad: padding.AsymmetricPadding, h: Any) -> SignatureCheck:
    verify = key.verify

    def check(sig: bytes, data: bytes, sha256: bytes) -> bool:
        try:
            verify(sig, data, pad, h)
        except InvalidSignature:
            return False
        return True

    return check


#: The DER DigestInfo that precedes the hash in an RSASSA-PKCS1-v1_5 signature (RFC 8017 §9.2).
_DIGEST_INFO = {
    "256": (bytes.fromhex("3031300d060960864801650304020105000420"), None),  # given
    "384": (bytes.fromhex("3041300d060960864801650304020205000430"), hashlib.sha384),
    "512": (bytes.fromhex("3051300d060960864801650304020305000440"), hashlib.sha512),
}


def _rsa_pkcs1_check(key: rsa.RSAPublicKey, bits: str) -> SignatureCheck:
    """RSASSA-PKCS1-v1_5 verification the way RFC 8017 §8.2.2 words it: OpenSSL recovers the
    encoded message and checks its type-1 padding, and the DigestInfo it carries must equal
    the one encoded here from the data. Same verdicts as ``key.verify(sig, data, PKCS1v15(),
    SHA-x)``, measured ~2 µs cheaper per token (bench/bench_verify.py): no digest context is
    set up inside OpenSSL."""
    recover = key.recover_data_from_signature
    prefix, digest = _DIGEST_INFO[bits]
    size = (key.key_size + 7) // 8

    def check(sig: bytes, data: bytes, sha256: bytes) -> bool:
        # RFC 8017 §8.2.2 step 1: exactly k octets (`recover_data_from_signature` alone
        # accepts a signature one octet short; `verify` does not).
        if len(sig) != size:
            return False
        try:
            recovered = recover(sig, _PKCS1, None)
        except InvalidSignature:
            return False
        return recovered == prefix + (sha256 if digest is None else digest(data).digest())

    return check


def _ec_check(key: ec.EllipticCurvePublicKey, size: int, hash_alg: Any) -> SignatureCheck:
    verify = key.verify
    algorithm = ec.ECDSA(hash_alg)
    given = ec.ECDSA(Prehashed(hash_alg)) if hash_alg.name == "sha256" else None

    def check(sig: bytes, data: bytes, sha256: bytes) -> bool:
        # JWS carries r || s, each `size` bytes (RFC 7518 §3.4); cryptography takes DER.
        if len(sig) != 2 * size:
            return False
        der = encode_dss_signature(
            int.from_bytes(sig[:size], "big"), int.from_bytes(sig[size:], "big")
        )
        try:
            if given is None:
                verify(der, data, algorithm)
            else:
                verify(der, sha256, given)
        except InvalidSignature:
            return False
        return True

    return check


def _eddsa_check(key: ed25519.Ed25519PublicKey | ed448.Ed448PublicKey) -> SignatureCheck:
    verify = key.verify

    def check(sig: bytes, data: bytes, sha256: bytes) -> bool:
        try:
            verify(sig, data)
        except InvalidSignature:
            return False
        return True

    return check


def signature_checks(key: PublicKey, jwk_alg: str | None = None) -> dict[str, SignatureCheck]:
    """The signature checks `key` can make, by JWS algorithm: RSA of at least 2048 bits for
    RS*/PS*, the EC curve of the algorithm for ES*, Ed25519/Ed448 for EdDSA (and for RFC 9864's
    ``Ed25519``/``Ed448``, each only with its own curve); only `jwk_alg`
    when the JWK named one. Type, size and curve are decided here, once per key."""
    out: dict[str, SignatureCheck] = {}
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size >= 2048:
            for bits, h in _HASHES.items():
                out["RS" + bits] = _rsa_pkcs1_check(key, bits)
                pss = padding.PSS(padding.MGF1(h), h.digest_size)
                out["PS" + bits] = _rsa_pss_check(key, pss, h)
    elif isinstance(key, ec.EllipticCurvePublicKey):
        for alg, (curve, size) in _CURVES.items():
            if key.curve.name == curve:
                out[alg] = _ec_check(key, size, _HASHES[alg[2:]])
    elif isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        # "EdDSA" (RFC 8037) names the curve by the key; RFC 9864's fully specified
        # "Ed25519"/"Ed448" name it in the token, and deprecate "EdDSA".
        out["EdDSA"] = _eddsa_check(key)
        out["Ed25519" if isinstance(key, ed25519.Ed25519PublicKey) else "Ed448"] = out["EdDSA"]
    if jwk_alg is not None:
        out = {alg: check for alg, check in out.items() if alg == jwk_alg}
    return out


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """A public key from an issuer's key set, with the JWK fields that constrain its use.

    `checks` is derived from `key` and `alg` when the key is made (see
    :func:`signature_checks`): verifying a token is then one dict lookup and one call."""

    kid: str | None
    key: PublicKey
    alg: str | None = None  # the JWK's own "alg", if it named one
    checks: Mapping[str, SignatureCheck] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "checks", signature_checks(self.key, self.alg))


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


def _b64(segment: bytes, what: str) -> bytes:
    # Deleting the standard alphabet's "+/" and padding "=" before mapping "-_" onto them:
    # if anything was deleted, the segment was not unpadded base64url. Validating decoding
    # then refuses every other byte outside the alphabet and impossible lengths (pybase64:
    # the same verdicts as ``binascii.a2b_base64(strict_mode=True)``, in SIMD).
    data = segment.translate(_TO_STD, _NOT_B64URL)
    if len(data) != len(segment):
        raise _reject("malformed", f"{what} is not unpadded base64url")
    try:
        return _b64decode(data + _PAD[len(data) & 3], validate=True)
    except ValueError:  # binascii.Error is one
        raise _reject("malformed", f"{what} is not base64url") from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        # Parsers disagree on which duplicate wins; an attacker can exploit the gap.
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _reject("malformed", f"duplicate member {key!r}")
            seen.add(key)
    return out


def _no_constants(name: str) -> Any:
    # NaN and Infinity are not JSON; Python's parser accepts them, and an `exp` of NaN or
    # Infinity would never expire.
    raise _reject("malformed", f"{name} is not a JSON value")


_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
_SCAN: Callable[[str, int], tuple[Any, int]] = _DECODER.scan_once  # type: ignore[attr-defined]
_loads, _dumps, _b64decode = orjson.loads, orjson.dumps, pybase64.b64decode
HEADER_CACHE_SIZE = 64


def ascii_token(token: str, max_bytes: int) -> bytes:
    """The token as bytes, if it is within `max_bytes` and ASCII (a compact JWS always is)."""
    if len(token) > max_bytes:
        raise _reject("token-too-large", f"token is {len(token)} bytes, over {max_bytes}")
    try:
        return token.encode("ascii")
    except UnicodeEncodeError:
        raise _reject("malformed", "token is not base64url") from None


def split_jws(raw: bytes) -> list[bytes]:
    """The three segments of a compact JWS, still encoded."""
    parts = raw.split(b".")
    if len(parts) != 3:
        what = "an encrypted JWT (JWE)" if len(parts) == 5 else f"{len(parts)} segments"
        raise _reject("malformed", f"not a signed JWT: {what}")
    return parts


_JSON_SPACE = b" \t\n\r"  # the whitespace JSON allows between tokens


def decode_segment(segment: bytes, what: str) -> dict[str, Any]:
    """A header or payload segment: unpadded base64url of a JSON object without duplicate
    members or non-JSON constants."""
    data = _b64(segment, what)
    # Fast path: orjson parses, and the value's canonical serialisation must be the text
    # itself, or the text with the whitespace between its tokens removed. Either proves
    # there was no duplicate member (a dict serialises each key once, so a text that lost a
    # duplicate has more members than its re-serialisation) and no NaN/Infinity (orjson
    # refuses them). Issuers write compact JSON, so this is the usual case; anything else
    # (escapes, other number spellings, big integers, spaces inside strings of a spaced
    # text) takes the strict decoder below, which decides.
    try:
        value = _loads(data)
    except orjson.JSONDecodeError:
        value = None
    if type(value) is dict:
        canonical = _dumps(value)
        if canonical == data or canonical == data.translate(None, _JSON_SPACE):
            return value
    return _strict_json(data, what)


def _strict_json(data: bytes, what: str) -> dict[str, Any]:
    try:
        text = data.decode("utf-8")
        # The scanner alone when the value spans the whole text (the usual case); otherwise
        # the full decoder, which allows surrounding whitespace and reports everything else.
        try:
            value, end = _SCAN(text, 0)
        except StopIteration:
            end = -1
        if end != len(text):
            value = _DECODER.decode(text)
    except CredentialError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _reject("malformed", f"{what} is not JSON") from None
    if type(value) is not dict:
        raise _reject("malformed", f"{what} is not a JSON object")
    return value


def decode_signature(segment: bytes) -> bytes:
    signature = _b64(segment, "signature")
    if not signature:
        raise _reject("bad-signature", "the token carries no signature")
    return signature


def parse_jws(token: str, max_bytes: int = 16 * 1024) -> ParsedJWS:
    """Split and decode a compact JWS (``header.payload.signature``) without trusting it."""
    raw = ascii_token(token, max_bytes)
    h, p, s = split_jws(raw)
    header = decode_segment(h, "header")
    claims = decode_segment(p, "payload")
    return ParsedJWS(header, claims, raw[: len(h) + 1 + len(p)], decode_signature(s))


def header_fields(header: Mapping[str, Any]) -> tuple[str, str | None]:
    """``(alg, kid)`` of a header whose structure passes the checks that do not depend on
    the issuer: an alg string, no ``crit``, no key-choosing ``jku``/``x5u``/``jwk``, a kid
    (if any) that is a string."""
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
    kid = header.get("kid")
    if "kid" in header and not isinstance(kid, str):
        raise _reject("malformed", "header kid is not a string")
    return alg, kid


def check_alg(alg: str, issuer: IssuerConfig) -> None:
    """`alg` is in the issuer's list (never ``none``; HMAC only with its own secret): one of
    ``issuer.usable_algorithms``, which a hot path may test itself before calling this."""
    if alg in issuer.usable_algorithms:
        return
    if alg not in issuer.algorithms or alg == "none":
        raise _reject("alg-not-allowed", f"alg {alg!r} is not allowed for issuer {issuer.name}")
    if alg in HMAC_ALGORITHMS and issuer.hmac_secret is None:
        raise _reject("alg-not-allowed", f"alg {alg!r} needs a shared secret for {issuer.name}")
    raise _reject("alg-not-allowed", f"alg {alg!r} is not usable for issuer {issuer.name}")


def check_signature(
    alg: str,
    kid: str | None,
    issuer: IssuerConfig,
    keys: Sequence[VerificationKey],
    signing_input: bytes,
    signature: bytes,
    sha256: bytes | None = None,
) -> None:
    """The signature verifies with the issuer's secret (HMAC) or with one of `keys` that has
    the token's kid (every key when it names none) and fits `alg`. `sha256`: the SHA-256 of
    `signing_input`, if the caller has it."""
    if alg in HMAC_ALGORITHMS:
        assert issuer.hmac_secret is not None
        mac = hmac.new(issuer.hmac_secret, signing_input, getattr(hashlib, "sha" + alg[2:]))
        if not hmac.compare_digest(mac.digest(), signature):
            raise BadSignature("the signature does not verify")
        return
    named = usable = False
    for vk in keys:
        if kid is not None and vk.kid != kid:
            continue
        named = True
        check = vk.checks.get(alg)
        if check is None:
            continue
        usable = True
        if sha256 is None:
            sha256 = hashlib.sha256(signing_input).digest()
        if check(signature, signing_input, sha256):
            return
    if kid is not None and not named:
        raise _reject("unknown-kid", "no key of this issuer has the token's kid")
    if not usable:
        raise _reject("alg-not-allowed", f"no key of this issuer is usable with {alg}")
    raise BadSignature("the signature does not verify")


_MAX_TIME = 2.0**53  # far beyond any real time, and exact as a float
_TIME_TYPES = (int, float)  # exactly: bool is an int subclass and never a time


def _time(value: Any, name: str) -> float:
    """A time claim's (non-null) value: a number, not a bool, within ±2**53."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _reject("malformed", f"claim {name!r} is not a number")
    if not -_MAX_TIME <= value <= _MAX_TIME:  # also false for NaN, so NaN is refused too
        raise _reject("malformed", f"claim {name!r} is not a usable time")
    return float(value)


def claim_text(value: Any) -> str | None:
    """A scalar claim value as label text (JSON's spelling of booleans); None otherwise."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    return None


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


def _check_subject(claims: dict[str, Any]) -> None:
    for name in ("sub", "client_id", "azp", "jti"):
        if name in claims and not isinstance(claims[name], str):
            raise _reject("malformed", f"claim {name!r} is not a string")
    if not (
        isinstance(claims.get("sub"), str)
        or isinstance(claims.get("client_id"), str)
        or isinstance(claims.get("azp"), str)
    ):
        raise _reject("missing-claim", "the token names no subject (sub, client_id or azp)")


def check_claims(claims: dict[str, Any], issuer: IssuerConfig, now: float) -> None:
    """Registered and required claims, with the issuer's clock skew."""
    # JWT-SVIDs need not carry iss: their issuer is the trust domain of sub.
    if issuer.kind != "spiffe-jwt" and claims.get("iss") != issuer.issuer:
        raise _reject("issuer-mismatch", f"iss is not {issuer.issuer!r}")
    aud = claims.get("aud")
    if isinstance(aud, str):
        ours = aud in issuer.audiences
    elif isinstance(aud, list) and aud and all(isinstance(a, str) for a in aud):
        ours = any(a in issuer.audiences for a in aud)
    else:
        raise _reject("audience-mismatch", "the token names no audience")
    if not ours:
        raise _reject("audience-mismatch", "the token is for another audience")
    skew = issuer.clock_skew
    # Times: an int or float within ±2**53 on the fast path; `_time` decides everything else
    # (and words the rejection).
    exp = claims.get("exp")
    if exp is None:
        raise _reject("missing-claim", "the token has no exp")
    if exp.__class__ not in _TIME_TYPES or not -_MAX_TIME <= exp <= _MAX_TIME:
        exp = _time(exp, "exp")
    if now > exp + skew:
        raise TokenExpired(f"the token expired {int(now - exp)} s ago")
    nbf = claims.get("nbf")
    if nbf is not None:
        if nbf.__class__ not in _TIME_TYPES or not -_MAX_TIME <= nbf <= _MAX_TIME:
            nbf = _time(nbf, "nbf")
        if now + skew < nbf:
            raise _reject("not-yet-valid", f"the token is valid only in {int(nbf - now)} s")
    iat = claims.get("iat")
    if iat is not None:
        if iat.__class__ not in _TIME_TYPES or not -_MAX_TIME <= iat <= _MAX_TIME:
            iat = _time(iat, "iat")
        if iat > now + skew:
            raise _reject("issued-in-future", f"the token was issued {int(iat - now)} s from now")
    get = claims.get
    if (  # the usual case, decided at once: a string sub, the others strings if present
        get("sub").__class__ is not str
        or get("client_id", "").__class__ is not str
        or get("azp", "").__class__ is not str
        or get("jti", "").__class__ is not str
    ):
        _check_subject(claims)
    for path, allowed in issuer.required_claims:
        value = claim_at(claims, path)
        if value is None or value == []:
            raise _reject("missing-claim", f"required claim {path!r} is missing")
        values = value if isinstance(value, list) else [value]
        # Compared as label text (true → "true"), the same way claims become labels.
        if allowed and not any(claim_text(v) in allowed for v in values):
            raise _reject("claim-mismatch", f"claim {path!r} has no allowed value")


def verify_jws(
    jws: ParsedJWS, issuer: IssuerConfig, keys: Sequence[VerificationKey], now: float
) -> dict[str, Any]:
    """Check `jws` against `issuer`'s policy and `keys`; return the trusted claims."""
    alg, kid = header_fields(jws.header)
    check_alg(alg, issuer)
    check_signature(alg, kid, issuer, keys, jws.signing_input, jws.signature)
    check_claims(jws.claims, issuer, now)
    return jws.claims
