"""SPIFFE X.509-SVID and JWT-SVID verification against a PKI generated at test time.

Every key and certificate is made here with `cryptography` (nothing is stored in the
repository); keys are module-scoped so the file stays fast. Each rejection test asserts the
specific reason code.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cport.errors import CredentialError, IdentityError, TokenExpired
from cport.identity._credentials import credential_hash
from cport.identity._jwt import VerificationKey
from cport.identity._labels import Label
from cport.identity._spiffe import (
    TrustBundle,
    load_pem_chain,
    parse_spiffe_id,
    verify_jwt_svid,
    verify_x509_svid,
)

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
TD = "corp.example"
OTHER = "other.example"
SPIFFE_ID = "spiffe://corp.example/ns/payments/sa/api"
DAY = timedelta(days=1)

LEAF_KU = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)
CA_KU = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)
_UNSET: Any = object()


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]) if cn else x509.Name([])


def _hash_for(key: PrivateKey) -> hashes.SHA256 | None:
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def make_cert(
    key: PrivateKey,
    signer: PrivateKey,
    *,
    subject: str = "",
    issuer: str,
    uris: Sequence[str] = (),
    dns: Sequence[str] = (),
    ca: bool | None = False,
    path_length: int | None = None,
    key_usage: x509.KeyUsage | None = _UNSET,
    not_before: datetime = NOW - DAY,
    not_after: datetime = NOW + DAY,
    extra: Sequence[tuple[x509.ExtensionType, bool]] = (),
) -> x509.Certificate:
    """A certificate for `key`, signed by `signer` (whose subject is `issuer`). `ca=None` leaves
    basicConstraints out; `key_usage` defaults to the leaf or CA usage, None leaves it out."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    names += [x509.DNSName(d) for d in dns]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=not subject)
    if ca is not None:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True
        )
    if key_usage is _UNSET:
        key_usage = CA_KU if ca else LEAF_KU
    if key_usage is not None:
        builder = builder.add_extension(key_usage, critical=True)
    for ext, critical in extra:
        builder = builder.add_extension(ext, critical=critical)
    return builder.sign(signer, _hash_for(signer))


@dataclass
class PKI:
    root_key: ec.EllipticCurvePrivateKey
    root: x509.Certificate
    inter_key: ec.EllipticCurvePrivateKey
    inter: x509.Certificate
    other_root_key: ec.EllipticCurvePrivateKey
    other_root: x509.Certificate
    leaf_key: ec.EllipticCurvePrivateKey
    rsa_key: rsa.RSAPrivateKey
    ed_key: ed25519.Ed25519PrivateKey
    bundles: dict[str, TrustBundle]

    def leaf(
        self, *, via: str = "inter", uris: Sequence[str] = (SPIFFE_ID,), **kw: Any
    ) -> x509.Certificate:
        """A leaf SVID issued by corp's intermediate (`via="inter"`) or root (`via="root"`)."""
        signer, issuer = {
            "inter": (self.inter_key, "corp intermediate"),
            "root": (self.root_key, "corp root"),
            "other": (self.other_root_key, "other root"),
        }[via]
        return make_cert(self.leaf_key, signer, issuer=issuer, uris=uris, **kw)

    def root_cert(self, **kw: Any) -> x509.Certificate:
        """Another certificate for corp's root key, self-signed, a CA; `kw` as `make_cert`."""
        return make_cert(
            self.root_key, self.root_key, subject="corp root", issuer="corp root", ca=True, **kw
        )

    def inter_cert(self, **kw: Any) -> x509.Certificate:
        """Another certificate for corp's intermediate key, issued by the root, a CA."""
        return make_cert(
            self.inter_key,
            self.root_key,
            subject="corp intermediate",
            issuer="corp root",
            ca=True,
            **kw,
        )


