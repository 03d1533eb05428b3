"""The token verifier: claims → labels for each issuer kind, the verified-token cache, and the
JWKS key source (discovery, refresh, rate-limited refetch, last-known-good through outages).

Keys are generated at test time (module-scoped); the JWKS source gets a fake `fetch_json`
(a dict of URL → document, plus a switch to fail), and every test passes `now` explicitly.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Sequence
from typing import Any

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from cport.errors import CredentialError, Location, TokenExpired
from cport.identity import (
    ClaimLabel,
    IssuerConfig,
    JWKSKeySource,
    Label,
    Labels,
    StaticKeySource,
    VerificationKey,
    VerifiedIdentity,
    Verifier,
    keys_from_jwks,
)
from cport.identity._keys import check_url, http_fetch_json
from cport.model import Inventory
from cport.model._inventory import Workload

NOW = 1_900_000_000.0
ISS = "https://idp.example.com"
DISCOVERY = ISS + "/.well-known/openid-configuration"
JWKS_URL = ISS + "/keys"
K8S_ISS = "https://kubernetes.default.svc.cluster.local"
SPIRE_ISS = "https://spire.example.org"
OKTA = IssuerConfig(name="corp-okta", issuer=ISS, audiences=("cport",))
K8S = IssuerConfig(name="cluster", issuer=K8S_ISS, audiences=("cport",), kind="kubernetes")
SPIRE = IssuerConfig(
    name="spire",
    issuer=SPIRE_ISS,
    audiences=("cport",),
    kind="spiffe-jwt",
    trust_domains=("example.org",),
)
NS_KEY = "io.kubernetes.pod.namespace"
SA_KEY = "io.cilium.k8s.policy.serviceaccount"
CLUSTER_KEY = "io.cilium.k8s.policy.cluster"


# -- keys and tokens -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def rsa_key2() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def ed_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def uint(n: int) -> str:
    return b64(n.to_bytes(max(1, (n.bit_length() + 7) // 8), "big"))


def jwk(key: Any, kid: str | None = "k1", *, private: bool = False, **extra: Any) -> dict[str, Any]:
    """A JWK for `key`'s public half; `private` adds the private members too."""
    out: dict[str, Any]
    if isinstance(key, rsa.RSAPrivateKey):
        pub = key.public_key().public_numbers()
        out = {"kty": "RSA", "n": uint(pub.n), "e": uint(pub.e)}
        if private:
            p = key.private_numbers()
            out |= {"d": uint(p.d), "p": uint(p.p), "q": uint(p.q)}
            out |= {"dp": uint(p.dmp1), "dq": uint(p.dmq1), "qi": uint(p.iqmp)}
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        nums = key.public_key().public_numbers()
        size = (key.curve.key_size + 7) // 8
        out = {
            "kty": "EC",
            "crv": "P-256",
            "x": b64(nums.x.to_bytes(size, "big")),
            "y": b64(nums.y.to_bytes(size, "big")),
        }
        if private:
            out["d"] = b64(key.private_numbers().private_value.to_bytes(size, "big"))
    else:
        raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        out = {"kty": "OKP", "crv": "Ed25519", "x": b64(raw)}
        if private:
            out["d"] = b64(
                key.private_bytes(
                    serialization.Encoding.Raw,
                    serialization.PrivateFormat.Raw,
                    serialization.NoEncryption(),
                )
            )
    if kid is not None:
        out["kid"] = kid
    return out | extra


