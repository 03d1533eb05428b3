"""The loopback OpenID Provider fixture (oidc_provider.py) against the real oidc-provider.

These tests validate the fixture, not cport: PyJWT checks the signatures here only to prove the
provider's tokens and JWKS are what the JWT verifier tests will rely on.
"""

from __future__ import annotations

import json
import time
import urllib.error
from collections.abc import Iterator
from typing import Any

import jwt
import pytest

from tests.identity.oidc_provider import (
    AGENT_CLIENT,
    DEFAULT_AUDIENCE,
    DEFAULT_CLIENT,
    Alg,
    OidcProvider,
    OidcTokenError,
    http_get_json,
)


@pytest.fixture
def oidc() -> Iterator[OidcProvider]:
    with OidcProvider(alg="ES256") as provider:
        yield provider


def _segment(token: str, index: int) -> dict[str, Any]:
    part = token.split(".")[index]
    decoded: dict[str, Any] = json.loads(jwt.utils.base64url_decode(part))
    return decoded


def _verify(provider: OidcProvider, token: str) -> dict[str, Any]:
    """Signature, iss, aud and exp checked against the keys the provider publishes."""
    jwks = jwt.PyJWKSet.from_dict(http_get_json(provider.jwks_uri))
    header = jwt.get_unverified_header(token)
    key = next(k for k in jwks.keys if k.key_id == header["kid"])
    claims: dict[str, Any] = jwt.decode(
        token,
        key=key,
        algorithms=[header["alg"]],
        audience=DEFAULT_AUDIENCE,
        issuer=provider.issuer,
        options={"require": ["iss", "aud", "exp", "iat", "jti"]},
    )
    return claims


def test_discovery_names_issuer_and_jwks_uri(oidc: OidcProvider) -> None:
    discovery = http_get_json(oidc.discovery_url)
    assert discovery["issuer"] == oidc.issuer == f"http://127.0.0.1:{oidc.port}"
    assert discovery["jwks_uri"] == oidc.jwks_uri
    assert discovery["token_endpoint"] == oidc.token_endpoint
    assert "client_credentials" in discovery["grant_types_supported"]


def test_jwks_lists_public_keys_only(oidc: OidcProvider) -> None:
    jwks = http_get_json(oidc.jwks_uri)
    assert [key["kid"] for key in jwks["keys"]] == [oidc.kid]
    for key in jwks["keys"]:
        assert not {"d", "p", "q", "dp", "dq", "qi"} & key.keys(), key
    assert jwks == oidc.public_jwks


def test_token_is_a_signed_jwt_access_token(oidc: OidcProvider) -> None:
    answer = oidc.token_response(scope="read")
    assert answer["token_type"] == "Bearer"
    assert answer["expires_in"] == 300
    token = answer["access_token"]
    assert token.count(".") == 2
    header = _segment(token, 0)
    assert header == {"alg": "ES256", "typ": "at+jwt", "kid": oidc.kid}

    claims = _verify(oidc, token)
    assert claims["iss"] == oidc.issuer
    assert claims["aud"] == DEFAULT_AUDIENCE
    assert claims["client_id"] == claims["sub"] == DEFAULT_CLIENT
    assert claims["scope"] == "read"
    assert claims["groups"] == ["dba", "dev"]
    assert claims["email"] == "cport-test@example.test"
    assert "act" not in claims
    assert claims["exp"] - claims["iat"] == 300
    assert abs(claims["iat"] - time.time()) < 60
    assert isinstance(claims["jti"], str) and claims["jti"]


def test_act_claim_for_delegated_scope_and_agent_client(oidc: OidcProvider) -> None:
    actor = {"sub": "copilot", "client_id": "copilot"}
    delegated = _verify(oidc, oidc.token(scope="read delegated"))
    assert delegated["act"] == actor
    assert delegated["scope"] == "read delegated"
    agent = _verify(oidc, oidc.token(client=AGENT_CLIENT))
    assert agent["act"] == actor
    assert agent["sub"] == agent["client_id"] == AGENT_CLIENT
    assert agent["groups"] == ["dev"]
    assert "scope" not in agent