@pytest.fixture(scope="module")
def pki() -> PKI:
    root_key = ec.generate_private_key(ec.SECP256R1())
    inter_key = ec.generate_private_key(ec.SECP256R1())
    other_key = ec.generate_private_key(ec.SECP256R1())
    start, end = NOW - 365 * DAY, NOW + 365 * DAY
    root = make_cert(
        root_key,
        root_key,
        subject="corp root",
        issuer="corp root",
        ca=True,
        uris=["spiffe://corp.example"],
        not_before=start,
        not_after=end,
    )
    inter = make_cert(
        inter_key,
        root_key,
        subject="corp intermediate",
        issuer="corp root",
        ca=True,
        uris=["spiffe://corp.example"],
        not_before=NOW - 30 * DAY,
        not_after=NOW + 30 * DAY,
    )
    other_root = make_cert(
        other_key,
        other_key,
        subject="other root",
        issuer="other root",
        ca=True,
        uris=["spiffe://other.example"],
        not_before=start,
        not_after=end,
    )
    return PKI(
        root_key=root_key,
        root=root,
        inter_key=inter_key,
        inter=inter,
        other_root_key=other_key,
        other_root=other_root,
        leaf_key=ec.generate_private_key(ec.SECP256R1()),
        rsa_key=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ed_key=ed25519.Ed25519PrivateKey.generate(),
        bundles={TD: TrustBundle(TD, (root,)), OTHER: TrustBundle(OTHER, (other_root,))},
    )


def reject(code: str, fn: Callable[[], object]) -> CredentialError:
    with pytest.raises(CredentialError) as info:
        fn()
    assert info.value.code == code, info.value.message
    return info.value


def x509_reject(
    pki: PKI,
    code: str,
    chain: Sequence[x509.Certificate],
    bundles: dict[str, TrustBundle] | None = None,
) -> CredentialError:
    return reject(code, lambda: verify_x509_svid(chain, bundles or pki.bundles, NOW))


# --- valid X.509-SVIDs ---------------------------------------------------------------------


def test_leaf_direct_from_root(pki: PKI) -> None:
    leaf = pki.leaf(via="root")
    ident = verify_x509_svid([leaf], pki.bundles, NOW)
    assert ident.kind == "spiffe-x509"
    assert ident.labels.strings() == [
        "spiffe:id=spiffe://corp.example/ns/payments/sa/api",
        "spiffe:trust-domain=corp.example",
    ]
    assert Label("spiffe", "id", SPIFFE_ID) in ident.labels
    assert ident.subject == SPIFFE_ID
    assert ident.issuer == TD
    assert ident.expires_at == leaf.not_valid_after_utc.timestamp()
    assert ident.token_id == credential_hash(leaf.public_bytes(Encoding.DER))


def test_leaf_via_intermediate(pki: PKI) -> None:
    leaf = pki.leaf(not_after=NOW + 60 * DAY)  # outlives the intermediate
    ident = verify_x509_svid([leaf, pki.inter], pki.bundles, NOW)
    assert ident.subject == SPIFFE_ID
    assert ident.labels.get("spiffe", "trust-domain") == TD
    assert ident.expires_at == pki.inter.not_valid_after_utc.timestamp()  # min over the chain


def test_chain_may_include_the_root(pki: PKI) -> None:
    ident = verify_x509_svid([pki.leaf(), pki.inter, pki.root], pki.bundles, NOW)
    assert ident.subject == SPIFFE_ID


def test_intermediates_in_any_order(pki: PKI) -> None:
    key2 = ec.generate_private_key(ec.SECP256R1())
    inter2 = make_cert(
        key2, pki.inter_key, subject="corp issuing", issuer="corp intermediate", ca=True
    )
    leaf = make_cert(pki.leaf_key, key2, issuer="corp issuing", uris=[SPIFFE_ID])
    assert verify_x509_svid([leaf, pki.inter, inter2], pki.bundles, NOW).subject == SPIFFE_ID


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
def test_other_key_types_in_the_chain(pki: PKI, kind: str) -> None:
    key: PrivateKey = pki.rsa_key if kind == "rsa" else pki.ed_key
    inter = make_cert(key, pki.root_key, subject=f"corp {kind}", issuer="corp root", ca=True)
    leaf = make_cert(pki.leaf_key, key, issuer=f"corp {kind}", uris=[SPIFFE_ID])
    assert verify_x509_svid([leaf, inter], pki.bundles, NOW).subject == SPIFFE_ID