def claims(iss: str = ISS, **over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": iss,
        "aud": "cport",
        "sub": "alice",
        "iat": int(NOW) - 10,
        "exp": int(NOW) + 600,
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def make_token(key: Any, payload: dict[str, Any], kid: str | None = "k1") -> str:
    alg = {rsa.RSAPrivateKey: "RS256", ec.EllipticCurvePrivateKey: "ES256"}
    name = next((a for t, a in alg.items() if isinstance(key, t)), "EdDSA")
    headers = {"kid": kid} if kid is not None else None
    return pyjwt.encode(payload, key, algorithm=name, headers=headers)


def vk(key: Any, kid: str | None = "k1") -> VerificationKey:
    return VerificationKey(kid, key.public_key())


class CountingKeys:
    """Wraps a key source, counting calls."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls = 0
        self.refetches = 0

    def keys(self, issuer: IssuerConfig, now: float) -> Sequence[VerificationKey]:
        self.calls += 1
        return self.inner.keys(issuer, now)  # type: ignore[no-any-return]

    def refetch(self, issuer: IssuerConfig, now: float) -> bool:
        self.refetches += 1
        return self.inner.refetch(issuer, now)  # type: ignore[no-any-return]


class FakeFetch:
    """`fetch_json(url, timeout)` over a dict of documents; `down` makes every fetch fail."""

    def __init__(self, docs: dict[str, Any]) -> None:
        self.docs = docs
        self.calls: list[str] = []
        self.down = False

    def __call__(self, url: str, timeout: float) -> Any:
        self.calls.append(url)
        if self.down:
            raise ConnectionError("the identity provider is down")
        if url not in self.docs:
            raise LookupError(f"404 {url}")
        return self.docs[url]


def okta_docs(*jwks: dict[str, Any]) -> dict[str, Any]:
    return {
        DISCOVERY: {"issuer": ISS, "jwks_uri": JWKS_URL},
        JWKS_URL: {"keys": list(jwks)},
    }


def codeof(verifier: Verifier, tok: str, now: float) -> str:
    with pytest.raises(CredentialError) as info:
        verifier.verify(tok, now)
    return info.value.code


# -- OIDC labels -----------------------------------------------------------------------------
def test_oidc_labels(rsa_key: Any) -> None:
    verifier = Verifier([OKTA], StaticKeySource({"corp-okta": [vk(rsa_key)]}))
    payload = claims(groups=["dba", "eng"], email="alice@corp.example", other="ignored")
    ident = verifier.verify(make_token(rsa_key, payload), NOW)
    assert ident.labels == Labels.from_strings(
        [
            "oidc:iss=corp-okta",
            "oidc:sub=alice",
            "oidc:groups=dba",
            "oidc:groups=eng",
            "oidc:email=alice@corp.example",
        ]
    )
    assert (ident.kind, ident.subject, ident.issuer) == ("oidc", "alice", "corp-okta")
    assert ident.expires_at == NOW + 600
    assert ident.actor is None
    assert ident.claims["groups"] == ["dba", "eng"]
    out = ident.to_json()
    assert out["labels"] == ident.labels.strings()
    assert "actor" not in out


def test_oidc_single_group_and_scalars(rsa_key: Any) -> None:
    verifier = Verifier([OKTA], StaticKeySource({"corp-okta": [vk(rsa_key)]}))
    ident = verifier.verify(make_token(rsa_key, claims(groups="dba")), NOW)
    assert ident.labels.values("oidc", "groups") == ["dba"]
    assert not ident.labels.has("oidc", "email")


def test_nested_and_dotted_claim_paths(rsa_key: Any) -> None:
    issuer = IssuerConfig(
        name="kc",
        issuer=ISS,
        audiences=("cport",),
        claim_labels=(
            ClaimLabel("realm_access.roles", "roles"),
            ClaimLabel("https://corp.example/team", "team"),
            ClaimLabel("org.unit.name", "unit"),
            ClaimLabel("mfa", "mfa"),
        ),
    )
    payload = claims(
        realm_access={"roles": ["admin", "dba"]},
        **{"https://corp.example/team": "payments"},
        org={"unit": {"name": "finance"}},
        mfa=True,
        groups=["not-mapped"],
    )
    verifier = Verifier([issuer], StaticKeySource({"kc": [vk(rsa_key)]}))
    labels = verifier.verify(make_token(rsa_key, payload), NOW).labels
    assert labels == Labels.from_strings(
        [
            "oidc:iss=kc",
            "oidc:sub=alice",
            "oidc:roles=admin",
            "oidc:roles=dba",
            "oidc:team=payments",
            "oidc:unit=finance",
            "oidc:mfa=true",
        ]
    )


def test_subject_from_client_id(rsa_key: Any) -> None:
    verifier = Verifier([OKTA], StaticKeySource({"corp-okta": [vk(rsa_key)]}))
    ident = verifier.verify(make_token(rsa_key, claims(sub=None, client_id="svc-ci")), NOW)
    assert ident.subject == "svc-ci"
    assert Label("oidc", "sub", "svc-ci") in ident.labels


# -- delegation ------------------------------------------------------------------------------
def test_delegation_act(rsa_key: Any) -> None:
    verifier = Verifier([OKTA], StaticKeySource({"corp-okta": [vk(rsa_key)]}))
    act = {"sub": "agent-7", "client_id": "copilot", "iss": "https://elsewhere", "act": {"x": 1}}
    payload = claims(groups=["dba"], act=act)
    ident = verifier.verify(make_token(rsa_key, payload), NOW)
    assert ident.actor == "agent-7"
    assert ident.subject == "alice"
    assert ident.labels == Labels.from_strings(
        [
            "oidc:iss=corp-okta",
            "oidc:sub=alice",
            "oidc:groups=dba",
            "agent:actor=agent-7",
            "agent:iss=corp-okta",
            "agent:client_id=copilot",
        ]
    )
    assert ident.to_json()["actor"] == "agent-7"


def test_delegation_actor_by_client_id(rsa_key: Any) -> None:
    verifier = Verifier([OKTA], StaticKeySource({"corp-okta": [vk(rsa_key)]}))
    ident = verifier.verify(make_token(rsa_key, claims(act={"client_id": "bot"})), NOW)
    assert ident.actor == "bot"
    assert Label("agent", "actor", "bot") in ident.labels


@pytest.mark.parametrize("act", ["agent-7", ["agent-7"], {}, {"sub": 7}, {"name": "x"}])
def test_delegation_act_without_actor(act: Any, rsa_key: Any) -> None:
    verifier = Verifier([OKTA], StaticKeySource({"corp-okta": [vk(rsa_key)]}))
    assert codeof(verifier, make_token(rsa_key, claims(act=act)), NOW) == "malformed"


# -- Kubernetes service-account tokens ------------------------------------------------------
def k8s_claims(**over: Any) -> dict[str, Any]:
    return claims(
        iss=K8S_ISS,
        sub="system:serviceaccount:payments:ledger",
        **{
            "kubernetes.io": {
                "namespace": "payments",
                "serviceaccount": {"name": "ledger", "uid": "u-1"},
                "pod": {"name": "ledger-db-0", "uid": "u-2"},
            }
        },
        **over,
    )


SA_LABELS = Labels(
    [
        Label("k8s", NS_KEY, "payments"),
        Label("k8s", SA_KEY, "ledger"),
        Label("k8s", CLUSTER_KEY, "default"),
        # as for a pod with no labels of its own: Kubernetes' namespace-name label
        Label("k8s", "io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name", "payments"),
    ]
)


def test_kubernetes_service_account_labels(ec_key: Any) -> None:
    verifier = Verifier([K8S], StaticKeySource({"cluster": [vk(ec_key)]}))
    ident = verifier.verify(make_token(ec_key, k8s_claims()), NOW)
    assert ident.labels == SA_LABELS
    assert ident.kind == "k8s-serviceaccount"
    assert ident.subject == "system:serviceaccount:payments:ledger"
    assert ident.issuer == "cluster"


def test_kubernetes_cluster_name(ec_key: Any) -> None:
    verifier = Verifier([K8S], StaticKeySource({"cluster": [vk(ec_key)]}), cluster="prod")
    labels = verifier.verify(make_token(ec_key, k8s_claims()), NOW).labels
    assert labels.get("k8s", CLUSTER_KEY) == "prod"


def test_kubernetes_legacy_token_from_sub(ec_key: Any) -> None:
    verifier = Verifier([K8S], StaticKeySource({"cluster": [vk(ec_key)]}))
    payload = claims(iss=K8S_ISS, sub="system:serviceaccount:payments:ledger")
    assert verifier.verify(make_token(ec_key, payload), NOW).labels == SA_LABELS


@pytest.mark.parametrize("sub", ["alice", "system:serviceaccount:payments", "system:node:n1:x"])
def test_kubernetes_token_without_service_account(sub: str, ec_key: Any) -> None:
    verifier = Verifier([K8S], StaticKeySource({"cluster": [vk(ec_key)]}))
    tok = make_token(ec_key, claims(iss=K8S_ISS, sub=sub))
    assert codeof(verifier, tok, NOW) == "missing-claim"


def test_kubernetes_resolve_pod(ec_key: Any) -> None:
    pod_labels = Labels.from_strings(["k8s:app=ledger", f"k8s:{NS_KEY}=payments"])
    asked: list[tuple[str, str]] = []

    def resolve(ns: str, pod: str) -> Labels | None:
        asked.append((ns, pod))
        return pod_labels if pod == "ledger-db-0" else None

    verifier = Verifier([K8S], StaticKeySource({"cluster": [vk(ec_key)]}), resolve_pod=resolve)
    assert verifier.verify(make_token(ec_key, k8s_claims()), NOW).labels == pod_labels
    assert asked == [("payments", "ledger-db-0")]
    # a pod the inventory does not know: the service-account labels
    other = k8s_claims()
    other["kubernetes.io"]["pod"]["name"] = "gone-1"
    assert verifier.verify(make_token(ec_key, other), NOW).labels == SA_LABELS


def _inventory() -> tuple[Inventory, Workload]:
    pod = Workload(
        namespace="payments",
        name="ledger-db-0",
        labels=(),
        service_account="ledger",
        addresses=(),
        ports=(),
        location=Location("inventory.yaml"),
        kind="Pod",
    )
    return Inventory([pod]), pod


def test_kubernetes_resolve_pod_from_inventory(ec_key: Any) -> None:
    inv, pod = _inventory()

    def resolve(ns: str, name: str) -> Labels | None:
        return inv.identity_labels(inv.find(ns, name))

    verifier = Verifier([K8S], StaticKeySource({"cluster": [vk(ec_key)]}), resolve_pod=resolve)
    assert verifier.verify(make_token(ec_key, k8s_claims()), NOW).labels == inv.identity_labels(pod)


def test_kubernetes_token_has_the_pods_identity(ec_key: Any) -> None:
    inv, pod = _inventory()
    verifier = Verifier([K8S], StaticKeySource({"cluster": [vk(ec_key)]}))
    payload = k8s_claims()
    del payload["kubernetes.io"]["pod"]  # no pod named: labels from namespace/SA only
    labels = verifier.verify(make_token(ec_key, payload), NOW).labels
    assert labels == inv.identity_labels(pod)


# -- JWT-SVIDs -------------------------------------------------------------------------------
def test_spiffe_jwt_labels(ed_key: Any) -> None:
    verifier = Verifier([SPIRE], StaticKeySource({"spire": [vk(ed_key)]}))
    sid = "spiffe://example.org/ns/payments/sa/api"
    ident = verifier.verify(make_token(ed_key, claims(iss=SPIRE_ISS, sub=sid)), NOW)
    assert ident.labels == Labels(
        [Label("spiffe", "id", sid), Label("spiffe", "trust-domain", "example.org")]
    )
    assert (ident.kind, ident.subject, ident.issuer) == ("spiffe-jwt", sid, "spire")


def test_spiffe_jwt_issuer_speaks_only_for_its_trust_domains(ed_key: Any) -> None:
    verifier = Verifier([SPIRE], StaticKeySource({"spire": [vk(ed_key)]}))
    token = make_token(ed_key, claims(iss=SPIRE_ISS, sub="spiffe://other.example/admin"))
    with pytest.raises(CredentialError) as err:
        verifier.verify(token, NOW)
    assert err.value.code == "unknown-trust-domain"


@pytest.mark.parametrize("sub", ["alice", "https://example.org/x", "SPIFFE://example.org/x"])
def test_spiffe_jwt_sub_not_a_spiffe_id(sub: str, ed_key: Any) -> None:
    verifier = Verifier([SPIRE], StaticKeySource({"spire": [vk(ed_key)]}))
    tok = make_token(ed_key, claims(iss=SPIRE_ISS, sub=sub))
    assert codeof(verifier, tok, NOW) == "svid-invalid-id"


@pytest.mark.parametrize(
    "sub",
    [
        "spiffe://",
        "spiffe:///ns/a",
        "spiffe://EXAMPLE.org/ns/a",
        "spiffe://exa mple.org/ns/a",
        "spiffe://example.org/ns/../sa",
        "spiffe://example.org/ns//a",
        "spiffe://example.org/",
    ],
)
def test_spiffe_jwt_invalid_spiffe_id(sub: str, ed_key: Any) -> None:
    verifier = Verifier([SPIRE], StaticKeySource({"spire": [vk(ed_key)]}))
    tok = make_token(ed_key, claims(iss=SPIRE_ISS, sub=sub))
    assert codeof(verifier, tok, NOW) == "svid-invalid-id"


# -- the cache -------------------------------------------------------------------------------
def test_cache_does_not_ask_the_key_source_again(rsa_key: Any) -> None:
    keys = CountingKeys(StaticKeySource({"corp-okta": [vk(rsa_key)]}))
    verifier = Verifier([OKTA], keys)
    tok = make_token(rsa_key, claims())
    first = verifier.verify(tok, NOW)
    assert keys.calls == 1
    assert verifier.verify(tok, NOW + 1) is first
    assert verifier.verify(tok, NOW + 599) is first
    assert keys.calls == 1
    assert verifier.cached(tok, NOW + 10) is first
    assert verifier.cached(tok + "x", NOW + 10) is None


def test_cache_entry_expires_at_exp(rsa_key: Any) -> None:
    keys = CountingKeys(StaticKeySource({"corp-okta": [vk(rsa_key)]}))
    verifier = Verifier([OKTA], keys)
    tok = make_token(rsa_key, claims())
    verifier.verify(tok, NOW)
    assert verifier.cached(tok, NOW + 600) is None  # not served at or after exp
    verifier.verify(tok, NOW + 601)  # within the clock skew: verified afresh
    assert keys.calls == 2
    with pytest.raises(TokenExpired):
        verifier.verify(tok, NOW + 661)
    assert keys.calls == 3


def test_cache_entry_expires_at_exp_without_skew(rsa_key: Any) -> None:
    strict = IssuerConfig(name="corp-okta", issuer=ISS, audiences=("cport",), clock_skew=0)
    verifier = Verifier([strict], StaticKeySource({"corp-okta": [vk(rsa_key)]}))
    tok = make_token(rsa_key, claims())
    verifier.verify(tok, NOW)
    assert codeof(verifier, tok, NOW + 601) == "expired"


def test_cache_is_bounded_oldest_evicted(rsa_key: Any) -> None:
    keys = CountingKeys(StaticKeySource({"corp-okta": [vk(rsa_key)]}))
    verifier = Verifier([OKTA], keys, cache_size=2)
    toks = [make_token(rsa_key, claims(jti=f"t{i}")) for i in range(3)]
    for tok in toks:
        verifier.verify(tok, NOW)
    assert keys.calls == 3
    assert verifier.cached(toks[0], NOW) is None
    assert verifier.cached(toks[1], NOW) is not None
    assert verifier.cached(toks[2], NOW) is not None
    verifier.verify(toks[2], NOW)
    assert keys.calls == 3
    verifier.verify(toks[0], NOW)
    assert keys.calls == 4


def test_cache_size_zero_disables_the_cache(rsa_key: Any) -> None:
    keys = CountingKeys(StaticKeySource({"corp-okta": [vk(rsa_key)]}))
    verifier = Verifier([OKTA], keys, cache_size=0)
    tok = make_token(rsa_key, claims())
    verifier.verify(tok, NOW)
    verifier.verify(tok, NOW)
    assert keys.calls == 2


def test_rejections_are_not_cached(rsa_key: Any) -> None:
    keys = CountingKeys(StaticKeySource({"corp-okta": [vk(rsa_key)]}))
    verifier = Verifier([OKTA], keys)
    tok = make_token(rsa_key, claims(aud="other"))
    for _ in range(2):
        assert codeof(verifier, tok, NOW) == "audience-mismatch"
    assert keys.calls == 2


def test_token_id(rsa_key: Any) -> None:
    verifier = Verifier([OKTA], StaticKeySource({"corp-okta": [vk(rsa_key)]}))
    with_jti = make_token(rsa_key, claims(jti="abc-123"))
    assert verifier.verify(with_jti, NOW).token_id == "abc-123"
    for payload in (claims(), claims(jti="")):
        tok = make_token(rsa_key, payload)
        assert verifier.verify(tok, NOW).token_id == hashlib.sha256(tok.encode()).hexdigest()


# -- the token is never repeated --------------------------------------------------------------
def _secret_parts(tok: str) -> list[str]:
    """The token and its signature segment."""
    return [tok, tok.split(".")[2]]


def test_token_not_in_verified_identity(rsa_key: Any) -> None:
    verifier = Verifier([OKTA], StaticKeySource({"corp-okta": [vk(rsa_key)]}))
    tok = make_token(rsa_key, claims(groups=["dba"], act={"sub": "bot"}))
    ident = verifier.verify(tok, NOW)
    texts = [repr(ident), str(ident), str(ident.to_json())]
    for part in _secret_parts(tok):
        assert all(part not in t for t in texts)
    assert "claims" not in repr(ident)


def test_token_not_in_any_rejection(rsa_key: Any, rsa_key2: Any) -> None:
    verifier = Verifier([OKTA], StaticKeySource({"corp-okta": [vk(rsa_key)]}))
    bad = [
        make_token(rsa_key2, claims()),
        make_token(rsa_key, claims(exp=int(NOW) - 1000)),
        make_token(rsa_key, claims(aud="x")),
        make_token(rsa_key, claims(iss="https://evil.example")),
        make_token(rsa_key, claims(), kid="k9"),
        make_token(rsa_key, claims(sub=None)),
        make_token(rsa_key, claims(pad="x" * 20_000)),
        make_token(rsa_key, claims(act="bot")),
        make_token(rsa_key, claims()) + ".x.y",
        make_token(rsa_key, claims()).replace(".", ".=", 1),
    ]
    codes = set()
    for tok in bad:
        with pytest.raises(CredentialError) as info:
            verifier.verify(tok, NOW)
        exc = info.value
        codes.add(exc.code)
        texts = [str(exc), repr(exc), exc.message, str(exc.to_json()), *map(str, exc.args)]
        for part in _secret_parts(tok):
            assert all(part not in t for t in texts), exc.code
    assert len(codes) >= 8


# -- JWKS key source -------------------------------------------------------------------------
def test_discovery_then_jwks(rsa_key: Any, ec_key: Any) -> None:
    fetch = FakeFetch(okta_docs(jwk(rsa_key, "r1"), jwk(ec_key, "e1")))
    source = JWKSKeySource(fetch)
    keys = source.keys(OKTA, NOW)
    assert [k.kid for k in keys] == ["r1", "e1"]
    assert fetch.calls == [DISCOVERY, JWKS_URL]
    source.keys(OKTA, NOW + 100)
    assert len(fetch.calls) == 2
    assert source.status()["corp-okta"]["kids"] == ["r1", "e1"]
    verifier = Verifier([OKTA], source)
    ident = verifier.verify(make_token(ec_key, claims(), kid="e1"), NOW + 1)
    assert ident.subject == "alice"
    assert len(fetch.calls) == 2


def test_configured_jwks_uri_skips_discovery(rsa_key: Any) -> None:
    issuer = IssuerConfig(
        name="corp-okta", issuer=ISS, audiences=("cport",), jwks_uri=ISS + "/other-keys"
    )
    fetch = FakeFetch({ISS + "/other-keys": {"keys": [jwk(rsa_key)]}})
    JWKSKeySource(fetch).keys(issuer, NOW)
    assert fetch.calls == [ISS + "/other-keys"]


def test_periodic_refresh(rsa_key: Any, rsa_key2: Any) -> None:
    docs = okta_docs(jwk(rsa_key, "k1"))
    fetch = FakeFetch(docs)
    source = JWKSKeySource(fetch)
    source.keys(OKTA, NOW)
    docs[JWKS_URL] = {"keys": [jwk(rsa_key2, "k2")]}  # rotated at the IdP
    assert [k.kid for k in source.keys(OKTA, NOW + 299)] == ["k1"]
    assert len(fetch.calls) == 2
    assert [k.kid for k in source.keys(OKTA, NOW + 300)] == ["k2"]
    assert fetch.calls == [DISCOVERY, JWKS_URL, JWKS_URL]  # no second discovery


def test_unknown_kid_refetch_is_rate_limited(rsa_key: Any, rsa_key2: Any) -> None:
    docs = okta_docs(jwk(rsa_key, "k1"))
    fetch = FakeFetch(docs)
    keys = CountingKeys(JWKSKeySource(fetch))
    verifier = Verifier([OKTA], keys)
    assert codeof(verifier, make_token(rsa_key2, claims(), kid="k2"), NOW) == "unknown-kid"
    assert fetch.calls == [DISCOVERY, JWKS_URL, JWKS_URL]  # one refetch
    # a flood of unknown kids within min_refetch_interval: no fetch at all
    for i in range(50):
        tok = make_token(rsa_key2, claims(jti=str(i)), kid=f"random-{i}")
        assert codeof(verifier, tok, NOW + 1 + i * 0.5) == "unknown-kid"
    assert len(fetch.calls) == 3
    assert keys.refetches == 51
    # the IdP publishes k2; the next refetch (after the interval) finds it
    docs[JWKS_URL] = {"keys": [jwk(rsa_key, "k1"), jwk(rsa_key2, "k2")]}
    ident = verifier.verify(make_token(rsa_key2, claims(), kid="k2"), NOW + 30)
    assert ident.subject == "alice"
    assert len(fetch.calls) == 4
    # and it is now a known key: no more fetching
    verifier.verify(make_token(rsa_key2, claims(jti="n"), kid="k2"), NOW + 31)
    assert len(fetch.calls) == 4


def test_outage_keeps_last_known_good_then_no_keys(rsa_key: Any) -> None:
    fetch = FakeFetch(okta_docs(jwk(rsa_key)))
    source = JWKSKeySource(fetch)
    source.keys(OKTA, NOW)
    fetch.down = True
    verifier = Verifier([OKTA], source)
    long_lived = claims(exp=int(NOW) + 10_000)
    # refresh_interval 300 + max_stale 3600: the old keys serve until NOW + 3900
    for t in range(300, 3901):
        assert source.keys(OKTA, NOW + t)
    assert verifier.verify(make_token(rsa_key, long_lived), NOW + 3900).subject == "alice"
    # failed refreshes back off: one attempt per min_refetch_interval (30 s), not per call
    assert len(fetch.calls) == 2 + (3900 - 300) // 30 + 1
    assert "ConnectionError" in str(source.status()["corp-okta"]["error"])
    tok = make_token(rsa_key, claims(exp=int(NOW) + 10_000, jti="late"))
    assert codeof(verifier, tok, NOW + 3901) == "no-keys"
    with pytest.raises(CredentialError, match="the identity provider is down") as info:
        source.keys(OKTA, NOW + 3902)
    assert info.value.code == "no-keys"
    # the IdP comes back: keys return at the next attempt
    fetch.down = False
    assert source.keys(OKTA, NOW + 3930)
    assert verifier.verify(tok, NOW + 3930).subject == "alice"


def test_failed_fetch_backs_off_not_one_fetch_per_token(rsa_key: Any) -> None:
    fetch = FakeFetch(okta_docs(jwk(rsa_key)))
    fetch.down = True
    verifier = Verifier([OKTA], JWKSKeySource(fetch))
    for i in range(100):
        tok = make_token(rsa_key, claims(jti=str(i)))
        assert codeof(verifier, tok, NOW + i * 0.25) == "no-keys"
    assert fetch.calls == [DISCOVERY]
    fetch.down = False
    assert verifier.verify(make_token(rsa_key, claims()), NOW + 30).subject == "alice"
    assert fetch.calls == [DISCOVERY, DISCOVERY, JWKS_URL]


@pytest.mark.parametrize(
    ("issuer_url", "jwks_uri"),
    [
        ("http://idp.example.com", None),
        (ISS, "http://idp.example.com/keys"),
        (ISS, "ftp://idp.example.com/keys"),
        ("http://127.0.0.1.example.com", None),
    ],
)
def test_insecure_key_url_no_fetch(issuer_url: str, jwks_uri: str | None, rsa_key: Any) -> None:
    issuer = IssuerConfig(name="plain", issuer=issuer_url, audiences=("cport",), jwks_uri=jwks_uri)
    fetch = FakeFetch({})
    verifier = Verifier([issuer], JWKSKeySource(fetch))
    with pytest.raises(CredentialError, match="HTTPS required"):
        verifier.verify(make_token(rsa_key, claims(iss=issuer_url)), NOW)
    assert fetch.calls == []


def test_insecure_key_url_reason_code(rsa_key: Any) -> None:
    issuer = IssuerConfig(name="plain", issuer="http://idp.example.com", audiences=("cport",))
    verifier = Verifier([issuer], JWKSKeySource(FakeFetch({})))
    tok = make_token(rsa_key, claims(iss="http://idp.example.com"))
    assert codeof(verifier, tok, NOW) == "insecure-key-url"


def test_discovered_jwks_uri_must_be_https(rsa_key: Any) -> None:
    fetch = FakeFetch({DISCOVERY: {"issuer": ISS, "jwks_uri": "http://idp.example.com/keys"}})
    with pytest.raises(CredentialError, match="HTTPS required") as info:
        JWKSKeySource(fetch).keys(OKTA, NOW)
    assert info.value.code == "insecure-key-url"
    assert fetch.calls == [DISCOVERY]


def test_check_url_and_http_fetch(monkeypatch: pytest.MonkeyPatch) -> None:
    for url in ("https://idp.example.com/k", "http://127.0.0.1:8080/k", "http://localhost/k",
                "http://[::1]:9000/k"):  # fmt: skip
        check_url(url)
    for url in ("http://idp.example.com/k", "http://localhost.example.com/k", "file:///etc/x"):
        with pytest.raises(CredentialError) as info:
            check_url(url)
        assert info.value.code == "insecure-key-url"

    import httpx

    def no_network(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("network used")

    monkeypatch.setattr(httpx, "Client", no_network)
    with pytest.raises(CredentialError) as info:
        http_fetch_json("http://idp.example.com/keys", 1.0)
    assert info.value.code == "insecure-key-url"


def test_loopback_http_issuer_is_fetched(rsa_key: Any) -> None:
    local = "http://127.0.0.1:8080/realms/dev"
    issuer = IssuerConfig(name="dev", issuer=local, audiences=("cport",))
    fetch = FakeFetch(
        {
            local + "/.well-known/openid-configuration": {
                "issuer": local,
                "jwks_uri": local + "/certs",
            },
            local + "/certs": {"keys": [jwk(rsa_key)]},
        }
    )
    verifier = Verifier([issuer], JWKSKeySource(fetch))
    assert verifier.verify(make_token(rsa_key, claims(iss=local)), NOW).issuer == "dev"


@pytest.mark.parametrize(
    "discovery",
    [
        {"issuer": "https://evil.example", "jwks_uri": JWKS_URL},
        {"issuer": ISS + "/", "jwks_uri": JWKS_URL},
        {"jwks_uri": JWKS_URL},
        {"issuer": ISS},
        {"issuer": ISS, "jwks_uri": 42},
        ["not", "an", "object"],
    ],
)
def test_bad_discovery_document(discovery: Any, rsa_key: Any) -> None:
    fetch = FakeFetch({DISCOVERY: discovery, JWKS_URL: {"keys": [jwk(rsa_key)]}})
    verifier = Verifier([OKTA], JWKSKeySource(fetch))
    assert codeof(verifier, make_token(rsa_key, claims()), NOW) == "no-keys"
    assert JWKS_URL not in fetch.calls


def test_jwks_skips_symmetric_and_encryption_keys(rsa_key: Any, rsa_key2: Any) -> None:
    doc = {
        "keys": [
            {"kty": "oct", "k": b64(b"s" * 32), "kid": "hmac", "alg": "HS256"},
            jwk(rsa_key2, "enc", use="enc"),
            jwk(rsa_key, "sig", use="sig"),
            {"kty": "OKP", "crv": "X25519", "x": b64(bytes(32)), "kid": "x25519"},
            "not a key",
            {"kid": "no-kty"},
        ]
    }
    keys = keys_from_jwks(doc)
    assert [k.kid for k in keys] == ["sig"]
    # a key set of only unusable keys gives no keys at all
    only_bad = okta_docs(doc["keys"][0], doc["keys"][1])
    verifier = Verifier([OKTA], JWKSKeySource(FakeFetch(only_bad)))
    tok = make_token(rsa_key2, claims(), kid="enc")
    assert codeof(verifier, tok, NOW) == "no-keys"
    # an HS256 token claiming the oct key's kid finds nothing to verify with
    hs = pyjwt.encode(claims(), b"s" * 32, algorithm="HS256", headers={"kid": "hmac"})
    verifier = Verifier([OKTA], JWKSKeySource(FakeFetch(okta_docs(*doc["keys"]))))
    assert codeof(verifier, hs, NOW) == "alg-not-allowed"


def test_jwks_private_members_are_ignored(rsa_key: Any, ec_key: Any, ed_key: Any) -> None:
    doc = {
        "keys": [
            jwk(rsa_key, "r", private=True),
            jwk(ec_key, "e", private=True),
            jwk(ed_key, "o", private=True),
            jwk(rsa_key, "bogus-d", d="AAAA", p="AA", q="AA"),  # unusable private part
        ]
    }
    keys = keys_from_jwks(doc)
    assert [k.kid for k in keys] == ["r", "e", "o", "bogus-d"]
    assert isinstance(keys[0].key, rsa.RSAPublicKey)
    assert isinstance(keys[1].key, ec.EllipticCurvePublicKey)
    assert isinstance(keys[2].key, ed25519.Ed25519PublicKey)
    for k in keys:
        assert not hasattr(k.key, "private_numbers") and not hasattr(k.key, "private_bytes")
    verifier = Verifier([OKTA], JWKSKeySource(FakeFetch(okta_docs(*doc["keys"]))))
    for key, kid in ((rsa_key, "r"), (ec_key, "e"), (ed_key, "o"), (rsa_key, "bogus-d")):
        assert verifier.verify(make_token(key, claims(jti=kid), kid=kid), NOW).subject == "alice"


def test_jwks_bad_key_skipped_with_warning(rsa_key: Any, caplog: pytest.LogCaptureFixture) -> None:
    doc = {"keys": [{"kty": "RSA", "n": "!!", "e": "AQAB", "kid": "bad"}, jwk(rsa_key, "good")]}
    with caplog.at_level(logging.WARNING, logger="cport.identity"):
        keys = keys_from_jwks(doc)
    assert [k.kid for k in keys] == ["good"]
    assert "bad" in caplog.text


@pytest.mark.parametrize("doc", [[], {}, {"keys": {}}, "keys", None])
def test_not_a_jwks_document(doc: Any) -> None:
    with pytest.raises(ValueError, match="JWKS"):
        keys_from_jwks(doc)


def test_jwks_key_alg_and_kid(rsa_key: Any) -> None:
    doc = {
        "keys": [
            jwk(rsa_key, None, alg="RS256"),
            jwk(rsa_key, "k", alg="PS256"),
            jwk(rsa_key, None) | {"kid": 7},  # not a valid JWK: skipped
        ]
    }
    keys = keys_from_jwks(doc)
    assert [(k.kid, k.alg) for k in keys] == [(None, "RS256"), ("k", "PS256")]
    # the JWK's alg binds the key: an RS256 token cannot use the PS256-only key
    verifier = Verifier([OKTA], StaticKeySource({"corp-okta": keys[1:]}))
    assert codeof(verifier, make_token(rsa_key, claims(), kid="k"), NOW) == "alg-not-allowed"


def test_verified_identity_is_frozen(rsa_key: Any) -> None:
    verifier = Verifier([OKTA], StaticKeySource({"corp-okta": [vk(rsa_key)]}))
    ident = verifier.verify(make_token(rsa_key, claims()), NOW)
    assert isinstance(ident, VerifiedIdentity)
    with pytest.raises(AttributeError):
        ident.subject = "mallory"  # type: ignore[misc]


def test_act_claim_cannot_name_a_second_actor(ec_key: Any) -> None:
    """`agent:actor` comes from act.sub alone: an `actor` member must not add another."""
    verifier = Verifier([OKTA], StaticKeySource({"corp-okta": [vk(ec_key)]}))
    payload = claims(sub="alice", act={"sub": "bot-1", "actor": "bot-admin"})
    labels = verifier.verify(make_token(ec_key, payload), NOW).labels
    assert labels.values("agent", "actor") == ["bot-1"]


@pytest.mark.parametrize("value,ok", [(True, True), ([], False), (["x", True], True)])
def test_required_claims_compare_as_label_text(ec_key: Any, value: Any, ok: bool) -> None:
    issuer = IssuerConfig(
        name="corp-okta",
        issuer=ISS,
        audiences=("cport",),
        required_claims=(("verified", ("true",)),),
    )
    verifier = Verifier([issuer], StaticKeySource({"corp-okta": [vk(ec_key)]}))
    token = make_token(ec_key, claims(sub="alice", verified=value))
    if ok:
        assert verifier.verify(token, NOW).subject == "alice"
    else:
        with pytest.raises(CredentialError) as err:
            verifier.verify(token, NOW)
        assert err.value.code == "missing-claim"
