"""SPIFFE SVID verification: X.509-SVIDs and JWT-SVIDs, as pure functions.

No I/O and no clock of its own: trust bundles and the current time are passed in. Each rejection
raises a :class:`~cport.errors.CredentialError` whose `code` is a stable reason:

``malformed``             not a certificate, an empty or oversized chain, an unparsable extension
``svid-no-spiffe-id``     no URI SAN, or the URI (or JWT ``sub``) is not a ``spiffe://`` URI
``svid-multiple-uris``    the leaf has more than one URI SAN (X509-SVID §2 says reject)
``svid-invalid-id``       a ``spiffe://`` URI that is not a valid workload SPIFFE ID
``svid-leaf-is-ca``       the leaf has basicConstraints ``cA=true``
``svid-bad-key-usage``    leaf keyUsage missing, without digitalSignature, or with
                          keyCertSign/cRLSign; or an extendedKeyUsage allowing no TLS use
``unknown-trust-domain``  no bundle (X.509) or key set (JWT) for the ID's trust domain
``untrusted-chain``       no certification path from the leaf to a root of the bundle of the ID's
                          own trust domain (bad signature, issuer not a CA, path length, name
                          constraints, weak algorithm, unsupported critical extension, …)
``expired``               (:class:`~cport.errors.TokenExpired`) a certificate of the path expired
``not-yet-valid``         a certificate of the path is not valid yet

plus, for JWT-SVIDs, every code of :mod:`cport.identity._jwt` (``bad-signature``,
``audience-mismatch``, ``alg-not-allowed``, ``missing-claim``, …).

The bundle is always chosen by the trust domain named in the SVID's SPIFFE ID, never by which
root happens to verify: a leaf claiming ``spiffe://other.example/...`` that chains to
``corp.example``'s root is rejected.

Path building is done here rather than with `cryptography.x509.verification`: its
`ClientVerifier` accepts URI-only leaves only with a relaxed end-entity extension policy, applies
Web-PKI profile rules (AKI required, …) to CAs that SPIFFE does not require, and reports failures
as one string, with no way to tell ``expired`` from ``untrusted-chain``. Signatures are checked
with `Certificate.verify_directly_issued_by` (RSA PKCS#1 v1.5 / PSS, ECDSA, Ed25519, Ed448).
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import dsa, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID

from cport.errors import CredentialError, IdentityError, TokenExpired
from cport.identity._credentials import VerifiedIdentity, credential_hash
from cport.identity._issuer import IssuerConfig
from cport.identity._jwt import ParsedJWS, VerificationKey, parse_jws, verify_jws
from cport.identity._labels import Label, Labels

__all__ = [
    "JWT_SVID_ALGORITHMS",
    "SpiffeId",
    "TrustBundle",
    "load_pem_chain",
    "parse_spiffe_id",
    "verify_jwt_svid",
    "verify_x509_svid",
]

#: Algorithms JWT-SVID §2.1 allows; anything else is refused even if a caller asks for it.
JWT_SVID_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512"}
)
DEFAULT_JWT_SVID_ALGORITHMS = ("RS256", "ES256", "ES384", "PS256")

MAX_ID_BYTES = 2048  # SPIFFE-ID §2.3
MAX_TRUST_DOMAIN_BYTES = 255
MAX_CHAIN_CERTS = 16  # leaf + intermediates presented
MAX_PATH_DEPTH = 8  # intermediates in one certification path
_MAX_SEARCH_STEPS = 512  # bound on path-building work for adversarial chains
_MIN_RSA_BITS = 2048

_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
_SCHEME = "spiffe://"
_STRONG_HASHES = frozenset({"sha256", "sha384", "sha512"})
_TLS_EKUS = frozenset(
    {
        ExtendedKeyUsageOID.CLIENT_AUTH,
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,
    }
)
# Extensions this module acts on (or that never restrict use); any other critical one rejects.
_HANDLED_EXTENSIONS = frozenset(
    {
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.EXTENDED_KEY_USAGE,
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
        ExtensionOID.NAME_CONSTRAINTS,
        ExtensionOID.SUBJECT_KEY_IDENTIFIER,
        ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
    }
)


def _reject(code: str, message: str) -> CredentialError:
    return CredentialError(message, code=code)


# --- SPIFFE IDs ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SpiffeId:
    """A validated SPIFFE ID: ``spiffe://<trust_domain><path>``; `path` is ``""`` or ``/a/b``."""

    trust_domain: str
    path: str

    def __str__(self) -> str:
        return f"{_SCHEME}{self.trust_domain}{self.path}"


