"""The JWT attack corpus: every known way to slip a token past a verifier, each rejected with
its specific reason code (`CredentialError.code`), plus the happy paths of every algorithm.

Keys are generated at test time (module-scoped, never stored). Tokens are built by hand
(base64url JSON + a signature made with `cryptography`) so malformed ones can be crafted; PyJWT
cross-checks the well-formed ones.
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import hmac
import io
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from cport.errors import BadSignature, CredentialError, TokenExpired, UnknownIssuer
from cport.identity import (
    IssuerConfig,
    StaticKeySource,
    VerificationKey,
    Verifier,
    parse_jws,
    verify_jws,
)
from cport.identity._jwt import check_claims

NOW = 1_900_000_000.0
ISS = "https://idp.example.com"
AUD = "cport"
ALL_ALGS = ("RS256", "ES256", "EdDSA", "PS256", "ES384")
ISSUER = IssuerConfig(name="corp", issuer=ISS, audiences=(AUD,), algorithms=ALL_ALGS)
_HASH = {"256": hashes.SHA256(), "384": hashes.SHA384(), "512": hashes.SHA512()}
_EC_SIZE = {"ES256": 32, "ES384": 48, "ES512": 66}


# -- token building --------------------------------------------------------------------------
def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def seg(obj: Any) -> str:
    """A base64url segment: bytes as they are, str as UTF-8, anything else as compact JSON."""
    if isinstance(obj, bytes):
        return b64(obj)
    if isinstance(obj, str):
        return b64(obj.encode())
    return b64(json.dumps(obj, separators=(",", ":")).encode())


def sign(alg: str, key: Any, data: bytes) -> bytes:
    if alg.startswith("RS"):
        return key.sign(data, padding.PKCS1v15(), _HASH[alg[2:]])  # type: ignore[no-any-return]
    if alg.startswith("PS"):
        h = _HASH[alg[2:]]
        return key.sign(data, padding.PSS(padding.MGF1(h), h.digest_size), h)  # type: ignore[no-any-return]
    if alg.startswith("ES"):
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(_HASH[alg[2:]])))
        size = _EC_SIZE[alg]
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    if alg == "EdDSA":
        return key.sign(data)  # type: ignore[no-any-return]
    if alg.startswith("HS"):
        return hmac.new(key, data, getattr(hashlib, "sha" + alg[2:])).digest()
    raise AssertionError(alg)


def claims(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ISS,
        "aud": AUD,
        "sub": "alice",
        "iat": int(NOW) - 10,
        "nbf": int(NOW) - 10,
        "exp": int(NOW) + 600,
    }
    for k, v in over.items():
        if v is None:
            base.pop(k, None)
        else:
            base[k] = v
    return base


def token(
    key: Any,
    alg: str = "RS256",
    payload: Any = None,
    *,
    kid: str | None = "k1",
    header: dict[str, Any] | None = None,
    raw_header: str | None = None,
    raw_payload: str | None = None,
) -> str:
    """Sign header.payload with `key` (None: no signature). `header` replaces the default;
    `raw_header`/`raw_payload` are exact segment texts (already base64url)."""
    if header is None:
        header = {"alg": alg, "typ": "JWT"}
        if kid is not None:
            header["kid"] = kid
    h = raw_header if raw_header is not None else seg(header)
    p = raw_payload if raw_payload is not None else seg(claims() if payload is None else payload)
    data = f"{h}.{p}".encode()
    sig = b"" if key is None else sign(alg, key, data)
    return f"{h}.{p}.{b64(sig)}"


def vk(key: Any, kid: str | None = "k1", alg: str | None = None) -> VerificationKey:
    return VerificationKey(kid, key.public_key(), alg)


def check(tok: str, keys: list[VerificationKey], issuer: IssuerConfig = ISSUER) -> dict[str, Any]:
    """The claims of `tok`, checked by `verify_jws` — and by a `Verifier`, whose own fast
    path (cached headers, memoised labels) must accept exactly the same tokens."""
    out = verify_jws(parse_jws(tok, issuer.max_token_bytes), issuer, keys, NOW)
    if keys:  # a Verifier's key source has keys, or refuses with no-keys
        for verifier in _verifiers(keys, issuer):
            assert verifier.verify(tok, NOW).claims == out
    return out


def _verifiers(keys: list[VerificationKey], issuer: IssuerConfig) -> list[Verifier]:
    """A fresh Verifier, and one whose header cache already holds the usual header (so the
    cached-header path meets every token that carries it)."""
    fresh = Verifier([issuer], StaticKeySource({issuer.name: keys}))
    warm = Verifier([issuer], StaticKeySource({issuer.name: keys}))
    for segment in _USUAL_HEADERS:
        warm._headers[segment.encode()] = ("RS256", "k1")
    return [fresh, warm]


_USUAL_HEADERS = [
    seg({"alg": "RS256", "typ": "JWT", "kid": "k1"}),
    seg({"alg": "RS256", "kid": "k1"}),
]


def rejected(tok: str, keys: list[VerificationKey], issuer: IssuerConfig = ISSUER) -> str:
    """The reason code `tok` is rejected with; the token never appears in the error. A
    `Verifier` rejects it with the same code (``unknown-issuer`` where `verify_jws`, told the
    issuer, says ``issuer-mismatch``), with and without the token's header cached."""
    with pytest.raises(CredentialError) as info:
        check(tok, keys, issuer)
    exc = info.value
    if tok:
        assert tok not in str(exc) and tok not in repr(exc)
    if keys:
        expected = "unknown-issuer" if exc.code == "issuer-mismatch" else exc.code
        for verifier in _verifiers(keys, issuer):
            with pytest.raises(CredentialError) as vinfo:
                verifier.verify(tok, NOW)
            assert vinfo.value.code == expected
            if tok:
                assert tok not in str(vinfo.value) and tok not in repr(vinfo.value)
    return exc.code