def test_extra_dns_san_and_tls_eku_are_fine(pki: PKI) -> None:
    eku = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
    leaf = pki.leaf(dns=["api.payments.svc"], extra=[(eku, False)])
    assert verify_x509_svid([leaf, pki.inter], pki.bundles, NOW).subject == SPIFFE_ID


def test_pem_round_trip(pki: PKI) -> None:
    pem = b"".join(c.public_bytes(Encoding.PEM) for c in (pki.leaf(), pki.inter))
    chain = load_pem_chain(pem)
    assert len(chain) == 2
    bundle = TrustBundle.from_pem(TD, pki.root.public_bytes(Encoding.PEM))
    assert verify_x509_svid(chain, {TD: bundle}, NOW).subject == SPIFFE_ID


# --- validity period -----------------------------------------------------------------------


def test_expired_leaf(pki: PKI) -> None:
    leaf = pki.leaf(not_before=NOW - 2 * DAY, not_after=NOW - timedelta(seconds=1))
    err = x509_reject(pki, "expired", [leaf, pki.inter])
    assert isinstance(err, TokenExpired)


def test_not_yet_valid_leaf(pki: PKI) -> None:
    leaf = pki.leaf(not_before=NOW + timedelta(seconds=1), not_after=NOW + DAY)
    x509_reject(pki, "not-yet-valid", [leaf, pki.inter])


def test_expired_intermediate(pki: PKI) -> None:
    inter = pki.inter_cert(
        not_before=NOW - 30 * DAY,
        not_after=NOW - DAY,
    )
    x509_reject(pki, "expired", [pki.leaf(), inter])


def test_expired_root(pki: PKI) -> None:
    root = pki.root_cert(
        not_before=NOW - 30 * DAY,
        not_after=NOW - DAY,
    )
    x509_reject(pki, "expired", [pki.leaf(via="root")], {TD: TrustBundle(TD, (root,))})


def test_rotated_root_with_same_name_picks_the_valid_one(pki: PKI) -> None:
    old = pki.root_cert(
        not_before=NOW - 30 * DAY,
        not_after=NOW - DAY,
    )
    bundles = {TD: TrustBundle(TD, (old, pki.root))}
    assert verify_x509_svid([pki.leaf(via="root")], bundles, NOW).subject == SPIFFE_ID


def test_naive_now_is_a_programming_error(pki: PKI) -> None:
    with pytest.raises(ValueError, match="timezone"):
        verify_x509_svid([pki.leaf(via="root")], pki.bundles, NOW.replace(tzinfo=None))


# --- trust domain and chain ----------------------------------------------------------------


def test_leaf_signed_by_other_domains_ca(pki: PKI) -> None:
    x509_reject(pki, "untrusted-chain", [pki.leaf(via="other")])


def test_other_domain_id_chaining_to_corp_root(pki: PKI) -> None:
    # The bundle is chosen by the ID's trust domain: corp's root cannot vouch for other.example.
    leaf = pki.leaf(uris=["spiffe://other.example/ns/payments/sa/api"])
    x509_reject(pki, "untrusted-chain", [leaf, pki.inter])


def test_unknown_trust_domain(pki: PKI) -> None:
    leaf = pki.leaf(uris=["spiffe://nowhere.example/svc"])
    x509_reject(pki, "unknown-trust-domain", [leaf, pki.inter])


def test_bundle_filed_under_the_wrong_domain_is_not_used(pki: PKI) -> None:
    bundles = {TD: TrustBundle(OTHER, (pki.root,))}
    x509_reject(pki, "unknown-trust-domain", [pki.leaf(), pki.inter], bundles)