def _check_trust_domain(td: str) -> str | None:
    """Why `td` is not a valid trust domain name, or None."""
    if not td:
        return "the trust domain is empty"
    if len(td) > MAX_TRUST_DOMAIN_BYTES:
        return "the trust domain is longer than 255 bytes"
    if "@" in td:
        return "a SPIFFE ID must not carry userinfo"
    if ":" in td:
        return "a SPIFFE ID must not carry a port"
    if not _TRUST_DOMAIN.fullmatch(td):
        return "the trust domain may hold only lowercase letters, digits, '.', '-' and '_'"
    return None


def parse_spiffe_id(text: str, *, require_path: bool = True) -> SpiffeId:
    """Parse and validate a SPIFFE ID strictly (SPIFFE-ID §2, the rules go-spiffe applies).

    Not ``spiffe://`` at all → ``svid-no-spiffe-id``; a ``spiffe://`` URI that breaks a rule
    (uppercase, port, userinfo, query, fragment, percent-encoding, empty / ``.`` / ``..``
    segment, trailing ``/``, over 2048 bytes) → ``svid-invalid-id``. A workload SVID must name
    a path (X509-SVID §3.1): the bare trust-domain ID is refused unless `require_path` is false.
    """
    if not text.startswith(_SCHEME):
        if text[: len(_SCHEME)].lower() == _SCHEME:
            raise _reject("svid-invalid-id", "the SPIFFE ID scheme must be lowercase 'spiffe'")
        raise _reject("svid-no-spiffe-id", "the URI is not a spiffe:// SPIFFE ID")
    if not text.isascii():
        raise _reject("svid-invalid-id", "the SPIFFE ID contains non-ASCII characters")
    if len(text) > MAX_ID_BYTES:
        raise _reject("svid-invalid-id", f"the SPIFFE ID is longer than {MAX_ID_BYTES} bytes")
    if "?" in text or "#" in text:
        raise _reject("svid-invalid-id", "a SPIFFE ID must not carry a query or fragment")
    rest = text[len(_SCHEME) :]
    td, slash, path = rest.partition("/")
    problem = _check_trust_domain(td)
    if problem is not None:
        raise _reject("svid-invalid-id", problem)
    if not slash:
        if require_path:
            raise _reject("svid-invalid-id", "a workload SPIFFE ID must have a path")
        return SpiffeId(td, "")
    for segment in path.split("/"):
        if not segment:
            raise _reject("svid-invalid-id", "a SPIFFE ID path has an empty segment")
        if segment in (".", ".."):
            raise _reject("svid-invalid-id", "a SPIFFE ID path must not have '.' or '..'")
        if not _SEGMENT.fullmatch(segment):
            raise _reject(
                "svid-invalid-id",
                "a SPIFFE ID path may hold only letters, digits, '.', '-' and '_'",
            )
    return SpiffeId(td, "/" + path)


def _identity_labels(sid: SpiffeId) -> Labels:
    return Labels(
        [Label("spiffe", "id", str(sid)), Label("spiffe", "trust-domain", sid.trust_domain)]
    )


# --- trust bundles and chains ----------------------------------------------------------------


@dataclass(frozen=True)
class TrustBundle:
    """The X.509 roots (X509-SVID CA certificates) of one trust domain."""

    trust_domain: str  # "corp.example"
    roots: tuple[x509.Certificate, ...]

    def __post_init__(self) -> None:
        problem = _check_trust_domain(self.trust_domain)
        if problem is not None:
            raise IdentityError(
                f"trust bundle for {self.trust_domain!r}: {problem}", code="invalid-bundle"
            )
        if not self.roots:
            raise IdentityError(
                f"trust bundle for {self.trust_domain!r} has no certificates", code="invalid-bundle"
            )

    @classmethod
    def from_pem(cls, trust_domain: str, pem: bytes) -> TrustBundle:
        """A bundle from concatenated PEM certificates; raises ``IdentityError``
        (``invalid-bundle``) when `pem` holds none."""
        try:
            roots = x509.load_pem_x509_certificates(pem)
        except ValueError:
            raise IdentityError(
                f"trust bundle for {trust_domain!r} holds no PEM certificate",
                code="invalid-bundle",
            ) from None
        return cls(trust_domain, tuple(roots))


