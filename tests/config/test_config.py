"""The agent configuration file: a full example, the defaults, and located errors (file, line,
field, code), several reported together."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from cport.config import Config, load_config, parse_config
from cport.errors import ConfigError, InputError, InputErrors
from cport.identity import ClaimLabel, IssuerConfig

SECRET = b"0123456789abcdef0123456789abcdef-long-enough"

FULL = """\
cluster: prod
identity:
  issuers:
    - name: corp-okta
      issuer: https://corp.okta.com/oauth2/default
      audiences: [cport, api]
      algorithms: [RS256, ES384, PS256, HS256]
      clockSkew: 250ms
      claims: {groups: groups, email: email, realm_access.roles: roles}
      requiredClaims: {tenant: [acme, beta], mfa: true, org: null}
      kind: oidc
      jwksUri: https://corp.okta.com/oauth2/default/v1/keys
      hmacSecretFile: secret
      refreshInterval: 5m
      minRefetchInterval: 60s
      maxStale: 1h
      maxTokenBytes: 8192
      httpTimeout: 2.5
    - name: cluster
      issuer: https://kubernetes.default.svc.cluster.local
      audiences: [cport]
      kind: kubernetes
      clockSkew: 30
    - name: spire
      issuer: spiffe://example.org
      audiences: [cport]
      kind: spiffe-jwt
    - name: dev
      issuer: http://127.0.0.1:8080/realms/dev
      audiences: [cport]
      jwksUri: http://localhost:8080/realms/dev/certs