def test_missing_intermediate(pki: PKI) -> None:
    x509_reject(pki, "untrusted-chain", [pki.leaf()])


def test_self_signed_leaf(pki: PKI) -> None:
    leaf = make_cert(pki.leaf_key, pki.leaf_key, subject="api", issuer="api", uris=[SPIFFE_ID])
    x509_reject(pki, "untrusted-chain", [leaf])


def test_tampered_signature(pki: PKI) -> None:
    der = bytearray(pki.leaf(via="root").public_bytes(Encoding.DER))
    der[-1] ^= 0x01  # last byte of the ECDSA signature's s
    x509_reject(pki, "untrusted-chain", [x509.load_der_x509_certificate(bytes(der))])


def test_leaf_re_signed_with_forged_issuer_name(pki: PKI) -> None:
    # Names match the corp root but the key is the other domain's: the signature fails.
    leaf = make_cert(pki.leaf_key, pki.other_root_key, issuer="corp root", uris=[SPIFFE_ID])
    x509_reject(pki, "untrusted-chain", [leaf])


def test_intermediate_without_ca_flag(pki: PKI) -> None:
    inter = make_cert(
        pki.inter_key,
        pki.root_key,
        subject="corp intermediate",
        issuer="corp root",
        ca=False,
        key_usage=CA_KU,
    )
    err = x509_reject(pki, "untrusted-chain", [pki.leaf(), inter])
    assert "not a CA" in err.message


def test_intermediate_without_basic_constraints(pki: PKI) -> None:
    inter = make_cert(
        pki.inter_key,
        pki.root_key,
        subject="corp intermediate",
        issuer="corp root",
        ca=None,
        key_usage=CA_KU,
    )
    x509_reject(pki, "untrusted-chain", [pki.leaf(), inter])


def test_intermediate_without_key_cert_sign(pki: PKI) -> None:
    inter = pki.inter_cert(
        key_usage=LEAF_KU,
    )
    x509_reject(pki, "untrusted-chain", [pki.leaf(), inter])


def test_root_path_length_zero_forbids_intermediates(pki: PKI) -> None:
    root = make_cert(
        pki.root_key, pki.root_key, subject="corp root", issuer="corp root", ca=True, path_length=0
    )
    x509_reject(pki, "untrusted-chain", [pki.leaf(), pki.inter], {TD: TrustBundle(TD, (root,))})
    # ...but a leaf straight from that root is fine.
    assert verify_x509_svid([pki.leaf(via="root")], {TD: TrustBundle(TD, (root,))}, NOW)


def _constrained_inter(
    pki: PKI, permitted: str | None = None, excluded: str | None = None
) -> x509.Certificate:
    nc = x509.NameConstraints(
        permitted_subtrees=[x509.UniformResourceIdentifier(permitted)] if permitted else None,
        excluded_subtrees=[x509.UniformResourceIdentifier(excluded)] if excluded else None,
    )
    return pki.inter_cert(
        extra=[(nc, True)],
    )


def test_uri_name_constraints(pki: PKI) -> None:
    ok = _constrained_inter(pki, permitted=TD)
    assert verify_x509_svid([pki.leaf(), ok], pki.bundles, NOW).subject == SPIFFE_ID
    x509_reject(pki, "untrusted-chain", [pki.leaf(), _constrained_inter(pki, permitted=OTHER)])
    x509_reject(pki, "untrusted-chain", [pki.leaf(), _constrained_inter(pki, excluded=TD)])


def test_unknown_critical_extension_on_leaf(pki: PKI) -> None:
    ext = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00")
    x509_reject(pki, "untrusted-chain", [pki.leaf(extra=[(ext, True)]), pki.inter])


# --- SPIFFE ID in the leaf -----------------------------------------------------------------


def test_two_uri_sans(pki: PKI) -> None:
    leaf = pki.leaf(uris=[SPIFFE_ID, "spiffe://corp.example/ns/payments/sa/other"])
    x509_reject(pki, "svid-multiple-uris", [leaf, pki.inter])