def load_pem_chain(pem: bytes) -> list[x509.Certificate]:
    """The certificates of a PEM chain, in order (leaf first); ``malformed`` if there are none."""
    try:
        return x509.load_pem_x509_certificates(pem)
    except (ValueError, TypeError):
        raise _reject("malformed", "not a PEM certificate chain") from None


def _extensions(cert: x509.Certificate) -> x509.Extensions:
    try:
        return cert.extensions
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType):
        raise _reject("malformed", "a certificate has an unparsable extension") from None


def _ext(exts: x509.Extensions, oid: x509.ObjectIdentifier) -> Any:
    try:
        return exts.get_extension_for_oid(oid).value
    except x509.ExtensionNotFound:
        return None


def _unhandled_critical(exts: x509.Extensions) -> str | None:
    for ext in exts:
        oid: x509.ObjectIdentifier = ext.oid
        if ext.critical and oid not in _HANDLED_EXTENSIONS:
            return oid.dotted_string
    return None


def _leaf_spiffe_id(leaf: x509.Certificate, exts: x509.Extensions) -> SpiffeId:
    san = _ext(exts, ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    uris: list[str] = (
        san.get_values_for_type(x509.UniformResourceIdentifier) if san is not None else []
    )
    if not uris:
        raise _reject("svid-no-spiffe-id", "the leaf certificate has no URI SAN")
    if len(uris) > 1:
        raise _reject("svid-multiple-uris", f"the leaf certificate has {len(uris)} URI SANs")
    return parse_spiffe_id(uris[0])


def _check_leaf(exts: x509.Extensions) -> None:
    bc = _ext(exts, ExtensionOID.BASIC_CONSTRAINTS)
    if bc is not None and bc.ca:
        raise _reject("svid-leaf-is-ca", "the leaf certificate is a CA (cA=true)")
    ku = _ext(exts, ExtensionOID.KEY_USAGE)
    if ku is None:
        raise _reject("svid-bad-key-usage", "the leaf certificate has no keyUsage")
    if not ku.digital_signature:
        raise _reject("svid-bad-key-usage", "the leaf keyUsage lacks digitalSignature")
    if ku.key_cert_sign or ku.crl_sign:
        raise _reject("svid-bad-key-usage", "the leaf keyUsage allows keyCertSign or cRLSign")
    eku = _ext(exts, ExtensionOID.EXTENDED_KEY_USAGE)
    if eku is not None and not _TLS_EKUS.intersection(eku):
        raise _reject("svid-bad-key-usage", "the leaf extendedKeyUsage allows no TLS use")
    oid = _unhandled_critical(exts)
    if oid is not None:
        raise _reject("untrusted-chain", f"the leaf has an unsupported critical extension {oid}")


class _Path:
    """Path-building state: the presented certificates with parsed extensions, a signature
    cache, a work budget, and the first reason a candidate issuer was refused."""

    def __init__(
        self,
        leaf: x509.Certificate,
        pool: Sequence[x509.Certificate],
        roots: Sequence[x509.Certificate],
    ) -> None:
        self.leaf = leaf
        self.pool = list(pool)
        self.roots = list(roots)
        self.steps = 0
        self.why: str | None = None
        self._signed: dict[tuple[int, int], bool] = {}

    def note(self, why: str) -> None:
        if self.why is None:
            self.why = why

    def issued_by(self, child: x509.Certificate, parent: x509.Certificate) -> bool:
        """`parent` names and signed `child`, with a strong algorithm and key."""
        key = (id(child), id(parent))
        if key not in self._signed:
            self._signed[key] = self._check_signed(child, parent)
        return self._signed[key]

    def _check_signed(self, child: x509.Certificate, parent: x509.Certificate) -> bool:
        if child.issuer != parent.subject:
            return False
        try:
            algo = child.signature_hash_algorithm
        except UnsupportedAlgorithm:
            self.note("a certificate uses an unsupported signature algorithm")
            return False
        if algo is not None and algo.name not in _STRONG_HASHES:
            self.note(f"a certificate is signed with weak hash {algo.name}")
            return False
        try:
            pub = parent.public_key()
        except (ValueError, UnsupportedAlgorithm):
            self.note("an issuer has an unsupported public key")
            return False
        if isinstance(pub, dsa.DSAPublicKey) or (
            isinstance(pub, rsa.RSAPublicKey) and pub.key_size < _MIN_RSA_BITS
        ):
            self.note("an issuer key is too weak (DSA, or RSA under 2048 bits)")
            return False
        try:
            child.verify_directly_issued_by(parent)
        except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
            self.note(f"the signature on {_describe(child)} does not verify")
            return False
        return True

    def can_sign(self, ca: x509.Certificate, *, root: bool) -> bool:
        """`ca` may issue certificates (cA=true, keyCertSign). A bundle root without
        basicConstraints (a v1 trust anchor) is accepted; an intermediate is not."""
        exts = _extensions(ca)
        bc = _ext(exts, ExtensionOID.BASIC_CONSTRAINTS)
        if (bc is None and not root) or (bc is not None and not bc.ca):
            self.note(f"{_describe(ca)} is not a CA (basicConstraints cA is not true)")
            return False
        ku = _ext(exts, ExtensionOID.KEY_USAGE)
        if ku is not None and not ku.key_cert_sign:
            self.note(f"{_describe(ca)} keyUsage lacks keyCertSign")
            return False
        oid = _unhandled_critical(exts)
        if oid is not None:
            self.note(f"{_describe(ca)} has an unsupported critical extension {oid}")
            return False
        return True

    def paths(self) -> Iterator[list[x509.Certificate]]:
        """Every certification path ``[leaf, intermediates…, root]`` (root from the bundle)."""
        yield from self._extend([self.leaf], frozenset())

    def _extend(
        self, path: list[x509.Certificate], used: frozenset[int]
    ) -> Iterator[list[x509.Certificate]]:
        self.steps += 1
        if self.steps > _MAX_SEARCH_STEPS:
            self.note("path building gave up: too many candidate paths")
            return
        cert = path[-1]
        for root in self.roots:
            if self.issued_by(cert, root) and self.can_sign(root, root=True):
                yield [*path, root]
        if len(path) > MAX_PATH_DEPTH:
            return
        for i, cand in enumerate(self.pool):
            if i in used or not self.issued_by(cert, cand):
                continue
            if self.can_sign(cand, root=False):
                yield from self._extend([*path, cand], used | {i})


def _describe(cert: x509.Certificate) -> str:
    subject = cert.subject.rfc4514_string()
    return f"certificate {subject!r}" if subject else "a certificate with an empty subject"


def _path_length_ok(path: Sequence[x509.Certificate]) -> str | None:
    """RFC 5280 §4.2.1.9: a CA's pathLenConstraint bounds the non-self-issued intermediates
    below it (the leaf is not counted)."""
    for j in range(1, len(path)):
        bc = _ext(_extensions(path[j]), ExtensionOID.BASIC_CONSTRAINTS)
        if bc is None or bc.path_length is None:
            continue
        below = sum(1 for c in path[1:j] if c.subject != c.issuer)
        if below > bc.path_length:
            return f"{_describe(path[j])} allows {bc.path_length} intermediate(s) below it"
    return None


def _uri_host(uri: str) -> str | None:
    try:
        host = urllib.parse.urlsplit(uri).hostname
    except ValueError:
        return None
    return host or None


def _host_matches(host: str, constraint: str) -> bool:
    """RFC 5280 §4.2.1.10 for URI hosts and DNS names: ``.example`` matches subdomains only,
    ``example`` matches that host and (for DNS) its subdomains; an empty constraint matches all."""
    host, constraint = host.lower().rstrip("."), constraint.lower()
    if not constraint:
        return True
    if constraint.startswith("."):
        return host.endswith(constraint)
    return host == constraint


def _dns_matches(name: str, constraint: str) -> bool:
    name, constraint = name.lower().rstrip("."), constraint.lower().lstrip(".")
    return not constraint or name == constraint or name.endswith("." + constraint)


_SUPPORTED_CONSTRAINTS = (x509.UniformResourceIdentifier, x509.DNSName)


def _names_of(cert: x509.Certificate) -> list[x509.GeneralName]:
    san = _ext(_extensions(cert), ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    return list(san) if san is not None else []


def _name_matches(name: x509.GeneralName, subtree: x509.GeneralName) -> bool:
    if isinstance(name, x509.UniformResourceIdentifier):
        host = _uri_host(name.value)
        return host is not None and _host_matches(host, subtree.value)
    assert isinstance(name, x509.DNSName)
    return _dns_matches(name.value, subtree.value)


def _name_constraints_ok(path: Sequence[x509.Certificate]) -> str | None:
    """URI (SPIFFE trust domain) and DNS name constraints of every CA in the path, applied to
    the names of every certificate below it. Other constraint types are not implemented and
    fail closed when a certificate below carries a name of that type (for directoryName: any
    non-empty subject)."""
    for j in range(1, len(path)):
        nc = _ext(_extensions(path[j]), ExtensionOID.NAME_CONSTRAINTS)
        if nc is None:
            continue
        permitted = list(nc.permitted_subtrees or ())
        excluded = list(nc.excluded_subtrees or ())
        for cert in path[:j]:
            names = _names_of(cert)
            for subtree in (*permitted, *excluded):
                kind = type(subtree)
                if isinstance(subtree, _SUPPORTED_CONSTRAINTS):
                    continue
                has_kind = any(isinstance(n, kind) for n in names) or (
                    kind is x509.DirectoryName and len(cert.subject) > 0
                )
                if has_kind:
                    return f"{_describe(path[j])} has an unsupported {kind.__name__} constraint"
            for name in names:
                if not isinstance(name, _SUPPORTED_CONSTRAINTS):
                    continue
                same = [s for s in permitted if type(s) is type(name)]
                if same and not any(_name_matches(name, s) for s in same):
                    return f"{_describe(path[j])} does not permit the name {name.value!r}"
                if any(_name_matches(name, s) for s in excluded if type(s) is type(name)):
                    return f"{_describe(path[j])} excludes the name {name.value!r}"
    return None


def _validity_error(path: Sequence[x509.Certificate], now: datetime) -> CredentialError | None:
    for cert in path:
        if now < cert.not_valid_before_utc:
            return _reject("not-yet-valid", f"{_describe(cert)} is not valid yet")
        if now > cert.not_valid_after_utc:
            expired = cert.not_valid_after_utc
            return TokenExpired(f"{_describe(cert)} expired at {expired:%Y-%m-%dT%H:%M:%SZ}")
    return None


def verify_x509_svid(
    chain: Sequence[x509.Certificate], bundles: Mapping[str, TrustBundle], now: datetime
) -> VerifiedIdentity:
    """Verify an X.509-SVID chain (leaf first, then intermediates in any order; the root may be
    included) against the bundle of the trust domain its SPIFFE ID names, at time `now`
    (timezone-aware). Returns the workload identity; raises ``CredentialError`` otherwise."""
    if now.tzinfo is None:
        raise ValueError("now must be a timezone-aware datetime")
    if isinstance(chain, (str, bytes)) or not chain:
        raise _reject("malformed", "the certificate chain is empty")
    if len(chain) > MAX_CHAIN_CERTS:
        raise _reject("malformed", f"the chain has more than {MAX_CHAIN_CERTS} certificates")
    if not all(isinstance(c, x509.Certificate) for c in chain):
        raise _reject("malformed", "the chain holds something that is not a certificate")
    leaf = chain[0]
    exts = _extensions(leaf)
    sid = _leaf_spiffe_id(leaf, exts)
    _check_leaf(exts)

    bundle = bundles.get(sid.trust_domain)
    if bundle is None or bundle.trust_domain != sid.trust_domain:
        raise _reject("unknown-trust-domain", f"no trust bundle for {sid.trust_domain!r}")

    builder = _Path(leaf, chain[1:], bundle.roots)
    time_error: CredentialError | None = None
    for path in builder.paths():
        problem = _path_length_ok(path) or _name_constraints_ok(path)
        if problem is not None:
            builder.note(problem)
            continue
        error = _validity_error(path, now)
        if error is not None:
            time_error = time_error or error
            continue
        return VerifiedIdentity(
            kind="spiffe-x509",
            labels=_identity_labels(sid),
            subject=str(sid),
            issuer=sid.trust_domain,
            expires_at=min(c.not_valid_after_utc for c in path).timestamp(),
            token_id=credential_hash(leaf.public_bytes(Encoding.DER)),
        )
    if time_error is not None:
        raise time_error
    why = builder.why or "no issuer of the chain is a root of the bundle"
    raise _reject(
        "untrusted-chain", f"the chain does not verify to the {sid.trust_domain} bundle: {why}"
    )


# --- JWT-SVID --------------------------------------------------------------------------------

# A JWT-SVID need not carry `iss` (trust comes from the trust domain's key set). Older
# `_jwt.check_claims` compared `iss` with IssuerConfig.issuer for every kind; when `iss` is absent
# the claim check sees this placeholder on both sides (the signature is over the original bytes).
# Once check_claims skips `iss` for kind "spiffe-jwt" everywhere, this can go.
_NO_ISSUER = "urn:cport:spiffe:no-iss"


def verify_jwt_svid(
    token: str,
    bundles_jwks: Mapping[str, Sequence[VerificationKey]],
    audiences: Sequence[str],
    now: float,
    *,
    algorithms: Sequence[str] = DEFAULT_JWT_SVID_ALGORITHMS,
) -> VerifiedIdentity:
    """Verify a JWT-SVID (JWT-SVID spec) with the key set of the trust domain its ``sub``
    names. ``aud`` must name one of `audiences`, ``exp`` is required, ``typ`` is ``JWT``,
    ``JOSE`` or absent, ``alg`` one of `algorithms` (a subset of :data:`JWT_SVID_ALGORITHMS`)."""
    algs = tuple(algorithms)
    if not algs or not set(algs) <= JWT_SVID_ALGORITHMS:
        raise ValueError(
            f"JWT-SVID algorithms must be a non-empty subset of "
            f"{sorted(JWT_SVID_ALGORITHMS)}, not {algs}"
        )
    auds = (audiences,) if isinstance(audiences, str) else tuple(audiences)
    if not auds:
        raise ValueError("a JWT-SVID validator needs at least one acceptable audience")

    jws = parse_jws(token)
    if "typ" in jws.header and jws.header["typ"] not in ("JWT", "JOSE"):
        raise _reject("malformed", "a JWT-SVID typ header must be JWT or JOSE")
    sub = jws.claims.get("sub")
    if not isinstance(sub, str):
        raise _reject("svid-no-spiffe-id", "the token's sub is not a SPIFFE ID")
    sid = parse_spiffe_id(sub)
    keys = bundles_jwks.get(sid.trust_domain)
    if not keys:
        raise _reject("unknown-trust-domain", f"no JWT keys for {sid.trust_domain!r}")

    iss = jws.claims.get("iss", None)
    if iss is not None and not isinstance(iss, str):
        raise _reject("malformed", "claim 'iss' is not a string")
    checked = jws
    if iss is None:
        claims = {**jws.claims, "iss": _NO_ISSUER}
        checked = ParsedJWS(jws.header, claims, jws.signing_input, jws.signature)
    config = IssuerConfig(
        name=sid.trust_domain,
        issuer=iss if iss is not None else _NO_ISSUER,
        audiences=auds,
        kind="spiffe-jwt",
        algorithms=algs,
    )
    verify_jws(checked, config, keys, now)

    exp = jws.claims["exp"]  # verify_jws required a number
    jti = jws.claims.get("jti")
    return VerifiedIdentity(
        kind="spiffe-jwt",
        labels=_identity_labels(sid),
        subject=str(sid),
        issuer=sid.trust_domain,
        expires_at=float(exp),
        token_id=jti if isinstance(jti, str) and jti else credential_hash(token),
        claims=dict(jws.claims),
    )