def test_token_errors_and_opaque_tokens(oidc: OidcProvider) -> None:
    with pytest.raises(OidcTokenError) as wrong_secret:
        oidc.token_response(secret="wrong")
    assert wrong_secret.value.status == 401
    with pytest.raises(OidcTokenError, match="invalid_target"):
        oidc.token(resource="urn:somebody:else")
    assert oidc.token(resource="").count(".") == 0  # no resource indicator: opaque token


def test_rotation_changes_kid_and_keeps_or_drops_old_key(oidc: OidcProvider) -> None:
    old_kid, port = oidc.kid, oidc.port
    old_token = oidc.token()

    new = oidc.rotate(keep_old=True)
    assert oidc.port == port and oidc.running
    assert new.kid == oidc.kid != old_kid
    assert [k["kid"] for k in http_get_json(oidc.jwks_uri)["keys"]] == [new.kid, old_kid]
    new_token = oidc.token()
    assert jwt.get_unverified_header(new_token)["kid"] == new.kid
    _verify(oidc, new_token)
    _verify(oidc, old_token)  # issued before the restart, still verifiable while the key is kept

    newest = oidc.rotate(keep_old=False)
    assert [k["kid"] for k in http_get_json(oidc.jwks_uri)["keys"]] == [newest.kid]
    assert jwt.get_unverified_header(oidc.token())["kid"] == newest.kid


@pytest.mark.parametrize("alg", ["RS256", "EdDSA"])
def test_other_algorithms(alg: Alg) -> None:
    with OidcProvider(alg=alg) as provider:
        token = provider.token()
        assert jwt.get_unverified_header(token)["alg"] == alg
        assert _verify(provider, token)["groups"] == ["dba", "dev"]


def test_rotation_to_another_algorithm(oidc: OidcProvider) -> None:
    old_kid = oidc.kid
    new = oidc.rotate(new_alg="RS256", keep_old=True)
    header = jwt.get_unverified_header(oidc.token())
    assert (header["alg"], header["kid"]) == ("RS256", new.kid)
    jwks = http_get_json(oidc.jwks_uri)
    assert [(k["kid"], k["kty"]) for k in jwks["keys"]] == [(new.kid, "RSA"), (old_kid, "EC")]


def test_custom_claims_and_ttl() -> None:
    claims: dict[str, dict[str, Any]] = {
        DEFAULT_CLIENT: {"groups": ["ops"]},
        "other": {"groups": "not-a-list"},
    }
    with OidcProvider(ttl=30, claims=claims) as provider:
        mine = _verify(provider, provider.token())
        assert mine["groups"] == ["ops"]
        assert "email" not in mine
        assert mine["exp"] - mine["iat"] == 30
        assert _verify(provider, provider.token(client="other"))["groups"] == "not-a-list"


def test_stop_and_start_on_the_same_port(oidc: OidcProvider) -> None:
    port, issuer, kid = oidc.port, oidc.issuer, oidc.kid
    pid = oidc.pid
    oidc.stop()
    assert not oidc.running and oidc.pid is None
    with pytest.raises(urllib.error.URLError):
        http_get_json(oidc.jwks_uri, timeout=1)
    oidc.start()
    assert (oidc.port, oidc.issuer, oidc.kid) == (port, issuer, kid)
    assert oidc.pid != pid
    assert http_get_json(oidc.jwks_uri)["keys"][0]["kid"] == kid
    _verify(oidc, oidc.token())


def test_close_reaps_node_and_removes_private_keys() -> None:
    provider = OidcProvider()
    with provider:
        proc = provider._proc
        workdir = provider._dir
        assert proc is not None and workdir is not None
        assert (workdir / "jwks.json").stat().st_mode & 0o077 == 0
    assert proc.returncode == 0  # SIGTERM handled: clean exit, reaped
    assert not workdir.exists()