def test_spiffe_and_https_uri_sans(pki: PKI) -> None:
    leaf = pki.leaf(uris=[SPIFFE_ID, "https://corp.example/api"])
    x509_reject(pki, "svid-multiple-uris", [leaf, pki.inter])


def test_no_uri_san(pki: PKI) -> None:
    leaf = pki.leaf(uris=[], dns=["api.corp.example"])
    x509_reject(pki, "svid-no-spiffe-id", [leaf, pki.inter])


def test_no_san_at_all(pki: PKI) -> None:
    leaf = pki.leaf(uris=[], subject="api")
    x509_reject(pki, "svid-no-spiffe-id", [leaf, pki.inter])


def test_https_uri(pki: PKI) -> None:
    leaf = pki.leaf(uris=["https://corp.example/ns/payments/sa/api"])
    x509_reject(pki, "svid-no-spiffe-id", [leaf, pki.inter])


INVALID_IDS = [
    "spiffe://Corp.example/ns/payments",  # uppercase trust domain
    "spiffe://corp.example/ns/../admin",  # '..' segment
    "spiffe://corp.example/ns/./payments",  # '.' segment
    "spiffe://corp.example/ns//payments",  # empty segment
    "spiffe://corp.example/ns/payments/",  # trailing slash
    "spiffe://corp.example/ns/payments?x=1",  # query
    "spiffe://corp.example/ns/payments#frag",  # fragment
    "spiffe://corp.example:8443/ns/payments",  # port
    "spiffe://admin@corp.example/ns/payments",  # userinfo
    "spiffe://corp.example/ns/pay%20ments",  # percent-encoding
    "spiffe://corp.example",  # no path (trust domain ID, not a workload)
    "spiffe://corp.example/",  # root path
    "spiffe:///ns/payments",  # empty trust domain
    "SPIFFE://corp.example/ns/payments",  # scheme must be lowercase
    "spiffe://corp.example/" + "a" * 2048,  # too long
]


@pytest.mark.parametrize("bad_id", INVALID_IDS)
def test_invalid_spiffe_id_in_leaf(pki: PKI, bad_id: str) -> None:
    x509_reject(pki, "svid-invalid-id", [pki.leaf(uris=[bad_id]), pki.inter])


@pytest.mark.parametrize("bad_id", INVALID_IDS)
def test_parse_spiffe_id_rejects(bad_id: str) -> None:
    reject("svid-invalid-id", lambda: parse_spiffe_id(bad_id))


def test_parse_spiffe_id_accepts() -> None:
    sid = parse_spiffe_id("spiffe://k8s-west_1.example/ns/staging/sa/default-Svc.v2")
    assert sid.trust_domain == "k8s-west_1.example"
    assert sid.path == "/ns/staging/sa/default-Svc.v2"
    assert (
        str(parse_spiffe_id("spiffe://corp.example", require_path=False)) == "spiffe://corp.example"
    )
    reject("svid-no-spiffe-id", lambda: parse_spiffe_id("corp.example/ns/x"))


# --- leaf constraints ----------------------------------------------------------------------


def test_leaf_is_ca(pki: PKI) -> None:
    x509_reject(pki, "svid-leaf-is-ca", [pki.leaf(ca=True, key_usage=LEAF_KU), pki.inter])


def _ku(**on: bool) -> x509.KeyUsage:
    fields = dict.fromkeys(
        [
            "digital_signature",
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "key_cert_sign",
            "crl_sign",
            "encipher_only",
            "decipher_only",
        ],
        False,
    )
    fields.update(on)
    return x509.KeyUsage(**fields)


@pytest.mark.parametrize(
    "ku",
    [
        _ku(digital_signature=True, key_cert_sign=True),
        _ku(digital_signature=True, crl_sign=True),
        _ku(key_encipherment=True),
        None,
    ],
    ids=["keyCertSign", "cRLSign", "no-digitalSignature", "no-keyUsage"],
)
def test_leaf_bad_key_usage(pki: PKI, ku: x509.KeyUsage | None) -> None:
    x509_reject(pki, "svid-bad-key-usage", [pki.leaf(key_usage=ku), pki.inter])


