"""Issuer configuration: which token issuers are trusted, for what, and how their claims
become labels. Plain data; `cport.config` reads it from the agent's config file."""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_ALGORITHMS = ("RS256", "ES256", "EdDSA")
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
    | {"Ed25519", "Ed448"}  # RFC 9864's fully specified EdDSA algorithms
)
HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
ISSUER_KINDS = ("oidc", "kubernetes", "spiffe-jwt")


@dataclass(frozen=True, slots=True)
class ClaimLabel:
    """Map the claim at `path` (dot-separated JSON path) to labels ``oidc:<label>=<value>``;
    a list claim gives one label per value, nested objects are reached by the path."""

    path: str
    label: str


DEFAULT_CLAIM_LABELS = (ClaimLabel("groups", "groups"), ClaimLabel("email", "email"))


@dataclass(frozen=True, slots=True)
class IssuerConfig:
    """One trusted issuer.

    `name` is what policies say (``users: {issuer: corp-okta}``) and what the ``oidc:iss``
    label carries; `issuer` is the exact ``iss`` value in its tokens. `kind` picks the label
    mapping: ``kubernetes`` maps service-account claims to the labels Cilium gives pods,
    ``spiffe-jwt`` maps ``sub`` to a SPIFFE ID.
    """

    name: str
    issuer: str
    audiences: tuple[str, ...]
    kind: str = "oidc"
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    clock_skew: float = 60.0
    claim_labels: tuple[ClaimLabel, ...] = DEFAULT_CLAIM_LABELS
    required_claims: tuple[tuple[str, tuple[str, ...]], ...] = ()  # claim path → allowed values
    jwks_uri: str | None = None  # None: found by discovery
    hmac_secret: bytes | None = field(default=None, repr=False)
    max_token_bytes: int = 16 * 1024
    refresh_interval: float = 300.0  # periodic JWKS refresh
    min_refetch_interval: float = 30.0  # at most one refetch per interval for an unknown kid
    max_stale: float = 3600.0  # how long last-known-good keys serve through an IdP outage
    http_timeout: float = 5.0
    # spiffe-jwt: the trust domains this issuer may speak for (default: the one its
    # ``spiffe://`` issuer names). A JWT-SVID for any other trust domain is refused.
    trust_domains: tuple[str, ...] = ()
    #: The ``oidc:`` label names a holder gets (``iss``, ``sub`` and each mapping's), sorted,
    #: each with the index of its mapping in `claim_labels` (-1: ``iss``, -2: ``sub``); None
    #: when two share a name. Derived: lets a label set be built in canonical order.
    label_layout: tuple[tuple[str, int], ...] | None = field(init=False, repr=False, compare=False)
    #: `algorithms` without ``none``, and without HMAC unless the issuer has a secret.
    usable_algorithms: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = [m.label for m in self.claim_labels] + ["iss", "sub"]
        order = sorted(zip(names, [*range(len(self.claim_labels)), -1, -2], strict=True))
        layout = tuple(order) if len(set(names)) == len(names) else None
        object.__setattr__(self, "label_layout", layout)
        usable = {
            alg
            for alg in self.algorithms
            if alg != "none" and (alg not in HMAC_ALGORITHMS or self.hmac_secret is not None)
        }
        object.__setattr__(self, "usable_algorithms", frozenset(usable))

    def spiffe_trust_domains(self) -> tuple[str, ...]:
        if self.trust_domains:
            return self.trust_domains
        if self.issuer.startswith("spiffe://"):
            return (self.issuer[len("spiffe://") :].split("/", 1)[0],)
        return ()
