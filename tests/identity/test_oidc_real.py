"""The verifier against a real OpenID Provider (oidc-provider on loopback): discovery, JWKS,
key rotation picked up through an unknown kid, last-known-good keys through an outage, then
fail-closed; and verified identities compiled into policy decisions."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from cport.engine import Flow, Reason, Verdict, compile_table, decide
from cport.errors import CredentialError
from cport.identity import IssuerConfig, JWKSKeySource, Verifier
from cport.model import load_text

from .oidc_provider import AGENT_CLIENT, OidcProvider


@pytest.fixture
def oidc() -> Iterator[OidcProvider]:
    with OidcProvider(alg="ES256", ttl=3600) as provider:
        yield provider


def _issuer(oidc: OidcProvider, **kw: float) -> IssuerConfig:
    return IssuerConfig(name="corp", issuer=oidc.issuer, audiences=(oidc.audience,), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("alg", ["ES256", "RS256", "EdDSA"])
def test_real_tokens_verify_through_discovery(alg: str) -> None:
    with OidcProvider(alg=alg) as oidc:  # type: ignore[arg-type]
        verifier = Verifier([_issuer(oidc)], JWKSKeySource())
        ident = verifier.verify(oidc.token())
    assert ident.kind == "oidc"
    assert ident.issuer == "corp"
    labels = set(ident.labels.strings())
    assert {"oidc:iss=corp", "oidc:groups=dba", "oidc:groups=dev"} <= labels
    assert ident.expires_at > time.time()


def test_rotation_is_picked_up_through_an_unknown_kid(oidc: OidcProvider) -> None:
    source = JWKSKeySource()
    verifier = Verifier([_issuer(oidc, min_refetch_interval=30)], source)
    now = time.time()
    old_token = oidc.token()
    verifier.verify(old_token, now)
    old_kid = oidc.kid
    oidc.rotate(keep_old=False)
    assert oidc.kid != old_kid
    new_token = oidc.token()
    ident = verifier.verify(new_token, now + 1)  # unknown kid → one refetch → verified
    assert ident.subject
    assert source.status()["corp"]["kids"] == [oidc.kid]
    # A fresh verifier never saw the old key: the old token's kid is unknown now.
    with pytest.raises(CredentialError) as info:
        Verifier([_issuer(oidc)], JWKSKeySource()).verify(old_token)
    assert info.value.code == "unknown-kid"
    # A second rotation within min_refetch_interval is not fetched: rate-limited, fail closed.
    oidc.rotate(keep_old=False)
    with pytest.raises(CredentialError) as info:
        verifier.verify(oidc.token(), now + 2)
    assert info.value.code == "unknown-kid"
    # After the interval the refetch is allowed again.
    assert verifier.verify(oidc.token(), now + 40).subject


def test_outage_uses_last_known_good_keys_then_fails_closed(oidc: OidcProvider) -> None:
    verifier = Verifier(
        [_issuer(oidc, refresh_interval=10, max_stale=20, min_refetch_interval=5)], JWKSKeySource()
    )
    now = time.time()
    first, second, third = oidc.token(), oidc.token(), oidc.token()
    verifier.verify(first, now)
    oidc.stop()
    # The periodic refresh is due and fails: the last-known-good keys still verify.
    assert verifier.verify(second, now + 15).subject
    # Past refresh_interval + max_stale without a successful fetch: no keys, every token fails.
    with pytest.raises(CredentialError) as info:
        verifier.verify(third, now + 31)
    assert info.value.code == "no-keys"
    # The provider comes back: the next refresh (after the back-off) restores verification.
    oidc.start()
    assert verifier.verify(third, now + 40).subject


POLICY = """
apiVersion: cport.dev/v1alpha1
kind: PortPolicy
metadata: {name: db, namespace: shop}
spec:
  selector: {matchLabels: {app: db}}
  ingress:
    - from: [{users: {issuer: corp, claims: {groups: [dba]}}}]
      ports: [{port: 5432}]
      authentication: required
    - from:
        - agents:
            actor: {claims: {client_id: [copilot]}}
            onBehalfOf: {claims: {groups: [dev]}}
      ports: [{port: 8080}]
---
apiVersion: cport.dev/v1alpha1
kind: Workload
metadata: {name: db, namespace: shop, labels: {app: db}}
spec: {addresses: [198.51.100.9]}
"""


def test_verified_identities_are_decided_by_policy(oidc: OidcProvider) -> None:
    verifier = Verifier([_issuer(oidc)], JWKSKeySource())
    person = verifier.verify(oidc.token())
    agent = verifier.verify(oidc.token(client=AGENT_CLIENT))
    assert agent.actor == "copilot"
    bundle = load_text(POLICY)
    table = compile_table(
        bundle.policies, bundle.inventory, extra_identities=[person.labels, agent.labels]
    )
    ids = {labels: num for num, labels in table.identities.items()}
    db = table.workload_ids[("shop", "db")]
    # The DBA person: the users rule matches; the port needs a verified credential.
    d = decide(table, Flow(ids[person.labels], db, 6, 5432))
    assert (d.verdict, d.reason) == (Verdict.AUTH_REQUIRED, Reason.AUTH_REQUIRED)
    # The agent carries the person's-style labels but users peers never match an agent.
    assert decide(table, Flow(ids[agent.labels], db, 6, 5432)).verdict is Verdict.DENIED
    # The agents rule needs both the actor (copilot) and the person (group dev).
    assert decide(table, Flow(ids[agent.labels], db, 6, 8080)).verdict is Verdict.ALLOWED
    assert decide(table, Flow(ids[person.labels], db, 6, 8080)).verdict is Verdict.DENIED