def test_leaf_eku_without_tls(pki: PKI) -> None:
    eku = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING])
    x509_reject(pki, "svid-bad-key-usage", [pki.leaf(extra=[(eku, True)]), pki.inter])


# --- malformed input -----------------------------------------------------------------------


def test_empty_chain(pki: PKI) -> None:
    x509_reject(pki, "malformed", [])


def test_not_a_certificate(pki: PKI) -> None:
    x509_reject(pki, "malformed", [b"not a cert"])  # type: ignore[list-item]


@pytest.mark.parametrize("pem", [b"", b"garbage \x00\xff", b"-----BEGIN CERTIFICATE-----\nxx\n"])
def test_non_pem_garbage(pem: bytes) -> None:
    reject("malformed", lambda: load_pem_chain(pem))


def test_bundle_from_garbage() -> None:
    with pytest.raises(IdentityError) as info:
        TrustBundle.from_pem(TD, b"garbage")
    assert info.value.code == "invalid-bundle"
    with pytest.raises(IdentityError):
        TrustBundle("Corp.Example", ())


# --- JWT-SVID ------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(
    key: PrivateKey,
    claims: dict[str, Any],
    *,
    alg: str = "ES256",
    kid: str | None = None,
    typ: str | None = "JWT",
) -> str:
    head: dict[str, Any] = {"alg": alg}
    if typ is not None:
        head["typ"] = typ
    if kid is not None:
        head["kid"] = kid
    signing_input = f"{_b64(json.dumps(head).encode())}.{_b64(json.dumps(claims).encode())}"
    data = signing_input.encode()
    if isinstance(key, ec.EllipticCurvePrivateKey):
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    elif isinstance(key, rsa.RSAPrivateKey):
        sig = key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    else:
        sig = key.sign(data)
    return f"{signing_input}.{_b64(sig)}"


T = NOW.timestamp()
AUD = "spiffe://corp.example/ledger"


def _claims(**over: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {"sub": SPIFFE_ID, "aud": [AUD], "exp": T + 300, "iat": T - 10}
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not None}


@pytest.fixture(scope="module")
def jwks(pki: PKI) -> dict[str, list[VerificationKey]]:
    return {
        TD: [
            VerificationKey("corp-ec", pki.root_key.public_key()),
            VerificationKey("corp-rsa", pki.rsa_key.public_key()),
        ],
        OTHER: [VerificationKey("other-ec", pki.other_root_key.public_key())],
    }


def jwt_reject(jwks: dict[str, list[VerificationKey]], code: str, token: str) -> CredentialError:
    return reject(code, lambda: verify_jwt_svid(token, jwks, [AUD], T))


def test_jwt_svid_es256(pki: PKI, jwks: dict[str, list[VerificationKey]]) -> None:
    token = make_jwt(pki.root_key, _claims(), kid="corp-ec")
    ident = verify_jwt_svid(token, jwks, ["other-service", AUD], T)
    assert ident.kind == "spiffe-jwt"
    assert ident.labels.strings() == [
        "spiffe:id=spiffe://corp.example/ns/payments/sa/api",
        "spiffe:trust-domain=corp.example",
    ]
    assert (ident.subject, ident.issuer, ident.expires_at) == (SPIFFE_ID, TD, T + 300)
    assert ident.token_id == credential_hash(token)
    assert "iss" not in ident.claims


def test_jwt_svid_rs256_with_iss_and_jti(pki: PKI, jwks: dict[str, list[VerificationKey]]) -> None:
    claims = _claims(iss="https://spire.corp.example", jti="abc-123", aud=AUD)
    token = make_jwt(pki.rsa_key, claims, alg="RS256")  # no kid: every key of the domain is tried
    ident = verify_jwt_svid(token, jwks, [AUD], T)
    assert ident.subject == SPIFFE_ID
    assert ident.token_id == "abc-123"


