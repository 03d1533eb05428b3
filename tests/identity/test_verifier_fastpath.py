"""What makes cold verification cheap must not change a single answer: the per-issuer memo of
label sets, the cache of verified headers, the signature checks prepared per key, and the
identity built slot by slot. Each is held against the plain computation it replaces.

(No timings here: bench/bench_verify.py measures; these tests only pin behaviour.)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

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
)
from cport.identity._claims import oidc_labels
from cport.identity._credentials import verified_identity
from cport.identity._jwt import signature_checks

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


@pytest.mark.parametrize("payload", CORPUS)
def test_memoised_labels_equal_the_plain_mapping(payload: dict[str, Any]) -> None:
    plain = oidc_labels(payload, OKTA)
    memo: dict[tuple[Any, ...], Labels] = {}
    first = oidc_labels(payload, OKTA, memo)
    again = oidc_labels(payload, OKTA, memo)
    assert first == plain and again == plain


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
    assert set(signature_checks(ed)) == set(signature_checks(ed4)) == {"EdDSA"}
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
    assert check(raw, data)
    assert not check(raw[:-1], data) and not check(raw + b"\0", data)
    assert not check(raw, data + b"x")
    assert not check(bytes(len(raw)), data)  # r = s = 0


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
