"""`cport token verify|inspect` and `cport explain --from token:FILE`, in-process.

The configuration names a `jwksUri`; no server runs: `cport.cli._token.JWKSKeySource` is
replaced by the real JWKS source over a fake `fetch_json` serving a key set generated here.
Tokens carry real times (the CLI verifies at the current time).
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives.asymmetric import rsa

from cport.cli import _token, main
from cport.identity import JWKSKeySource

from ._estate import INVENTORY, POLICIES, as_json

ISS = "https://corp.okta.example/oauth2/default"
JWKS_URL = ISS + "/v1/keys"

CONFIG = f"""\
identity:
  issuers:
    - name: corp-okta
      issuer: {ISS}
      audiences: [cport]
      jwksUri: {JWKS_URL}
"""


def _uint(n: int) -> str:
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def fetched(monkeypatch: pytest.MonkeyPatch, key: rsa.RSAPrivateKey) -> list[str]:
    """Serve the key set at JWKS_URL to every JWKSKeySource the CLI makes; records fetches."""
    pub = key.public_key().public_numbers()
    doc = {"keys": [{"kty": "RSA", "kid": "k1", "use": "sig", "n": _uint(pub.n), "e": "AQAB"}]}
    calls: list[str] = []

    def fetch_json(url: str, timeout: float) -> Any:
        calls.append(url)
        if url != JWKS_URL:
            raise LookupError(f"404 {url}")
        return doc

    monkeypatch.setattr(_token, "JWKSKeySource", lambda: JWKSKeySource(fetch_json))
    return calls


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "cport.yaml"
    path.write_text(CONFIG)
    return path


def make_token(key: rsa.RSAPrivateKey, **over: Any) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": ISS,
        "aud": "cport",
        "sub": "alice@corp.example",
        "iat": now - 5,
        "exp": now + 600,
        "groups": ["dba"],
        "email": "alice@corp.example",
    }
    claims.update(over)
    return pyjwt.encode(claims, key, algorithm="RS256", headers={"kid": "k1"})


def run(*args: str | Path, stdin: str | None = None) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], input=stdin, catch_exceptions=False)


def sha(tok: str) -> str:
    return hashlib.sha256(tok.encode()).hexdigest()


# -- token verify ----------------------------------------------------------------------------
def test_verify_json(key: Any, config: Path, fetched: list[str]) -> None:
    tok = make_token(key, jti="tok-1")
    result = run("token", "verify", tok, "-c", config, "-o", "json")
    assert result.exit_code == 0, result.output
    data = as_json(result)
    assert data["verified"] is True
    assert data["identity"] >= 256
    assert data["kind"] == "oidc"
    assert data["subject"] == "alice@corp.example"
    assert data["issuer"] == "corp-okta"
    assert data["tokenId"] == "tok-1"
    assert time.time() < data["expiresAt"] <= time.time() + 600
    assert sorted(data["labels"]) == sorted(
        [
            "oidc:iss=corp-okta",
            "oidc:sub=alice@corp.example",
            "oidc:groups=dba",
            "oidc:email=alice@corp.example",
        ]
    )
    assert fetched == [JWKS_URL]
    assert tok not in result.output


def test_verify_text(key: Any, config: Path, fetched: list[str]) -> None:
    result = run("token", "verify", make_token(key, act={"sub": "agent-7"}), "-c", config)
    assert result.exit_code == 0, result.output
    assert "verified" in result.stdout
    assert "alice@corp.example" in result.stdout
    assert "acting agent agent-7" in result.stdout
    assert "oidc:groups=dba" in result.stdout


@pytest.mark.parametrize("argv", [["-"], []])
@pytest.mark.parametrize("prefix", ["", "Bearer ", "bearer  "])
def test_verify_from_stdin(
    argv: list[str], prefix: str, key: Any, config: Path, fetched: list[str]
) -> None:
    tok = make_token(key)
    result = run("token", "verify", *argv, "-c", config, "-o", "json", stdin=f"{prefix}{tok}\n")
    assert result.exit_code == 0, result.output
    data = as_json(result)
    assert data["verified"] is True
    assert data["tokenId"] == sha(tok)


@pytest.mark.parametrize("stdin", ["", "\n", "  \n"])
def test_verify_empty_stdin(stdin: str, config: Path, fetched: list[str]) -> None:
    result = run("token", "verify", "-c", config, "-o", "json", stdin=stdin)
    assert result.exit_code == 1
    assert as_json(result)["error"]["code"] == "invalid-token-input"


def test_verify_bearer_without_token(config: Path, fetched: list[str]) -> None:
    result = run("token", "verify", "-c", config, "-o", "json", stdin="Bearer \n")
    assert result.exit_code == 1
    assert as_json(result)["error"]["code"] == "invalid-token-input"


def test_verify_expired(key: Any, config: Path, fetched: list[str]) -> None:
    now = int(time.time())
    tok = make_token(key, iat=now - 7200, exp=now - 3600)
    result = run("token", "verify", tok, "-c", config, "-o", "json")
    assert result.exit_code == 1
    data = as_json(result)
    assert data["verified"] is False
    assert data["reason"] == "expired"
    assert data["tokenSha256"] == sha(tok)
    assert "expired" in data["message"]
    assert tok not in result.output and tok not in result.stderr
    assert tok.rsplit(".", 1)[1] not in result.output  # nor its signature


def test_verify_rejected_text(key: Any, config: Path, fetched: list[str]) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    tok = make_token(other)
    result = run("token", "verify", tok, "-c", config)
    assert result.exit_code == 1
    assert "rejected" in result.stderr and "bad-signature" in result.stderr
    assert tok not in result.output


def test_verify_unknown_issuer(key: Any, config: Path, fetched: list[str]) -> None:
    result = run("token", "verify", make_token(key, iss="https://evil.example"), "-c", config,
                 "-o", "json")  # fmt: skip
    assert result.exit_code == 1
    assert as_json(result)["reason"] == "unknown-issuer"
    assert fetched == []


def test_verify_config_without_issuers(key: Any, tmp_path: Path) -> None:
    cfg = tmp_path / "empty.yaml"
    cfg.write_text("cluster: default\n")
    result = run("token", "verify", make_token(key), "-c", cfg, "-o", "json")
    assert result.exit_code == 1
    assert as_json(result)["error"]["code"] == "no-issuers"


def test_verify_invalid_config(key: Any, tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("identity:\n  issuers:\n    - name: x\n      issuer: https://x.example\n")
    result = run("token", "verify", make_token(key), "-c", cfg, "-o", "json")
    assert result.exit_code == 1
    data = as_json(result)
    assert data["valid"] is False
    assert data["errors"][0]["code"] == "invalid-config"
    assert data["errors"][0]["line"] == 3


# -- token inspect ---------------------------------------------------------------------------
def test_inspect_json_without_any_key(key: Any) -> None:
    tok = make_token(key, jti="j-9")
    result = run("token", "inspect", tok, "-o", "json")
    assert result.exit_code == 0, result.output
    data = as_json(result)
    assert data["verified"] is False
    assert data["header"] == {"alg": "RS256", "kid": "k1", "typ": "JWT"}
    assert data["claims"]["sub"] == "alice@corp.example"
    assert data["claims"]["groups"] == ["dba"]
    assert data["tokenSha256"] == sha(tok)


def test_inspect_text_says_unverified(key: Any) -> None:
    result = run("token", "inspect", stdin="Bearer " + make_token(key))
    assert result.exit_code == 0
    assert "UNVERIFIED" in result.stderr
    assert "sub: alice@corp.example" in result.stdout
    assert "UTC" in result.stdout  # exp/iat shown as dates


@pytest.mark.parametrize("tok", ["a.b", "x.y.z.w.v", "e30.e30.", "!!.e30.e30"])
def test_inspect_malformed(tok: str) -> None:
    result = run("token", "inspect", tok, "-o", "json")
    assert result.exit_code == 1
    assert as_json(result)["error"]["code"] in {"malformed", "bad-signature"}


# -- explain --from token:FILE ---------------------------------------------------------------
def explain(token_file: Path, config: Path) -> Result:
    return run(
        "explain", "-p", POLICIES, "-i", INVENTORY, "--from", f"token:{token_file}",
        "-c", config, "--to", "payments/ledger-db", "--port", "5432", "-o", "json",
    )  # fmt: skip


def test_explain_from_token(key: Any, config: Path, fetched: list[str], tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(make_token(key) + "\n")
    result = explain(token_file, config)
    data = as_json(result)
    # The port needs a verified credential, and the token is one: admitted.
    assert data["verdict"] == "allowed", data
    assert data["reason"] == "authenticated"
    assert data["authenticationRequired"] is True
    assert data["authenticated"] is True
    assert result.exit_code == 0
    cred = data["from"]["credential"]
    assert cred["subject"] == "alice@corp.example"
    assert cred["issuer"] == "corp-okta"
    assert "oidc:groups=dba" in cred["labels"]
    assert "actor" not in cred


def test_explain_from_delegated_token(
    key: Any, config: Path, fetched: list[str], tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(make_token(key, act={"sub": "agent-7", "client_id": "copilot"}))
    data = as_json(explain(token_file, config))
    cred = data["from"]["credential"]
    assert cred["actor"] == "agent-7"
    assert cred["subject"] == "alice@corp.example"
    assert "agent:actor=agent-7" in cred["labels"]


def test_explain_from_rejected_token(
    key: Any, config: Path, fetched: list[str], tmp_path: Path
) -> None:
    now = int(time.time())
    tok = make_token(key, iat=now - 7200, exp=now - 3600)
    token_file = tmp_path / "token"
    token_file.write_text(tok)
    result = explain(token_file, config)
    assert result.exit_code == 1
    assert as_json(result)["error"]["code"] == "expired"
    assert tok not in result.output


def test_explain_token_needs_config(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("x.y.z")
    result = CliRunner().invoke(
        main,
        ["explain", "-p", str(POLICIES), "--from", f"token:{token_file}",
         "--to", "payments/ledger-db", "--port", "5432"],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "--config" in result.output


def test_explain_unreadable_token_file(config: Path, fetched: list[str], tmp_path: Path) -> None:
    result = explain(tmp_path / "missing", config)
    assert result.exit_code == 1
    assert as_json(result)["error"]["code"] == "invalid-flow"


def test_json_output_is_json(key: Any, config: Path, fetched: list[str]) -> None:
    result = run("token", "verify", make_token(key), "-c", config, "-o", "json")
    json.loads(result.stdout)