"""


def parse(text: str, base: Path, file: str = "cport.yaml") -> Config:
    return parse_config(textwrap.dedent(text), file, base)


def errors_of(text: str, base: Path, file: str = "cport.yaml") -> list[InputError]:
    with pytest.raises(InputErrors) as info:
        parse(text, base, file)
    return info.value.errors


def one_error(text: str, base: Path) -> InputError:
    errs = errors_of(text, base)
    assert len(errs) == 1, [str(e) for e in errs]
    return errs[0]


def issuer_yaml(*lines: str, name: str = "corp", issuer: str = "https://idp.example.com") -> str:
    body = "\n".join(f"      {line}" for line in lines)
    return f"identity:\n  issuers:\n    - name: {name}\n      issuer: {issuer}\n" + (
        body + "\n" if body else ""
    )


@pytest.fixture
def base(tmp_path: Path) -> Path:
    (tmp_path / "secret").write_bytes(SECRET + b"\n")
    (tmp_path / "short").write_bytes(b"x" * 31)
    return tmp_path


# -- a full example --------------------------------------------------------------------------
def test_full_example(base: Path) -> None:
    cfg = parse(FULL, base, str(base / "cport.yaml"))
    assert cfg.cluster == "prod"
    assert cfg.path == str(base / "cport.yaml")
    okta, k8s, spire, dev = cfg.identity.issuers
    assert okta == IssuerConfig(
        name="corp-okta",
        issuer="https://corp.okta.com/oauth2/default",
        audiences=("cport", "api"),
        kind="oidc",
        algorithms=("RS256", "ES384", "PS256", "HS256"),
        clock_skew=0.25,
        claim_labels=(
            ClaimLabel("groups", "groups"),
            ClaimLabel("email", "email"),
            ClaimLabel("realm_access.roles", "roles"),
        ),
        required_claims=(("tenant", ("acme", "beta")), ("mfa", ("true",)), ("org", ())),
        jwks_uri="https://corp.okta.com/oauth2/default/v1/keys",
        hmac_secret=SECRET,  # stripped of the trailing newline
        max_token_bytes=8192,
        refresh_interval=300.0,
        min_refetch_interval=60.0,
        max_stale=3600.0,
        http_timeout=2.5,
    )
    assert okta.hmac_secret == SECRET
    assert "hmac_secret" not in repr(okta) and SECRET.decode() not in repr(okta)
    assert (k8s.kind, k8s.clock_skew) == ("kubernetes", 30.0)
    assert (spire.kind, spire.issuer) == ("spiffe-jwt", "spiffe://example.org")
    assert dev.jwks_uri == "http://localhost:8080/realms/dev/certs"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("60s", 60.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("250ms", 0.25),
        ("1.5h", 5400.0),
        ("90", 90.0),
        ("0", 0.0),
        ("45.5", 45.5),
        ('"30"', 30.0),
    ],
)
def test_durations(text: str, seconds: float, base: Path) -> None:
    cfg = parse(issuer_yaml("audiences: [cport]", f"clockSkew: {text}"), base)
    assert cfg.identity.issuers[0].clock_skew == seconds


def test_defaults(base: Path) -> None:
    cfg = parse(issuer_yaml("audiences: [cport]"), base)
    assert cfg.cluster == "default"
    (iss,) = cfg.identity.issuers
    assert iss.algorithms == ("RS256", "ES256", "EdDSA")
    assert iss.clock_skew == 60.0
    assert iss.claim_labels == (ClaimLabel("groups", "groups"), ClaimLabel("email", "email"))
    assert iss.kind == "oidc"
    assert iss.required_claims == ()
    assert iss.jwks_uri is None
    assert iss.hmac_secret is None
    assert iss.max_token_bytes == 16 * 1024
    assert (iss.refresh_interval, iss.min_refetch_interval, iss.max_stale) == (300, 30, 3600)


@pytest.mark.parametrize("text", ["", "# nothing\n", "cluster: x\n", "identity: {}\n"])
def test_empty_configurations(text: str, base: Path) -> None:
    assert parse(text, base).identity.issuers == []


def test_load_config(base: Path) -> None:
    path = base / "cport.yaml"
    path.write_text(FULL)
    cfg = load_config(path)
    assert cfg.path == str(path)
    assert cfg.identity.issuers[0].hmac_secret == SECRET  # relative to the file's directory


def test_load_config_unreadable(tmp_path: Path) -> None:
    with pytest.raises(InputErrors) as info:
        load_config(tmp_path / "missing.yaml")
    (err,) = info.value.errors
    assert err.code == "unreadable"
    assert err.location.file == str(tmp_path / "missing.yaml")


def test_absolute_secret_path(base: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    elsewhere = tmp_path_factory.mktemp("secrets") / "s"
    elsewhere.write_bytes(SECRET)
    text = issuer_yaml("audiences: [cport]", "algorithms: [HS512]", f"hmacSecretFile: {elsewhere}")
    assert parse(text, base).identity.issuers[0].hmac_secret == SECRET


# -- located errors --------------------------------------------------------------------------
def _located(err: InputError, line: int, path: str, code: str = "invalid-config") -> None:
    assert isinstance(err, ConfigError)
    assert err.code == code
    assert err.location.file == "cport.yaml"
    assert err.location.line == line, str(err)
    assert err.location.path == path
    assert err.location.column > 0
    data = err.to_json()
    assert data["file"] == "cport.yaml" and data["line"] == line and data["field"] == path


def test_empty_audiences(base: Path) -> None:
    err = one_error(issuer_yaml("audiences: []"), base)
    _located(err, 5, "identity.issuers[0].audiences")
    assert "must not be empty" in err.message


def test_missing_audiences(base: Path) -> None:
    err = one_error(issuer_yaml(), base)
    _located(err, 3, "identity.issuers[0]")
    assert "'audiences'" in err.message


@pytest.mark.parametrize("alg", ["none", "None", "rs256", "HS1", "RSA-OAEP"])
def test_algorithm_not_allowed(alg: str, base: Path) -> None:
    err = one_error(issuer_yaml("audiences: [cport]", f"algorithms: [RS256, {alg}]"), base)
    _located(err, 6, "identity.issuers[0].algorithms[1]")
    assert "not allowed" in err.message


def test_empty_algorithms(base: Path) -> None:
    err = one_error(issuer_yaml("audiences: [cport]", "algorithms: []"), base)
    _located(err, 6, "identity.issuers[0].algorithms")


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_hmac_without_secret_file(alg: str, base: Path) -> None:
    err = one_error(issuer_yaml("audiences: [cport]", f"algorithms: [RS256, {alg}]"), base)
    _located(err, 6, "identity.issuers[0].algorithms[1]")
    assert "hmacSecretFile" in err.message


def test_short_secret(base: Path) -> None:
    text = issuer_yaml("audiences: [cport]", "algorithms: [HS256]", "hmacSecretFile: short")
    err = one_error(text, base)
    _located(err, 7, "identity.issuers[0].hmacSecretFile")
    assert "32 bytes" in err.message


def test_secret_whitespace_does_not_count(base: Path) -> None:
    (base / "padded").write_bytes(b"  " + b"x" * 30 + b"\n\n\n")
    text = issuer_yaml("audiences: [cport]", "algorithms: [HS256]", "hmacSecretFile: padded")
    _located(one_error(text, base), 7, "identity.issuers[0].hmacSecretFile")


@pytest.mark.parametrize("name", ["missing", "."])
def test_unreadable_secret_file(name: str, base: Path) -> None:
    text = issuer_yaml("audiences: [cport]", "algorithms: [HS256]", f"hmacSecretFile: '{name}'")
    err = one_error(text, base)
    _located(err, 7, "identity.issuers[0].hmacSecretFile")
    assert "cannot read the shared secret" in err.message


@pytest.mark.parametrize(
    "url",
    [
        "http://idp.example.com",
        "http://localhost.example.com",
        "http://127.0.0.1.nip.io",
        "ftp://idp.example.com",
        "idp.example.com",
    ],
)
def test_issuer_must_be_https(url: str, base: Path) -> None:
    err = one_error(issuer_yaml("audiences: [cport]", issuer=url), base)
    _located(err, 4, "identity.issuers[0].issuer")
    assert "https://" in err.message


@pytest.mark.parametrize("url", ["http://localhost:8080", "http://127.0.0.1", "http://[::1]:80"])
def test_loopback_http_issuer(url: str, base: Path) -> None:
    cfg = parse(issuer_yaml("audiences: [cport]", issuer=url), base)
    assert cfg.identity.issuers[0].issuer == url


def test_jwks_uri_must_be_https(base: Path) -> None:
    text = issuer_yaml("audiences: [cport]", "jwksUri: http://idp.example.com/keys")
    _located(one_error(text, base), 6, "identity.issuers[0].jwksUri")


@pytest.mark.parametrize("value", ["1d", "-5", "5 m", "fast", "true", "[1]", "1e3s", "-1"])
def test_bad_duration(value: str, base: Path) -> None:
    err = one_error(issuer_yaml("audiences: [cport]", f"maxStale: {value}"), base)
    _located(err, 6, "identity.issuers[0].maxStale")


@pytest.mark.parametrize("value", ["0", "-1", "1.5", "'16k'", "true"])
def test_bad_max_token_bytes(value: str, base: Path) -> None:
    err = one_error(issuer_yaml("audiences: [cport]", f"maxTokenBytes: {value}"), base)
    _located(err, 6, "identity.issuers[0].maxTokenBytes")


def test_bad_kind(base: Path) -> None:
    err = one_error(issuer_yaml("audiences: [cport]", "kind: kubernets"), base)
    _located(err, 6, "identity.issuers[0].kind")
    assert err.hint == "did you mean 'kubernetes'?"


def test_unknown_field_did_you_mean(base: Path) -> None:
    err = one_error(issuer_yaml("audiences: [cport]", "clockskew: 5s"), base)
    _located(err, 6, "identity.issuers[0].clockskew", code="unknown-field")
    assert err.hint == "did you mean 'clockSkew'?"
    top = one_error("identiy:\n  issuers: []\n", base)
    _located(top, 1, "identiy", code="unknown-field")
    assert top.hint == "did you mean 'identity'?"


def test_unknown_field_without_a_close_match(base: Path) -> None:
    err = one_error(issuer_yaml("audiences: [cport]", "zzz: 1"), base)
    _located(err, 6, "identity.issuers[0].zzz", code="unknown-field")
    assert err.hint.startswith("expected one of: ")


def test_duplicate_issuer_names(base: Path) -> None:
    text = (
        issuer_yaml("audiences: [cport]", name="corp")
        + "    - name: corp\n      issuer: https://other.example.com\n      audiences: [x]\n"
    )
    err = one_error(text, base)
    _located(err, 6, "identity.issuers[1]")
    assert "'corp' is used twice" in err.message
    assert "cport.yaml:3" in err.message  # where the first one is


def test_same_issuer_url_twice(base: Path) -> None:
    text = (
        issuer_yaml("audiences: [cport]", name="one")
        + "    - name: two\n      issuer: https://idp.example.com\n      audiences: [x]\n"
    )
    err = one_error(text, base)
    _located(err, 6, "identity.issuers[1]")
    assert "configured twice" in err.message


def test_several_errors_reported_together(base: Path) -> None:
    text = """\
        identity:
          issuers:
            - name: a
              issuer: https://a.example
              audiences: []
            - name: b
              issuer: http://b.example
              audiences: [x]
            - name: c
              issuer: https://c.example
              audiences: [x]
              algorithms: [none]
            - name: d
              issuer: https://d.example
              audiences: [x]
              clockSkew: soon
            - name: e
              issuer: https://e.example
              audiences: [x]
              audience: [y]
            - name: ok
              issuer: https://ok.example
              audiences: [x]
            - name: ok
              issuer: https://ok.example
              audiences: [x]
        """
    errs = errors_of(text, base)
    got = [(e.location.line, e.location.path, e.code) for e in errs]
    assert got == [
        (5, "identity.issuers[0].audiences", "invalid-config"),
        (7, "identity.issuers[1].issuer", "invalid-config"),
        (12, "identity.issuers[2].algorithms[0]", "invalid-config"),
        (16, "identity.issuers[3].clockSkew", "invalid-config"),
        (20, "identity.issuers[4].audience", "unknown-field"),
        (24, "identity.issuers[6]", "invalid-config"),  # name used twice
        (24, "identity.issuers[6]", "invalid-config"),  # and the same issuer URL
    ]
    assert all(isinstance(e, ConfigError) for e in errs)


def test_more_than_one_document(base: Path) -> None:
    err = one_error("cluster: a\n---\ncluster: b\n", base)
    assert isinstance(err, ConfigError)
    assert err.location.line == 3


@pytest.mark.parametrize(
    "text",
    ["- a\n- b\n", "identity: [x]\n", "identity:\n  issuers: {a: 1}\n", "cluster: [x]\n"],
)
def test_wrong_shapes(text: str, base: Path) -> None:
    err = one_error(text, base)
    assert err.code == "invalid-config"


def test_yaml_syntax_error_is_reported_as_input_errors(base: Path) -> None:
    errs = errors_of("identity:\n  issuers: [\n", base)
    assert errs[0].location.line >= 2


def test_spiffe_jwt_issuer_names_its_trust_domains(base: Path) -> None:
    err = one_error(issuer_yaml("audiences: [cport]", "kind: spiffe-jwt"), base)
    _located(err, 3, "identity.issuers[0]")
    assert "'trustDomains'" in err.message
    cfg = parse(
        issuer_yaml("audiences: [cport]", "kind: spiffe-jwt", "trustDomains: [example.org]"), base
    )
    assert cfg.identity.issuers[0].spiffe_trust_domains() == ("example.org",)