def test_jwt_svid_typ_may_be_absent_or_jose(
    pki: PKI, jwks: dict[str, list[VerificationKey]]
) -> None:
    for typ in ("JOSE", None):
        token = make_jwt(pki.root_key, _claims(), typ=typ)
        assert verify_jwt_svid(token, jwks, [AUD], T).subject == SPIFFE_ID


def test_jwt_svid_wrong_audience(pki: PKI, jwks: dict[str, list[VerificationKey]]) -> None:
    jwt_reject(jwks, "audience-mismatch", make_jwt(pki.root_key, _claims(aud=["billing"])))


def test_jwt_svid_without_audience(pki: PKI, jwks: dict[str, list[VerificationKey]]) -> None:
    jwt_reject(jwks, "audience-mismatch", make_jwt(pki.root_key, _claims(aud=None)))


def test_jwt_svid_expired(pki: PKI, jwks: dict[str, list[VerificationKey]]) -> None:
    err = jwt_reject(jwks, "expired", make_jwt(pki.root_key, _claims(exp=T - 3600)))
    assert isinstance(err, TokenExpired)


def test_jwt_svid_without_exp(pki: PKI, jwks: dict[str, list[VerificationKey]]) -> None:
    jwt_reject(jwks, "missing-claim", make_jwt(pki.root_key, _claims(exp=None)))


def test_jwt_svid_unknown_trust_domain(pki: PKI, jwks: dict[str, list[VerificationKey]]) -> None:
    token = make_jwt(pki.root_key, _claims(sub="spiffe://nowhere.example/svc"))
    jwt_reject(jwks, "unknown-trust-domain", token)


@pytest.mark.parametrize("sub", ["alice", "https://corp.example/ns/payments", 42, None])
def test_jwt_svid_sub_not_a_spiffe_id(
    pki: PKI, jwks: dict[str, list[VerificationKey]], sub: Any
) -> None:
    jwt_reject(jwks, "svid-no-spiffe-id", make_jwt(pki.root_key, _claims(sub=sub)))


def test_jwt_svid_sub_invalid_spiffe_id(pki: PKI, jwks: dict[str, list[VerificationKey]]) -> None:
    token = make_jwt(pki.root_key, _claims(sub="spiffe://corp.example/ns/../x"))
    jwt_reject(jwks, "svid-invalid-id", token)


def test_jwt_svid_signed_by_other_domains_key(
    pki: PKI, jwks: dict[str, list[VerificationKey]]
) -> None:
    jwt_reject(jwks, "bad-signature", make_jwt(pki.other_root_key, _claims()))
    # Naming the other domain's kid does not make corp.example use that key.
    jwt_reject(jwks, "unknown-kid", make_jwt(pki.other_root_key, _claims(), kid="other-ec"))


def test_jwt_svid_alg_not_allowed(pki: PKI, jwks: dict[str, list[VerificationKey]]) -> None:
    jwt_reject(jwks, "alg-not-allowed", make_jwt(pki.ed_key, _claims(), alg="EdDSA"))
    jwt_reject(jwks, "alg-not-allowed", make_jwt(pki.root_key, _claims(), alg="none"))
    with pytest.raises(ValueError, match="subset"):
        verify_jwt_svid("x.y.z", jwks, [AUD], T, algorithms=("HS256",))


def test_jwt_svid_bad_typ(pki: PKI, jwks: dict[str, list[VerificationKey]]) -> None:
    jwt_reject(jwks, "malformed", make_jwt(pki.root_key, _claims(), typ="at+jwt"))


def test_jwt_svid_non_string_iss(pki: PKI, jwks: dict[str, list[VerificationKey]]) -> None:
    jwt_reject(jwks, "malformed", make_jwt(pki.root_key, _claims(iss=7)))


def test_jwt_svid_garbage(jwks: dict[str, list[VerificationKey]]) -> None:
    jwt_reject(jwks, "malformed", "not-a-jwt")
