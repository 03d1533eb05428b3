"""What makes cold verification cheap must not change a single answer: the per-issuer memo of
label sets, the cache of verified headers, the signature checks prepared per key, and the
identity built slot by slot. Each is held against the plain computation it replaces.

(No timings here: bench/bench_verify.py measures; these tests only pin behaviour.)
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import math
from typing import Any

import jwt as pyjwt
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from cport.errors import CredentialError, TokenExpired
from cport.identity import (
    ClaimLabel,
    IssuerConfig,
    Labels,
    StaticKeySource,
    VerificationKey,
    VerifiedIdentity,
    Verifier,
    _claims,
    _jwt,
)
from cport.identity._claims import oidc_labels
from cport.identity._credentials import verified_identity
from cport.identity._jwt import check_signature, signature_checks

NOW = 1_900_000_000.0
ISS = "https://idp.example.com"
OKTA = IssuerConfig(
    name="corp-okta",
    issuer=ISS,
    audiences=("cport",),
    claim_labels=(
        ClaimLabel("groups", "groups"),
        ClaimLabel("email", "email"),
        ClaimLabel("realm_access.roles", "roles"),
    ),
)


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def claims(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ISS,
        "aud": "cport",
        "sub": "alice",
        "iat": int(NOW) - 10,
        "exp": int(NOW) + 600,
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def make_token(key: Any, payload: dict[str, Any], *, alg: str = "RS256", kid: str = "k1") -> str:
    return pyjwt.encode(payload, key, algorithm=alg, headers={"kid": kid})


def verifier_for(key: Any, *issuers: IssuerConfig) -> Verifier:
    issuers = issuers or (OKTA,)
    source = StaticKeySource({i.name: [VerificationKey("k1", key.public_key())] for i in issuers})
    return Verifier(list(issuers), source)


def labels_of(verifier: Verifier, tok: str) -> set[str]:
    return set(verifier.verify(tok, NOW).labels.strings())


# -- the label memo --------------------------------------------------------------------------
# Claims whose labels must come out the same with and without a memo, memoised or not.
CORPUS: list[dict[str, Any]] = [
    claims(),
    claims(groups=["dba", "dev"], email="alice@corp.example"),
    claims(groups=["dev", "dba", "dba"]),
    claims(groups="dba"),
    claims(groups=[]),
    claims(groups=[""]),
    claims(groups=["1"]),
    claims(groups=[1]),
    claims(groups=[True]),
    claims(groups=[1.0]),
    claims(groups=1),
    claims(groups=True),
    claims(groups=["dba", 1, None, {"x": 1}, ["y"]]),
    claims(groups={"dba": True}),
    claims(groups=[f"g{i}" for i in range(300)]),  # over the memo's list limit, and over 256
    claims(email=None, groups=None),
    claims(sub=None, client_id="svc", groups=["dba"]),
    claims(sub="", azp="app", groups=["dba"]),
    claims(realm_access={"roles": ["admin"]}),
    claims(**{"realm_access.roles": ["top-level"], "realm_access": {"roles": ["nested"]}}),
    claims(realm_access={"roles": "admin"}, groups=["dba"]),
    claims(act={"sub": "agent-7", "scope": "read"}, groups=["dba"]),
    claims(act=None, groups=["dba"]),
]


# Mappings whose label names collide (with each other, or with iss/sub) cannot be laid out
# in canonical order up front; the memo then builds its label sets through `Labels`.
SHARED_NAMES = dataclasses.replace(
    OKTA,
    name="shared",
    claim_labels=(
        ClaimLabel("groups", "groups"),
        ClaimLabel("realm_access.roles", "groups"),
        ClaimLabel("email", "sub"),
        ClaimLabel("client_id", "a-first"),
    ),
)


def test_label_layout_is_the_sorted_names_or_none_when_they_collide() -> None:
    assert OKTA.label_layout == (
        ("email", 1),
        ("groups", 0),
        ("iss", -1),
        ("roles", 2),
        ("sub", -2),
    )
    assert SHARED_NAMES.label_layout is None
    assert dataclasses.replace(OKTA, claim_labels=()).label_layout == (("iss", -1), ("sub", -2))
    assert dataclasses.replace(OKTA, claim_labels=(ClaimLabel("x", "iss"),)).label_layout is None


@pytest.mark.parametrize("issuer", [OKTA, SHARED_NAMES], ids=["layout", "shared-names"])
@pytest.mark.parametrize("payload", CORPUS)
def test_memoised_labels_equal_the_plain_mapping(
    payload: dict[str, Any], issuer: IssuerConfig
) -> None:
    plain = oidc_labels(payload, issuer)
    memo: dict[tuple[Any, ...], Labels] = {}
    first = oidc_labels(payload, issuer, memo)
    again = oidc_labels(payload, issuer, memo)
    assert first == plain and again == plain
    # built in canonical order, it is exactly the set `Labels` makes of the same labels
    assert tuple(first[0]) == tuple(Labels(list(plain[0])))
    assert hash(first[0]) == hash(plain[0])


def test_memo_never_serves_labels_across_different_claims() -> None:
    memo: dict[tuple[Any, ...], Labels] = {}
    for payload in CORPUS:  # all in one memo, in order, then again in reverse
        oidc_labels(payload, OKTA, memo)
    for payload in reversed(CORPUS):
        assert oidc_labels(payload, OKTA, memo) == oidc_labels(payload, OKTA)
    # values equal as Python keys but not as labels are never confused
    as_text = {str(lab) for lab in oidc_labels(claims(groups=["1"]), OKTA, memo)[0]}
    as_bool = {str(lab) for lab in oidc_labels(claims(groups=[True]), OKTA, memo)[0]}
    assert "oidc:groups=1" in as_text and "oidc:groups=true" in as_bool
    assert "oidc:groups=true" not in as_text and "oidc:groups=1" not in as_bool


def test_memo_is_not_shared_between_issuers(rsa_key: Any) -> None:
    other = IssuerConfig(
        name="corp-azure",
        issuer="https://login.example.net",
        audiences=("cport",),
        claim_labels=(ClaimLabel("email", "mail"),),
    )
    verifier = verifier_for(rsa_key, OKTA, other)
    same = {"sub": "alice", "groups": ["dba"], "email": "a@corp.example"}
    okta = labels_of(verifier, make_token(rsa_key, claims(**same)))
    azure = labels_of(verifier, make_token(rsa_key, claims(iss=other.issuer, **same)))
    assert okta == {
        "oidc:iss=corp-okta",
        "oidc:sub=alice",
        "oidc:groups=dba",
        "oidc:email=a@corp.example",
    }
    assert azure == {"oidc:iss=corp-azure", "oidc:sub=alice", "oidc:mail=a@corp.example"}
    # and a memo handed the other issuer by mistake still keys on the issuer's name
    memo: dict[tuple[Any, ...], Labels] = {}
    oidc_labels(claims(**same), OKTA, memo)
    assert oidc_labels(claims(**same), other, memo) == oidc_labels(claims(**same), other)


def test_one_holder_shares_one_label_set_but_not_the_identity(rsa_key: Any) -> None:
    verifier = verifier_for(rsa_key)
    a = verifier.verify(make_token(rsa_key, claims(jti="a", groups=["dba"])), NOW)
    b = verifier.verify(
        make_token(rsa_key, claims(jti="b", groups=["dba"], exp=int(NOW) + 60)), NOW
    )
    assert a.labels is b.labels  # memoised
    assert (a.token_id, a.expires_at) == ("a", NOW + 600)
    assert (b.token_id, b.expires_at) == ("b", NOW + 60)  # each token's own expiry
    c = verifier.verify(make_token(rsa_key, claims(jti="c", groups=["dba", "dev"])), NOW)
    assert c.labels != a.labels and "oidc:groups=dev" in c.labels.strings()


def test_memoised_labels_never_rescue_an_expired_token(rsa_key: Any) -> None:
    verifier = verifier_for(rsa_key)
    verifier.verify(make_token(rsa_key, claims(jti="live", groups=["dba"])), NOW)
    expired = make_token(rsa_key, claims(jti="old", groups=["dba"], exp=int(NOW) - 3600))
    with pytest.raises(TokenExpired):
        verifier.verify(expired, NOW)
    # and a verified token is served from the cache only until its own exp
    tok = make_token(rsa_key, claims(jti="short", groups=["dba"], exp=int(NOW) + 5))
    assert verifier.verify(tok, NOW).expires_at == NOW + 5
    assert verifier.cached(tok, NOW + 5) is None
    with pytest.raises(TokenExpired):
        verifier.verify(tok, NOW + 5 + OKTA.clock_skew + 1)


def test_memo_is_bounded_oldest_first(rsa_key: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_claims, "MEMO_SIZE", 3)
    verifier = verifier_for(rsa_key)
    for i in range(10):
        verifier.verify(make_token(rsa_key, claims(sub=f"user{i}")), NOW)
    memo = verifier._by_iss[ISS][1]
    assert len(memo) == 3
    assert [key[1] for key in memo] == ["user7", "user8", "user9"]
    # an evicted holder is simply mapped afresh
    again = verifier.verify(make_token(rsa_key, claims(sub="user0", jti="again")), NOW)
    assert "oidc:sub=user0" in again.labels.strings()
    assert len(memo) == 3


def test_rejected_tokens_fill_no_memo_and_no_header_cache(rsa_key: Any) -> None:
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    verifier = verifier_for(rsa_key)
    for i in range(5):
        forged = make_token(attacker, claims(sub=f"mallory{i}"))
        with pytest.raises(CredentialError):
            verifier.verify(forged, NOW)
        with pytest.raises(CredentialError):
            verifier.verify(make_token(rsa_key, claims(sub=f"m{i}", aud="other")), NOW)
    assert verifier._by_iss[ISS][1] == {}
    assert verifier._headers == {}


# -- the header cache ------------------------------------------------------------------------
def test_a_cached_header_still_meets_every_issuer_check(rsa_key: Any, ec_key: Any) -> None:
    es_only = IssuerConfig(
        name="es-only", issuer="https://es.example", audiences=("cport",), algorithms=("ES256",)
    )
    verifier = verifier_for(rsa_key, OKTA, es_only)
    verifier.verify(make_token(rsa_key, claims()), NOW)
    assert len(verifier._headers) == 1  # the RS256 header, verified once
    # same header, another issuer that does not allow RS256
    tok = make_token(rsa_key, claims(iss=es_only.issuer))
    with pytest.raises(CredentialError) as info:
        verifier.verify(tok, NOW)
    assert info.value.code == "alg-not-allowed"
    # same header, a key of the wrong type under the same kid
    wrong_type = Verifier(
        [OKTA], StaticKeySource({"corp-okta": [VerificationKey("k1", ec_key.public_key())]})
    )
    wrong_type._headers.update(verifier._headers)
    with pytest.raises(CredentialError) as info:
        wrong_type.verify(make_token(rsa_key, claims(jti="x")), NOW)
    assert info.value.code == "alg-not-allowed"
    # same header, the kid no longer in the key set
    rotated = Verifier(
        [OKTA], StaticKeySource({"corp-okta": [VerificationKey("k2", rsa_key.public_key())]})
    )
    rotated._headers.update(verifier._headers)
    with pytest.raises(CredentialError) as info:
        rotated.verify(make_token(rsa_key, claims(jti="y")), NOW)
    assert info.value.code == "unknown-kid"


def test_non_ascii_tokens_are_malformed_and_never_cached(rsa_key: Any) -> None:
    verifier = verifier_for(rsa_key)
    tok = make_token(rsa_key, claims())
    for bad in ("é" + tok, tok + "\ud800", tok.replace(".", "\u2024", 1)):
        with pytest.raises(CredentialError) as info:
            verifier.verify(bad, NOW)
        assert info.value.code == "malformed"
        assert verifier.cached(bad, NOW) is None


# -- prepared signature checks ---------------------------------------------------------------
def test_signature_checks_follow_key_type_size_curve_and_jwk_alg() -> None:
    rsa2048 = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    rsa1024 = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    p256 = ec.generate_private_key(ec.SECP256R1()).public_key()
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    p521 = ec.generate_private_key(ec.SECP521R1()).public_key()
    k1 = ec.generate_private_key(ec.SECP256K1()).public_key()
    ed = ed25519.Ed25519PrivateKey.generate().public_key()
    ed4 = ed448.Ed448PrivateKey.generate().public_key()
    rsa_algs = {f"{p}{b}" for p in ("RS", "PS") for b in ("256", "384", "512")}
    assert set(signature_checks(rsa2048)) == rsa_algs
    assert set(signature_checks(rsa1024)) == set()
    assert set(signature_checks(p256)) == {"ES256"}
    assert set(signature_checks(p384)) == {"ES384"}
    assert set(signature_checks(p521)) == {"ES512"}
    assert set(signature_checks(k1)) == set()
    assert set(signature_checks(ed)) == {"EdDSA", "Ed25519"}
    assert set(signature_checks(ed4)) == {"EdDSA", "Ed448"}
    assert set(signature_checks(ed, "Ed25519")) == {"Ed25519"}
    assert set(signature_checks(ed, "Ed448")) == set()
    assert set(signature_checks(rsa2048, "PS384")) == {"PS384"}
    assert set(signature_checks(p256, "ES384")) == set()
    assert set(signature_checks(ed, "none")) == set()


def test_verification_keys_compare_without_their_checks(rsa_key: Any) -> None:
    pub = rsa_key.public_key()
    a, b = VerificationKey("k1", pub), VerificationKey("k1", pub)
    assert a == b and a.checks is not b.checks
    assert "checks" not in repr(a)
    c = dataclasses.replace(a, alg="PS256")
    assert set(c.checks) == {"PS256"}


@pytest.mark.parametrize("alg", ["ES256", "ES384", "ES512"])
def test_ecdsa_check_takes_exactly_r_and_s(alg: str) -> None:
    curve = {"ES256": ec.SECP256R1(), "ES384": ec.SECP384R1(), "ES512": ec.SECP521R1()}[alg]
    key = ec.generate_private_key(curve)
    payload = claims()
    tok = pyjwt.encode(payload, key, algorithm=alg)
    head, body, sig = tok.split(".")
    raw = pyjwt.utils.base64url_decode(sig)
    check = signature_checks(key.public_key())[alg]
    data = f"{head}.{body}".encode()
    assert check(raw, data, sha256(data))
    assert not check(raw[:-1], data, sha256(data)) and not check(raw + b"\0", data, sha256(data))
    assert not check(raw, data + b"x", sha256(data + b"x"))
    assert not check(bytes(len(raw)), data, sha256(data))  # r = s = 0


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


_DIGEST_INFO_PREFIX = {
    "256": bytes.fromhex("3031300d060960864801650304020105000420"),
    "384": bytes.fromhex("3041300d060960864801650304020205000430"),
    "512": bytes.fromhex("3051300d060960864801650304020305000440"),
}


def _raw_rsa_sign(key: rsa.RSAPrivateKey, em: bytes) -> bytes:
    """The RSA private operation on an encoded message we choose — how an attacker's test
    harness makes signatures with malformed padding that a signing API would never emit."""
    nums = key.private_numbers()
    n, k = nums.public_numbers.n, (key.key_size + 7) // 8
    return pow(int.from_bytes(em, "big"), nums.d, n).to_bytes(k, "big")


def _em(k: int, t: bytes, *, lead: bytes = b"\x00\x01", fill: int = 0xFF) -> bytes:
    return lead + bytes([fill]) * (k - len(t) - 3) + b"\x00" + t


@pytest.mark.parametrize("bits", ["256", "384", "512"])
def test_rsa_pkcs1_check_gives_cryptography_s_verdict_on_forged_encodings(
    rsa_key: Any, bits: str
) -> None:
    """RS* checks recover the encoded message and compare its DigestInfo; each forgery a
    lenient PKCS#1 v1.5 parser has fallen for must get the verdict of cryptography's own
    ``verify`` (which the check replaced for speed)."""
    pub, k = rsa_key.public_key(), 256
    base = b"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9"
    h = {"256": hashes.SHA256(), "384": hashes.SHA384(), "512": hashes.SHA512()}[bits]
    digest = hashlib.new("sha" + bits, base).digest()
    t = _DIGEST_INFO_PREFIX[bits] + digest
    other = "384" if bits == "256" else "256"
    cases = {
        "valid": _raw_rsa_sign(rsa_key, _em(k, t)),
        "padding byte not 0xff": _raw_rsa_sign(rsa_key, _em(k, t, fill=0xFE)),
        "block type 2": _raw_rsa_sign(rsa_key, _em(k, t, lead=b"\x00\x02")),
        "garbage after the hash": _raw_rsa_sign(
            rsa_key, b"\x00\x01" + b"\xff" * 8 + b"\x00" + t + bytes(k - 11 - len(t))
        ),
        "short padding": _raw_rsa_sign(
            rsa_key, bytes(k - 11 - len(t)) + b"\x00\x01" + b"\xff" * 8 + b"\x00" + t
        ),
        "DigestInfo without NULL": _raw_rsa_sign(
            rsa_key,
            _em(
                k,
                bytes([0x30, len(t) - 4, 0x30, 0x0B])
                + _DIGEST_INFO_PREFIX[bits][4:15]
                + _DIGEST_INFO_PREFIX[bits][17:]
                + digest,
            ),
        ),
        "another hash's DigestInfo": _raw_rsa_sign(
            rsa_key,
            _em(k, _DIGEST_INFO_PREFIX[other] + hashlib.new("sha" + other, base).digest()),
        ),
        "hash alone": _raw_rsa_sign(rsa_key, _em(k, digest)),
        "signature of other data": _raw_rsa_sign(
            rsa_key, _em(k, _DIGEST_INFO_PREFIX[bits] + hashlib.new("sha" + bits).digest())
        ),
        "zero": bytes(k),
        "the modulus": pub.public_numbers().n.to_bytes(k, "big"),
        "all ones": b"\xff" * k,
        "leading zero stripped": b"",  # filled below
        "one byte long": b"\x01" * (k + 1),
    }
    valid = cases["valid"]
    for i in range(4096):  # a message whose signature starts with a zero byte (p = 1/256)
        data = base + str(i).encode()
        short = rsa_key.sign(data, padding.PKCS1v15(), h)
        if short[0] == 0:
            break
    cases["leading zero stripped"] = short[1:]
    check = signature_checks(pub)["RS" + bits]

    def reference(sig: bytes, msg: bytes) -> bool:
        try:
            pub.verify(sig, msg, padding.PKCS1v15(), h)
        except InvalidSignature:
            return False
        return True

    assert short[0] == 0
    assert check(valid, base, sha256(base)) and reference(valid, base)
    assert check(short, data, sha256(data)), "a k-octet signature with a leading zero is valid"
    for name, sig in cases.items():
        msg = data if name == "leading zero stripped" else base
        if name != "valid":
            # ("leading zero stripped": `recover_data_from_signature` alone accepts it.)
            assert not check(sig, msg, sha256(msg)), name
        assert check(sig, msg, sha256(msg)) == reference(sig, msg), name


def test_signature_checks_hash_the_input_when_the_caller_has_not(rsa_key: Any) -> None:
    """`check_signature` without the caller's SHA-256 computes it; with a wrong one, an RS256
    signature over the real input does not verify (the digest is what is checked)."""
    issuer = dataclasses.replace(OKTA, algorithms=("RS256",))
    tok = make_token(rsa_key, claims())
    head, body, sig = tok.split(".")
    data, raw = f"{head}.{body}".encode(), pyjwt.utils.base64url_decode(sig)
    keys = [VerificationKey("k1", rsa_key.public_key())]
    check_signature("RS256", "k1", issuer, keys, data, raw)
    check_signature("RS256", "k1", issuer, keys, data, raw, sha256(data))
    with pytest.raises(CredentialError) as info:
        check_signature("RS256", "k1", issuer, keys, data, raw, sha256(b"other"))
    assert info.value.code == "bad-signature"


# -- the identity, built slot by slot ---------------------------------------------------------
def test_verified_identity_fast_constructor_equals_the_dataclass() -> None:
    labels = Labels.parse("oidc:iss=corp,oidc:sub=alice", "oidc")
    args: tuple[Any, ...] = ("oidc", labels, "alice", "corp", NOW, "jti-1", "bot", {"a": 1})
    fast, plain = verified_identity(*args), VerifiedIdentity(*args)
    assert type(fast) is VerifiedIdentity
    for f in dataclasses.fields(VerifiedIdentity):
        assert getattr(fast, f.name) == getattr(plain, f.name), f.name
    assert fast == plain and repr(fast) == repr(plain) and fast.to_json() == plain.to_json()
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.subject = "mallory"  # type: ignore[misc]


# -- segment decoding: the fast JSON and base64url paths against the strict ones -------------
def _b64url(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _strict_verdict(data: bytes) -> Any:
    try:
        return ("ok", _jwt._strict_json(data, "payload"))
    except CredentialError as exc:
        return ("rejected", exc.code)


def _verdict(data: bytes) -> Any:
    try:
        return ("ok", _jwt.decode_segment(_b64url(data), "payload"))
    except CredentialError as exc:
        return ("rejected", exc.code)


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON values, with types (1 ≠ 1.0 ≠ True) and -0.0 ≠ 0.0 told apart."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return bool(a == b)


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(alphabet='abc :"\\\u00e9/', max_size=3), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(
    value=st.dictionaries(st.text(alphabet='abc :"\\', max_size=3), JSON_VALUES, max_size=5),
    style=st.sampled_from(["compact", "spaced", "ascii", "pretty"]),
    duplicate=st.booleans(),
)
def test_fast_json_path_gives_the_strict_decoders_verdict(
    value: dict[str, Any], style: str, duplicate: bool
) -> None:
    """Whatever orjson accepts on the fast path, the strict decoder decodes to the same value;
    a duplicate member is refused on every path (the fast path must notice the member it
    lost), however the text is spaced or escaped."""
    seps = (",", ":") if style == "compact" else None
    text = json.dumps(
        value,
        separators=seps,
        ensure_ascii=style == "ascii",
        indent=2 if style == "pretty" else None,
    )
    if duplicate:
        key = next(iter(value), "k")
        sep = ":" if style == "compact" else ": "
        text = "{" + json.dumps(key) + sep + "0," + text[1:] if value else '{"k":1,"k":2}'
    data = text.encode()
    fast, strict = _verdict(data), _strict_verdict(data)
    assert fast[0] == strict[0], (text, fast, strict)
    if fast[0] == "ok":
        assert _same(fast[1], strict[1]), text
    else:
        assert fast[1] == strict[1] == "malformed"
    if duplicate:
        assert fast == ("rejected", "malformed"), text


@pytest.mark.parametrize(
    "text",
    [
        '{"a":1,"a":1}',  # the same member twice: re-serialised, one fewer member
        '{"a":{"b":1,"b":2}}',
        '{"a":[{"b":1,"b":1}]}',
        '{"a": 1, "a": 1}',
        '{"a":1,"\\u0061":1}',  # the same key, spelt twice
        '{"a":NaN}',
        '{"a":-Infinity}',
        '{"a":1}x',
        '["a"]',
        '"a"',
        '{"a":"\\ud800"}',
    ],
)
def test_fast_json_path_refuses_what_the_strict_decoder_refuses(text: str) -> None:
    assert _verdict(text.encode()) == _strict_verdict(text.encode())
    assert _verdict(text.encode())[0] == ("ok" if text.startswith('{"a":"\\ud8') else "rejected")


@pytest.mark.parametrize(
    "text",
    [
        '{"n":123456789012345678901234567890}',  # beyond 64 bits: exact, an int
        '{"n":18446744073709551615}',
        '{"f":1E5,"g":1.50,"h":-0,"i":-0.0}',
        '{"s":"caf\\u00e9 \\/ \\"q\\""}',
        ' {"a" : [ 1 , 2 ] } ',
        '{"name":"Alice Smith", "n": 1}',  # spaces between tokens and inside a string
        '{"t":true,"f":false,"z":null,"e":{},"l":[]}',
    ],
)
def test_other_spellings_take_the_strict_path_and_decode_alike(text: str) -> None:
    fast, strict = _verdict(text.encode()), _strict_verdict(text.encode())
    assert fast[0] == strict[0] == "ok"
    assert _same(fast[1], strict[1])


def _binascii_b64(segment: bytes) -> Any:
    """The base64url decoding cport used before pybase64, kept here as the reference."""
    data = segment.translate(bytes.maketrans(b"-_", b"+/"), b"+/=")
    if len(data) != len(segment):
        return "malformed"
    try:
        return binascii.a2b_base64(data + (b"", b"", b"==", b"=")[len(data) & 3], strict_mode=True)
    except binascii.Error:
        return "malformed"


@settings(max_examples=2000, deadline=None)
@given(
    st.binary(max_size=40).map(_b64url)
    | st.text(alphabet="ABCXYZabcxyz0189-_+/=. \n!\u00e9\x00", max_size=24).map(
        lambda t: t.encode("utf-8")
    )
)
def test_base64url_decoding_gives_binascii_strict_verdicts(segment: bytes) -> None:
    try:
        ours: Any = _jwt._b64(segment, "segment")
    except CredentialError as exc:
        ours = exc.code
    assert ours == _binascii_b64(segment)


def test_the_cache_binds_the_signature_not_only_the_signing_input(rsa_key: Any) -> None:
    """The cache key is the SHA-256 of ``header.payload`` plus the signature segment: the
    same header and payload under another signature is a different token, verified afresh
    (a JWT's payload is often logged; its signature must still be needed)."""
    verifier = verifier_for(rsa_key)
    tok = make_token(rsa_key, claims())
    verifier.verify(tok, NOW)
    head, body, sig = tok.split(".")
    flipped = sig[:10] + ("A" if sig[10] != "A" else "B") + sig[11:]
    for forged in (f"{head}.{body}.{flipped}", f"{head}.{body}.{sig[:-4]}", f"{head}.{body}.x"):
        assert verifier.cached(forged, NOW) is None
        with pytest.raises(CredentialError) as info:
            verifier.verify(forged, NOW)
        assert info.value.code in ("bad-signature", "malformed")
    for dotted in (f"{head}.{body}.{sig}.", f"{head}{body}.{sig}", tok.replace(".", "")):
        assert verifier.cached(dotted, NOW) is None
        with pytest.raises(CredentialError) as info:
            verifier.verify(dotted, NOW)
        assert info.value.code in ("malformed", "bad-signature")
    assert verifier.cached(tok, NOW) is verifier.verify(tok, NOW)
    # a token without jti is still named by the SHA-256 of the whole token
    no_jti = make_token(rsa_key, claims(jti=None))
    assert verifier.verify(no_jti, NOW).token_id == hashlib.sha256(no_jti.encode()).hexdigest()


@pytest.mark.parametrize(
    "algorithms, secret",
    [
        (("RS256", "ES256", "EdDSA"), None),
        (("RS256", "none", "HS256"), None),
        (("HS256", "HS512", "none"), b"s" * 32),
        ((), None),
    ],
)
def test_usable_algorithms_are_exactly_what_check_alg_admits(
    algorithms: tuple[str, ...], secret: bytes | None
) -> None:
    issuer = dataclasses.replace(OKTA, algorithms=algorithms, hmac_secret=secret)
    for alg in ("RS256", "ES256", "EdDSA", "PS256", "HS256", "HS512", "none", "None", ""):
        try:
            _jwt.check_alg(alg, issuer)
            admitted = True
        except CredentialError as exc:
            assert exc.code == "alg-not-allowed"
            admitted = False
        assert admitted == (alg in issuer.usable_algorithms), alg


@pytest.mark.parametrize("curve", ["Ed25519", "Ed448"])
def test_rfc9864_fully_specified_eddsa_algorithms(curve: str) -> None:
    """``Ed25519``/``Ed448`` (RFC 9864) verify only when the issuer lists them and only with
    a key of that curve; ``EdDSA`` keeps working for the same keys."""
    ed: Any = (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)
    key, other = (ed[0], ed[1]) if curve == "Ed25519" else (ed[1], ed[0])
    key = key.generate()
    header = _b64url(json.dumps({"alg": curve, "kid": "k1"}).encode()).decode()
    body = _b64url(json.dumps(claims()).encode()).decode()
    sig = _b64url(key.sign(f"{header}.{body}".encode())).decode()
    tok = f"{header}.{body}.{sig}"
    listed = dataclasses.replace(OKTA, algorithms=("EdDSA", curve))

    def verify(issuer: IssuerConfig, signer: Any) -> str:
        keys = StaticKeySource({issuer.name: [VerificationKey("k1", signer.public_key())]})
        try:
            Verifier([issuer], keys).verify(tok, NOW)
        except CredentialError as exc:
            return exc.code
        return "ok"

    assert verify(listed, key) == "ok"
    assert verify(OKTA, key) == "alg-not-allowed"  # the default list names EdDSA only
    assert verify(listed, other.generate()) == "alg-not-allowed"  # no key of that curve
