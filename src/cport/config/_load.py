"""The agent configuration file (YAML): the `identity` section for now — trusted token issuers,
AWS STS, SPIFFE trust bundles. Errors name file, line, column and field, like policy errors.

::

    cluster: default
    identity:
      issuers:
        - name: corp-okta                      # what policies call it (users: {issuer: …})
          issuer: https://corp.okta.com/oauth2/default   # the exact `iss` of its tokens
          audiences: [cport]                   # required, non-empty
          algorithms: [RS256, ES256, EdDSA]    # default; never `none`; HS* only with a secret
          clockSkew: 60s
          claims: {groups: groups, email: email, realm_access.roles: roles}
          requiredClaims: {tenant: [acme]}
          kind: oidc                           # oidc | kubernetes | spiffe-jwt
          jwksUri: https://…                   # optional: skip discovery
          hmacSecretFile: /etc/cport/secret    # optional: allows HS256/384/512 for this issuer
          refreshInterval: 5m
          minRefetchInterval: 30s
          maxStale: 1h
          maxTokenBytes: 16384
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from cport.config._agent import _ROOT_KEYS as _AGENT_KEYS
from cport.config._agent import AgentSettings, parse_agent
from cport.errors import ConfigError, IdentityError, InputError, InputErrors, Location
from cport.identity._aws import AwsConfig
from cport.identity._issuer import (
    ASYMMETRIC_ALGORITHMS,
    DEFAULT_ALGORITHMS,
    DEFAULT_CLAIM_LABELS,
    HMAC_ALGORITHMS,
    ISSUER_KINDS,
    ClaimLabel,
    IssuerConfig,
)
from cport.identity._keys import check_url
from cport.identity._spiffe import TrustBundle
from cport.model._fields import Cursor
from cport.model._yaml import parse_documents

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_ISSUER_KEYS = frozenset(
    {
        "name",
        "issuer",
        "audiences",
        "algorithms",
        "clockSkew",
        "claims",
        "requiredClaims",
        "kind",
        "jwksUri",
        "hmacSecretFile",
        "refreshInterval",
        "minRefetchInterval",
        "maxStale",
        "maxTokenBytes",
        "httpTimeout",
        "trustDomains",
    }
)


@dataclass
class IdentitySettings:
    """The `identity` section, validated."""

    issuers: list[IssuerConfig] = field(default_factory=list)
    aws: AwsConfig | None = None
    spiffe_bundles: dict[str, TrustBundle] = field(default_factory=dict)


@dataclass
class Config:
    """The whole configuration file, validated."""

    path: str = "<defaults>"
    cluster: str = "default"
    identity: IdentitySettings = field(default_factory=IdentitySettings)
    agent: AgentSettings = field(default_factory=AgentSettings)


def _duration(cur: Cursor) -> float:
    value = cur.value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    m = _DURATION.match(str(value)) if isinstance(value, str) else None
    if m is None:
        cur.fail(f"invalid duration {value!r}", hint="seconds, or a number with ms, s, m or h")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _positive_int(cur: Cursor) -> int:
    if isinstance(cur.value, bool) or not isinstance(cur.value, int) or cur.value <= 0:
        cur.fail(f"expected a positive whole number, got {cur.value!r}")
    return cur.value


def _issuer(cur: Cursor, base: Path) -> IssuerConfig:
    cur.mapping(_ISSUER_KEYS, allow_null=False)
    name = cur.require("name").string()
    iss_cur = cur.require("issuer", "the exact iss value of this issuer's tokens")
    iss = iss_cur.string()
    auds_cur = cur.require("audiences", "the aud values cport accepts, e.g. [cport]")
    auds = tuple(auds_cur.string_list())
    if not auds:
        auds_cur.fail(
            "audiences must not be empty",
            hint="a token for any audience would be accepted otherwise",
        )
    kind = cur.get("kind").choice(ISSUER_KINDS) if cur.get("kind") else "oidc"  # type: ignore[union-attr]
    if kind != "spiffe-jwt":
        try:
            check_url(iss)
        except Exception:
            iss_cur.fail(f"issuer {iss!r} must be an https:// URL (http only for loopback)")
    secret: bytes | None = None
    if (c := cur.get("hmacSecretFile")) is not None:
        secret_path = base / c.string()
        try:
            secret = secret_path.read_bytes().strip()
        except OSError as exc:
            c.fail(f"cannot read the shared secret: {exc.strerror}")
        if len(secret) < 32:
            c.fail("the shared secret is shorter than 32 bytes")
    algs: tuple[str, ...] = DEFAULT_ALGORITHMS
    if (c := cur.get("algorithms")) is not None:
        algs = tuple(c.string_list())
        for i, alg in enumerate(algs):
            item = Cursor(c.doc, (*c.path, i), alg, c.error_cls)
            if alg in HMAC_ALGORITHMS and secret is None:
                item.fail(
                    f"{alg} needs hmacSecretFile for this issuer",
                    hint="HMAC keys are never taken from a JWKS",
                )
            if alg not in ASYMMETRIC_ALGORITHMS | HMAC_ALGORITHMS:
                item.fail(
                    f"algorithm {alg!r} is not allowed",
                    hint="one of " + ", ".join(sorted(ASYMMETRIC_ALGORITHMS | HMAC_ALGORITHMS)),
                )
        if not algs:
            c.fail("algorithms must not be empty")
    claims: tuple[ClaimLabel, ...] = DEFAULT_CLAIM_LABELS
    if (c := cur.get("claims")) is not None:
        claims = tuple(ClaimLabel(path, label) for path, label in c.string_map().items())
    required: tuple[tuple[str, tuple[str, ...]], ...] = ()
    if (c := cur.get("requiredClaims")) is not None:
        c.mapping(set(c.value or {}))
        req = []
        for path, vals in c.entries():
            values = (
                tuple(v.scalar_string() for v in vals.sequence().items())
                if isinstance(vals.value, list)
                else (() if vals.value is None else (vals.scalar_string(),))
            )
            req.append((path, values))
        required = tuple(req)
    kwargs: dict[str, float] = {}
    for key, attr in (
        ("clockSkew", "clock_skew"),
        ("refreshInterval", "refresh_interval"),
        ("minRefetchInterval", "min_refetch_interval"),
        ("maxStale", "max_stale"),
        ("httpTimeout", "http_timeout"),
    ):
        if (c := cur.get(key)) is not None:
            kwargs[attr] = _duration(c)
    jwks = cur.get("jwksUri")
    if jwks is not None:
        try:
            check_url(jwks.string())
        except Exception:
            jwks.fail("jwksUri must be an https:// URL (http only for loopback)")
    max_bytes = _positive_int(c) if (c := cur.get("maxTokenBytes")) is not None else 16 * 1024
    tds: tuple[str, ...] = ()
    if (c := cur.get("trustDomains")) is not None:
        tds = tuple(c.string_list())
    if kind == "spiffe-jwt" and not tds and not iss.startswith("spiffe://"):
        cur.require(
            "trustDomains", "the SPIFFE trust domains this issuer speaks for, e.g. [example.org]"
        )
    return IssuerConfig(
        name=name,
        issuer=iss,
        audiences=auds,
        kind=kind,
        algorithms=algs,
        claim_labels=claims,
        required_claims=required,
        jwks_uri=jwks.string() if jwks else None,
        hmac_secret=secret,
        max_token_bytes=max_bytes,
        trust_domains=tds,
        **kwargs,
    )


_AWS_KEYS = frozenset(
    {"stsEndpoints", "audience", "vaultServerId", "maxAge", "clockSkew", "timeout"}
)


def _aws(cur: Cursor) -> AwsConfig:
    cur.mapping(_AWS_KEYS)
    kwargs: dict[str, object] = {}
    if (c := cur.get("stsEndpoints")) is not None:
        kwargs["sts_endpoints"] = tuple(c.string_list())
    if (c := cur.get("audience")) is not None:
        kwargs["audience"] = c.string()
    if (c := cur.get("vaultServerId")) is not None:
        kwargs["vault_server_id"] = c.string()
    for key, attr in (("maxAge", "max_age"), ("clockSkew", "clock_skew"), ("timeout", "timeout")):
        if (c := cur.get(key)) is not None:
            kwargs[attr] = _duration(c)
    try:
        return AwsConfig(**kwargs)  # type: ignore[arg-type]
    except ValueError as exc:
        cur.fail(str(exc))


def _spiffe(cur: Cursor, base: Path) -> dict[str, TrustBundle]:
    cur.mapping({"trustBundles"})
    out: dict[str, TrustBundle] = {}
    bundles = cur.get("trustBundles")
    for td, path_cur in bundles.mapping(set(bundles.value or {})).entries() if bundles else []:
        path = base / path_cur.string()
        try:
            out[td] = TrustBundle.from_pem(td, path.read_bytes())
        except OSError as exc:
            path_cur.fail(f"cannot read the trust bundle: {exc.strerror}")
        except IdentityError as exc:
            path_cur.fail(exc.message)
    return out


def parse_config(text: str, file: str, base: Path | None = None) -> Config:
    """Validate configuration text; raises :class:`InputErrors` listing every problem."""
    try:
        docs = parse_documents(text, file)
    except InputError as exc:
        raise InputErrors([exc]) from exc
    cfg = Config(path=file)
    if not docs:
        return cfg
    if len(docs) > 1:
        raise InputErrors(
            [ConfigError("a configuration file holds one document", docs[1].location(()))]
        )
    errors: list[InputError] = []
    root = Cursor(docs[0], (), docs[0].value, ConfigError)
    base = base or Path(file).parent
    try:
        root.mapping({"cluster", "identity", *_AGENT_KEYS}, allow_null=False)
        if (c := root.get("cluster")) is not None:
            cfg.cluster = c.string()
        try:
            cfg.agent = parse_agent(root, base, _duration)
        except InputError as exc:
            errors.append(exc)
        ident = root.get("identity")
        if ident is not None:
            ident.mapping({"issuers", "aws", "spiffe"})
            if (sub := ident.get("aws")) is not None:
                try:
                    cfg.identity.aws = _aws(sub)
                except InputError as exc:
                    errors.append(exc)
            if (sub := ident.get("spiffe")) is not None:
                try:
                    cfg.identity.spiffe_bundles = _spiffe(sub, base)
                except InputError as exc:
                    errors.append(exc)
            names: dict[str, Location] = {}
            for item in (ident.get("issuers") or Cursor(root.doc, (), [])).sequence().items():
                try:
                    issuer = _issuer(item, base)
                except InputError as exc:
                    errors.append(exc)
                    continue
                if issuer.name in names:
                    errors.append(
                        ConfigError(
                            f"issuer name {issuer.name!r} is used twice "
                            f"(first at {names[issuer.name]})",
                            item.location,
                        )
                    )
                names[issuer.name] = item.location
                if any(i.issuer == issuer.issuer for i in cfg.identity.issuers):
                    errors.append(
                        ConfigError(f"issuer {issuer.issuer!r} is configured twice", item.location)
                    )
                cfg.identity.issuers.append(issuer)
    except InputError as exc:
        errors.append(exc)
    if errors:
        raise InputErrors(errors)
    return cfg


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a configuration file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputErrors(
            [ConfigError(f"cannot read: {exc}", Location(str(p)), code="unreadable")]
        ) from exc
    return parse_config(text, str(p), p.parent)