# -- keys (generated here, module-scoped) ----------------------------------------------------
@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_rsa() -> rsa.RSAPrivateKey:
    """Another issuer's (or the attacker's) RSA key."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def ec384_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


@pytest.fixture(scope="module")
def ed_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def keys(rsa_key: Any) -> list[VerificationKey]:
    return [vk(rsa_key)]


def rsa_public_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def rsa_public_der(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# -- happy paths -----------------------------------------------------------------------------
@pytest.mark.parametrize("alg", ALL_ALGS)
def test_every_algorithm_verifies(
    alg: str, rsa_key: Any, ec_key: Any, ec384_key: Any, ed_key: Any
) -> None:
    key = {"RS256": rsa_key, "PS256": rsa_key, "ES256": ec_key, "ES384": ec384_key}.get(alg, ed_key)
    tok = token(key, alg)
    assert check(tok, [vk(key)]) == claims()
    # And through PyJWT, an independent encoder.
    tok2 = pyjwt.encode(claims(), key, algorithm=alg, headers={"kid": "k1"})
    assert check(tok2, [vk(key)])["sub"] == "alice"


def test_key_without_kid_and_token_without_kid(rsa_key: Any, ec_key: Any) -> None:
    tok = token(rsa_key, kid=None)
    assert check(tok, [vk(ec_key, None), vk(rsa_key, None)])["sub"] == "alice"
    # a token without kid is tried against every fitting key of the issuer
    assert check(tok, [vk(rsa_key, "a")])["sub"] == "alice"


# -- alg none and algorithm confusion --------------------------------------------------------
def test_alg_none_without_signature_is_rejected(keys: list[VerificationKey]) -> None:
    tok = token(None, "none")
    assert tok.endswith(".")
    # parse_jws refuses an empty signature before looking at alg
    assert rejected(tok, keys) == "bad-signature"


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_alg_none_with_a_signature(alg: str, keys: list[VerificationKey], rsa_key: Any) -> None:
    h = seg({"alg": alg, "kid": "k1"})
    p = seg(claims())
    sig = sign("RS256", rsa_key, f"{h}.{p}".encode())
    assert rejected(f"{h}.{p}.{b64(sig)}", keys) == "alg-not-allowed"


def test_alg_none_refused_even_if_configured(keys: list[VerificationKey]) -> None:
    lax = IssuerConfig(name="corp", issuer=ISS, audiences=(AUD,), algorithms=("none", "RS256"))
    h, p = seg({"alg": "none"}), seg(claims())
    assert rejected(f"{h}.{p}.{b64(b'x')}", keys, lax) == "alg-not-allowed"


@pytest.mark.parametrize("encoding", ["pem", "der"])
@pytest.mark.parametrize("algorithms", [ALL_ALGS, (*ALL_ALGS, "HS256")])
def test_hs256_with_rsa_public_key_as_secret(
    encoding: str, algorithms: tuple[str, ...], rsa_key: Any, keys: list[VerificationKey]
) -> None:
    secret = rsa_public_pem(rsa_key) if encoding == "pem" else rsa_public_der(rsa_key)
    tok = token(secret, "HS256")
    issuer = IssuerConfig(name="corp", issuer=ISS, audiences=(AUD,), algorithms=algorithms)
    # HS256 is refused without a configured shared secret, even when listed
    assert rejected(tok, keys, issuer) == "alg-not-allowed"


def test_hs256_only_with_a_configured_secret(rsa_key: Any, keys: list[VerificationKey]) -> None:
    secret = b"s" * 32
    issuer = IssuerConfig(
        name="corp", issuer=ISS, audiences=(AUD,), algorithms=("RS256", "HS256"),
        hmac_secret=secret,
    )  # fmt: skip
    assert check(token(secret, "HS256"), keys, issuer)["sub"] == "alice"
    assert check(token(secret, "HS256"), [], issuer)["sub"] == "alice"  # no JWKS needed
    confused = token(rsa_public_pem(rsa_key), "HS256")
    assert rejected(confused, keys, issuer) == "bad-signature"
    assert rejected(token(rsa_public_der(rsa_key), "HS256"), keys, issuer) == "bad-signature"
    # HS384 is not in this issuer's list
    assert rejected(token(secret, "HS384"), keys, issuer) == "alg-not-allowed"


def test_alg_not_in_issuer_list(rsa_key: Any) -> None:
    only_es = IssuerConfig(name="corp", issuer=ISS, audiences=(AUD,), algorithms=("ES256",))
    assert rejected(token(rsa_key, "RS256"), [vk(rsa_key)], only_es) == "alg-not-allowed"


@pytest.mark.parametrize(
    "header", [{"typ": "JWT"}, {"alg": 256}, {"alg": None}, {"alg": ["RS256"]}]
)
def test_alg_missing_or_not_a_string(header: dict[str, Any], keys: list[VerificationKey]) -> None:
    tok = f"{seg(header)}.{seg(claims())}.{b64(b'sig')}"
    assert rejected(tok, keys) == "malformed"


def test_es256_token_against_rsa_key_of_same_kid(ec_key: Any, rsa_key: Any) -> None:
    assert rejected(token(ec_key, "ES256"), [vk(rsa_key)]) == "alg-not-allowed"


def test_key_type_and_curve_must_fit(
    rsa_key: Any, ec_key: Any, ec384_key: Any, ed_key: Any
) -> None:
    assert rejected(token(ed_key, "EdDSA"), [vk(ec_key)]) == "alg-not-allowed"
    assert rejected(token(ec384_key, "ES384"), [vk(ec_key)]) == "alg-not-allowed"
    assert rejected(token(ec_key, "ES256"), [vk(ec384_key)]) == "alg-not-allowed"
    assert rejected(token(rsa_key, "RS256"), [vk(ed_key)]) == "alg-not-allowed"
    # the JWK's own "alg" constrains the key
    assert rejected(token(rsa_key, "PS256"), [vk(rsa_key, alg="RS256")]) == "alg-not-allowed"
    assert check(token(rsa_key, "RS256"), [vk(rsa_key, alg="RS256")])["sub"] == "alice"


def test_rsa_key_shorter_than_2048_bits() -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    assert rejected(token(weak, "RS256"), [vk(weak)]) == "alg-not-allowed"
    assert rejected(token(weak, "PS256"), [vk(weak)]) == "alg-not-allowed"


# -- signatures ------------------------------------------------------------------------------
def test_valid_signature_from_another_issuers_key(other_rsa: Any, rsa_key: Any) -> None:
    assert rejected(token(other_rsa, "RS256"), [vk(rsa_key)]) == "bad-signature"


def test_tampered_payload(rsa_key: Any, keys: list[VerificationKey]) -> None:
    h, _p, s = token(rsa_key).split(".")
    forged = f"{h}.{seg(claims(sub='admin'))}.{s}"
    with pytest.raises(BadSignature):
        check(forged, keys)
    assert rejected(forged, keys) == "bad-signature"


def test_tampered_header(rsa_key: Any, keys: list[VerificationKey]) -> None:
    _h, p, s = token(rsa_key).split(".")
    forged = f"{seg({'alg': 'RS256', 'kid': 'k1', 'x': 1})}.{p}.{s}"
    assert rejected(forged, keys) == "bad-signature"


def test_garbage_signature(keys: list[VerificationKey]) -> None:
    tok = f"{seg({'alg': 'RS256', 'kid': 'k1'})}.{seg(claims())}.{b64(os.urandom(256))}"
    assert rejected(tok, keys) == "bad-signature"


def test_es256_signature_in_der(ec_key: Any) -> None:
    h, p = seg({"alg": "ES256", "kid": "k1"}), seg(claims())
    der = ec_key.sign(f"{h}.{p}".encode(), ec.ECDSA(hashes.SHA256()))
    assert rejected(f"{h}.{p}.{b64(der)}", [vk(ec_key)]) == "bad-signature"


def test_es256_signature_wrong_length(ec_key: Any) -> None:
    tok = token(ec_key, "ES256")
    h, p, s = tok.split(".")
    raw = base64.urlsafe_b64decode(s + "==")
    for sig in (raw[:-1], raw + bytes(1), raw[:32]):
        assert rejected(f"{h}.{p}.{b64(sig)}", [vk(ec_key)]) == "bad-signature"


# -- key-selecting headers -------------------------------------------------------------------
def test_unknown_kid(rsa_key: Any, keys: list[VerificationKey]) -> None:
    assert rejected(token(rsa_key, kid="k2"), keys) == "unknown-kid"


@pytest.fixture
def no_file_access(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    opened: list[str] = []

    def refuse(path: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(str(path))
        raise AssertionError(f"file access during verification: {path}")

    for target, name in ((builtins, "open"), (io, "open"), (os, "open")):
        monkeypatch.setattr(target, name, refuse)
    yield opened


@pytest.mark.parametrize(
    "kid", ["../../etc/passwd", "/etc/passwd", "..\\..\\windows\\win.ini", "k1/../k1", "k1\x00"]
)
def test_path_traversal_kid(
    kid: str, rsa_key: Any, keys: list[VerificationKey], no_file_access: list[str]
) -> None:
    tok = token(rsa_key, kid=kid)
    assert rejected(tok, keys) == "unknown-kid"
    verifier = Verifier([ISSUER], StaticKeySource({"corp": keys}))
    with pytest.raises(CredentialError) as info:
        verifier.verify(tok, NOW)
    assert info.value.code == "unknown-kid"
    assert no_file_access == []


@pytest.mark.parametrize("kid", [123, ["k1"], {"k": "k1"}, True, None])
def test_kid_not_a_string(kid: Any, rsa_key: Any, keys: list[VerificationKey]) -> None:
    tok = token(rsa_key, header={"alg": "RS256", "kid": kid})
    assert rejected(tok, keys) == "malformed"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("jku", "https://attacker.example/jwks.json"),
        ("jku", ISS + "/jwks.json"),
        ("x5u", "https://attacker.example/cert.pem"),
    ],
)
def test_key_url_headers(name: str, value: str, rsa_key: Any, keys: list[VerificationKey]) -> None:
    tok = token(rsa_key, header={"alg": "RS256", "kid": "k1", name: value})
    assert rejected(tok, keys) == "untrusted-key-header"


def test_embedded_jwk_header(other_rsa: Any, keys: list[VerificationKey]) -> None:
    pub = other_rsa.public_key().public_numbers()

    def n2b(n: int) -> str:
        return b64(n.to_bytes((n.bit_length() + 7) // 8, "big"))

    jwk = {"kty": "RSA", "n": n2b(pub.n), "e": n2b(pub.e), "kid": "k1"}
    tok = token(other_rsa, header={"alg": "RS256", "kid": "k1", "jwk": jwk})
    assert rejected(tok, keys) == "untrusted-key-header"


def test_x5c_header_does_not_choose_the_key(other_rsa: Any, keys: list[VerificationKey]) -> None:
    # Not refused by name, but never used: the key still comes from the issuer.
    tok = token(other_rsa, header={"alg": "RS256", "kid": "k1", "x5c": ["MIIB"]})
    assert rejected(tok, keys) == "bad-signature"


@pytest.mark.parametrize("crit", [[], ["exp"], ["b64"], "exp"])
def test_crit_header(crit: Any, rsa_key: Any, keys: list[VerificationKey]) -> None:
    tok = token(rsa_key, header={"alg": "RS256", "kid": "k1", "crit": crit, "exp": 1})
    assert rejected(tok, keys) == "crit-header"


# -- structure -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda t: ".".join(t.split(".")[:2]), id="two-segments"),
        pytest.param(lambda t: t.split(".")[0], id="one-segment"),
        pytest.param(lambda t: t + ".x.y", id="five-segments-jwe"),
        pytest.param(lambda t: t + ".", id="four-segments"),
        pytest.param(lambda t: "", id="empty"),
        pytest.param(lambda t: "..", id="dots-only"),
    ],
)
def test_wrong_number_of_segments(mutate: Any, rsa_key: Any, keys: list[VerificationKey]) -> None:
    assert rejected(mutate(token(rsa_key)), keys) == "malformed"


def test_jwe_message() -> None:
    with pytest.raises(CredentialError, match="JWE") as info:
        parse_jws("a.b.c.d.e")
    assert info.value.code == "malformed"


def _padded(segment: str) -> str:
    return segment + "=" * (-len(segment) % 4 or 4)


@pytest.mark.parametrize("index", [0, 1, 2])
def test_padding_in_a_segment(index: int, rsa_key: Any, keys: list[VerificationKey]) -> None:
    parts = token(rsa_key).split(".")
    parts[index] = _padded(parts[index])
    assert "=" in parts[index]
    assert rejected(".".join(parts), keys) == "malformed"


@pytest.mark.parametrize("bad", ["+", "/", " ", "!", "\n", "é"])
@pytest.mark.parametrize("index", [0, 1, 2])
def test_non_base64url_characters(
    bad: str, index: int, rsa_key: Any, keys: list[VerificationKey]
) -> None:
    parts = token(rsa_key).split(".")
    parts[index] = parts[index][:4] + bad + parts[index][5:]
    assert rejected(".".join(parts), keys) == "malformed"


def test_impossible_base64_length(rsa_key: Any, keys: list[VerificationKey]) -> None:
    h, p, s = token(rsa_key).split(".")
    assert len(h + "A") % 4 == 1 or len(h + "AA") % 4 == 1
    extra = "A" if len(h + "A") % 4 == 1 else "AA"
    assert rejected(f"{h}{extra}.{p}.{s}", keys) == "malformed"


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"not json", id="not-json"),
        pytest.param(b'["alg", "RS256"]', id="list"),
        pytest.param(b'"RS256"', id="string"),
        pytest.param(b"42", id="number"),
        pytest.param(b"null", id="null"),
        pytest.param(b"", id="empty"),
        pytest.param(b'{"alg": "RS256"', id="truncated"),
        pytest.param(b'\xff\xfe{"alg":"RS256"}', id="not-utf8"),
        pytest.param(b"{}[]", id="trailing-data"),
    ],
)
@pytest.mark.parametrize("where", ["header", "payload"])
def test_segment_not_a_json_object(
    raw: bytes, where: str, rsa_key: Any, keys: list[VerificationKey]
) -> None:
    if where == "header":
        tok = token(rsa_key, raw_header=b64(raw))
    else:
        tok = token(rsa_key, raw_payload=b64(raw))
    assert rejected(tok, keys) == "malformed"


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("NaN", id="nan"),
        pytest.param("Infinity", id="inf"),
        pytest.param("-Infinity", id="-inf"),
        pytest.param("1e400", id="1e400"),
        pytest.param("-1e400", id="-1e400"),
        pytest.param("1" + "0" * 400, id="10**400"),
        pytest.param("-1" + "0" * 400, id="-10**400"),
        pytest.param("1e300", id="1e300"),
    ],
)
@pytest.mark.parametrize("name", ["exp", "nbf", "iat"])
def test_non_finite_times_are_malformed(
    name: str, value: str, rsa_key: Any, keys: list[VerificationKey]
) -> None:
    # NaN/Infinity are not JSON (Python's parser accepts them); 1e400 is inf as a float and
    # 10**400 overflows one: a signed exp like these must not mean "never expires".
    body = json.dumps(claims(**{name: None}))[:-1] + f', "{name}": {value}}}'
    tok = token(rsa_key, raw_payload=b64(body.encode()))
    assert rejected(tok, keys) == "malformed"


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_json_constants_anywhere_are_malformed(
    constant: str, rsa_key: Any, keys: list[VerificationKey]
) -> None:
    body = json.dumps(claims())[:-1] + f', "score": {constant}}}'
    assert rejected(token(rsa_key, raw_payload=b64(body.encode())), keys) == "malformed"
    header = '{"alg":"RS256","kid":"k1","x":' + constant + "}"
    assert rejected(token(rsa_key, raw_header=b64(header.encode())), keys) == "malformed"


def test_oversized_token(rsa_key: Any, keys: list[VerificationKey]) -> None:
    tok = token(rsa_key, payload=claims(pad="x" * 20_000))
    assert rejected(tok, keys) == "token-too-large"
    small = IssuerConfig(name="corp", issuer=ISS, audiences=(AUD,), max_token_bytes=512)
    tok2 = token(rsa_key, payload=claims(pad="x" * 600))
    assert rejected(tok2, keys, small) == "token-too-large"
    with pytest.raises(CredentialError) as info:
        parse_jws("x" * 17_000)
    assert info.value.code == "token-too-large"


def test_size_limit_is_per_issuer_in_the_verifier(
    rsa_key: Any, keys: list[VerificationKey]
) -> None:
    small = IssuerConfig(name="small", issuer=ISS, audiences=(AUD,), max_token_bytes=512)
    big = IssuerConfig(name="big", issuer="https://big.example", audiences=(AUD,))
    verifier = Verifier([small, big], StaticKeySource({"small": keys, "big": keys}))
    tok = token(rsa_key, payload=claims(pad="x" * 600))
    with pytest.raises(CredentialError) as info:
        verifier.verify(tok, NOW)
    assert info.value.code == "token-too-large"
    huge = token(rsa_key, payload=claims(iss="https://big.example", pad="x" * 20_000))
    with pytest.raises(CredentialError) as info:
        verifier.verify(huge, NOW)
    assert info.value.code == "token-too-large"


_PIN_SCRIPT = textwrap.dedent(
    """
    import base64, gc, json, sys
    from cport.identity import parse_jws

    def b64(b):
        return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

    toks = []
    for i in range(1100):
        hdr = {"alg": "RS256", "n": i, **{f"k{j}": j for j in range(1000)}}
        toks.append(b64(json.dumps(hdr, separators=(",", ":")).encode()) + ".e30." + b64(b"x"))
    gc.collect()
    before = sys.getallocatedblocks()
    for tok in toks:
        parse_jws(tok)  # never verified: no key, no issuer, not even a valid payload
    gc.collect()
    print(sys.getallocatedblocks() - before)
    """
)


def test_unauthenticated_headers_are_not_retained() -> None:
    # A fresh interpreter: the header cache is process-wide state.
    out = subprocess.run(
        [sys.executable, "-c", _PIN_SCRIPT], capture_output=True, text=True, check=True
    )
    retained_blocks = int(out.stdout)
    assert retained_blocks < 100_000


def test_the_verifier_caches_only_verified_headers(
    rsa_key: Any, other_rsa: Any, keys: list[VerificationKey]
) -> None:
    verifier = Verifier([ISSUER], StaticKeySource({"corp": keys}))
    forged = token(other_rsa, header={"alg": "RS256", "kid": "k1", "x": "forged"})
    with pytest.raises(CredentialError):
        verifier.verify(forged, NOW)
    assert verifier._headers == {}  # a header whose signature failed is never kept
    good = token(rsa_key)
    verifier.verify(good, NOW)
    assert list(verifier._headers) == [good.split(".")[0].encode()]


def test_duplicate_member_in_header(rsa_key: Any, keys: list[VerificationKey]) -> None:
    raw = b64(b'{"alg":"RS256","kid":"k1","alg":"none"}')
    assert rejected(token(rsa_key, raw_header=raw), keys) == "malformed"
    raw2 = b64(b'{"alg":"none","kid":"k1","alg":"RS256"}')
    assert rejected(token(rsa_key, raw_header=raw2), keys) == "malformed"


def test_duplicate_member_in_payload(rsa_key: Any, keys: list[VerificationKey]) -> None:
    body = json.dumps(claims())[:-1] + ', "sub": "admin"}'
    assert rejected(token(rsa_key, raw_payload=b64(body.encode())), keys) == "malformed"
    nested = json.dumps(claims(act={"sub": "a"}))[:-2] + ', "sub": "b"}}'
    assert rejected(token(rsa_key, raw_payload=b64(nested.encode())), keys) == "malformed"


@pytest.mark.parametrize("shape", ["array", "object"])
@pytest.mark.parametrize("where", ["header", "payload"])
def test_deep_nesting_is_malformed_not_recursion_error(
    shape: str, where: str, rsa_key: Any
) -> None:
    depth = 100_000
    deep = "[" * depth + "]" * depth
    if shape == "object":
        deep = '{"a":' * depth + "1" + "}" * depth
    if where == "header":
        text = '{"alg":"RS256","kid":"k1","x":' + deep + "}"
        tok = token(rsa_key, raw_header=b64(text.encode()))
    else:
        text = json.dumps(claims())[:-1] + ', "groups": ' + deep + "}"
        tok = token(rsa_key, raw_payload=b64(text.encode()))
    with pytest.raises(CredentialError) as info:
        parse_jws(tok, max_bytes=10 * 1024 * 1024)
    assert info.value.code == "malformed"
    # within the default size limit it is simply too large
    with pytest.raises(CredentialError) as info:
        parse_jws(tok)
    assert info.value.code == "token-too-large"


# -- claims ----------------------------------------------------------------------------------
def test_expired_beyond_skew(rsa_key: Any, keys: list[VerificationKey]) -> None:
    tok = token(rsa_key, payload=claims(exp=int(NOW) - 61, iat=int(NOW) - 600, nbf=None))
    with pytest.raises(TokenExpired):
        check(tok, keys)
    assert rejected(tok, keys) == "expired"


def test_expired_within_skew_is_accepted(rsa_key: Any, keys: list[VerificationKey]) -> None:
    tok = token(rsa_key, payload=claims(exp=int(NOW) - 59, iat=int(NOW) - 600, nbf=None))
    assert check(tok, keys)["sub"] == "alice"
    # exactly at the edge: still accepted (now == exp + skew)
    edge = token(rsa_key, payload=claims(exp=int(NOW) - 60, iat=int(NOW) - 600, nbf=None))
    assert check(edge, keys)["sub"] == "alice"


def test_skew_is_the_issuers(rsa_key: Any, keys: list[VerificationKey]) -> None:
    strict = IssuerConfig(name="corp", issuer=ISS, audiences=(AUD,), clock_skew=0)
    tok = token(rsa_key, payload=claims(exp=int(NOW) - 1, iat=int(NOW) - 600, nbf=None))
    assert rejected(tok, keys, strict) == "expired"


def test_not_yet_valid(rsa_key: Any, keys: list[VerificationKey]) -> None:
    tok = token(rsa_key, payload=claims(nbf=int(NOW) + 61))
    assert rejected(tok, keys) == "not-yet-valid"
    ok = token(rsa_key, payload=claims(nbf=int(NOW) + 59))
    assert check(ok, keys)["sub"] == "alice"


def test_issued_in_future(rsa_key: Any, keys: list[VerificationKey]) -> None:
    tok = token(rsa_key, payload=claims(iat=int(NOW) + 86_400, nbf=None, exp=int(NOW) + 90_000))
    assert rejected(tok, keys) == "issued-in-future"
    ok = token(rsa_key, payload=claims(iat=int(NOW) + 30))
    assert check(ok, keys)["sub"] == "alice"


@pytest.mark.parametrize(
    "aud",
    [
        pytest.param("other", id="wrong"),
        pytest.param(None, id="missing"),
        pytest.param([], id="empty-list"),
        pytest.param(["other", "another"], id="list-without"),
        pytest.param(["cport", 1], id="list-with-non-string"),
        pytest.param(42, id="number"),
        pytest.param({"cport": True}, id="object"),
        pytest.param("CPORT", id="case"),
        pytest.param("", id="empty"),
    ],
)
def test_audience_mismatch(aud: Any, rsa_key: Any, keys: list[VerificationKey]) -> None:
    payload = claims()
    if aud is None:
        del payload["aud"]
    else:
        payload["aud"] = aud
    assert rejected(token(rsa_key, payload=payload), keys) == "audience-mismatch"


def test_audience_list_containing_ours(rsa_key: Any, keys: list[VerificationKey]) -> None:
    tok = token(rsa_key, payload=claims(aud=["other", AUD]))
    assert check(tok, keys)["aud"] == ["other", AUD]


@pytest.mark.parametrize(
    "iss", ["https://evil.example", ISS + "/", "http://idp.example.com", "", 1, ["https://x"]]
)
def test_wrong_issuer(iss: Any, rsa_key: Any, keys: list[VerificationKey]) -> None:
    tok = token(rsa_key, payload=claims(iss=iss))
    assert rejected(tok, keys) == "issuer-mismatch"
    verifier = Verifier([ISSUER], StaticKeySource({"corp": keys}))
    with pytest.raises(UnknownIssuer) as info:
        verifier.verify(tok, NOW)
    assert info.value.code == "unknown-issuer"


def test_missing_issuer(rsa_key: Any, keys: list[VerificationKey]) -> None:
    tok = token(rsa_key, payload=claims(iss=None))
    assert rejected(tok, keys) == "issuer-mismatch"
    with pytest.raises(CredentialError) as info:
        Verifier([ISSUER], StaticKeySource({"corp": keys})).verify(tok, NOW)
    assert info.value.code == "unknown-issuer"


@pytest.mark.parametrize("name", ["exp", "nbf", "iat"])
@pytest.mark.parametrize("value", [str(int(NOW) + 600), True, [1], {"v": 1}])
def test_time_claim_not_a_number(
    name: str, value: Any, rsa_key: Any, keys: list[VerificationKey]
) -> None:
    tok = token(rsa_key, payload=claims(**{name: value}))
    assert rejected(tok, keys) == "malformed"


def test_exp_missing(rsa_key: Any, keys: list[VerificationKey]) -> None:
    assert rejected(token(rsa_key, payload=claims(exp=None)), keys) == "missing-claim"


def test_float_times_are_accepted(rsa_key: Any, keys: list[VerificationKey]) -> None:
    tok = token(rsa_key, payload=claims(exp=NOW + 600.5, iat=NOW - 0.5, nbf=NOW - 0.5))
    assert check(tok, keys)["exp"] == NOW + 600.5


def test_no_subject(rsa_key: Any, keys: list[VerificationKey]) -> None:
    assert rejected(token(rsa_key, payload=claims(sub=None)), keys) == "missing-claim"


@pytest.mark.parametrize("name", ["client_id", "azp"])
def test_subject_from_client_id_or_azp(
    name: str, rsa_key: Any, keys: list[VerificationKey]
) -> None:
    tok = token(rsa_key, payload=claims(sub=None, **{name: "svc"}))
    assert check(tok, keys)[name] == "svc"


@pytest.mark.parametrize("name", ["sub", "client_id", "azp", "jti"])
def test_identifying_claims_must_be_strings(
    name: str, rsa_key: Any, keys: list[VerificationKey]
) -> None:
    tok = token(rsa_key, payload=claims(**{name: 12345}))
    assert rejected(tok, keys) == "malformed"


def _requiring(*required: tuple[str, tuple[str, ...]]) -> IssuerConfig:
    return IssuerConfig(name="corp", issuer=ISS, audiences=(AUD,), required_claims=required)


def test_required_claims(rsa_key: Any, keys: list[VerificationKey]) -> None:
    issuer = _requiring(("tenant", ("acme",)), ("realm_access.roles", ("cport",)), ("mfa", ()))
    good = claims(tenant="acme", realm_access={"roles": ["x", "cport"]}, mfa=True)
    assert check(token(rsa_key, payload=good), keys, issuer)["tenant"] == "acme"

    missing = dict(good)
    del missing["tenant"]
    assert rejected(token(rsa_key, payload=missing), keys, issuer) == "missing-claim"
    no_mfa = dict(good)
    del no_mfa["mfa"]
    assert rejected(token(rsa_key, payload=no_mfa), keys, issuer) == "missing-claim"
    nested_missing = {**good, "realm_access": {}}
    assert rejected(token(rsa_key, payload=nested_missing), keys, issuer) == "missing-claim"

    wrong = {**good, "tenant": "evil"}
    assert rejected(token(rsa_key, payload=wrong), keys, issuer) == "claim-mismatch"
    wrong_list = {**good, "realm_access": {"roles": ["x"]}}
    assert rejected(token(rsa_key, payload=wrong_list), keys, issuer) == "claim-mismatch"


def test_check_claims_is_pure() -> None:
    check_claims(claims(), ISSUER, NOW)
    with pytest.raises(CredentialError) as info:
        check_claims(claims(), ISSUER, NOW + 10_000)
    assert info.value.code == "expired"


# -- order of checks: a forged token learns nothing about the claims ------------------------
def test_signature_checked_before_claims(other_rsa: Any, keys: list[VerificationKey]) -> None:
    expired = claims(exp=int(NOW) - 10_000, iat=int(NOW) - 20_000, nbf=None, aud="other")
    assert rejected(token(other_rsa, payload=expired), keys) == "bad-signature"
