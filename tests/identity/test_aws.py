"""AWS IAM identity (`cport.identity._aws`): local checks, and real SigV4 checks by moto.

The pure checks run on hand-made requests (the signature is never looked at locally). The STS
half runs against moto's server on 127.0.0.1 with IAM authentication enforced
(``INITIAL_NO_AUTH_ACTION_COUNT=0``; the setup calls run while ``/moto-api/reset-auth`` has
lifted it): moto recomputes every signature with botocore and the caller's real secret, so a
wrong secret, a wrong cluster id or a wrong Host header is refused by the emulator, not by us.

How moto 5.2's server dispatches a request (``moto/moto_server/werkzeug_app.py``,
``DomainDispatcherApplication.get_application``), and why the presigned form needs a shim:

* the Host header is **not** used (only ``/moto-api`` and ``/latest/meta-data`` paths are
  special); a request with an ``Authorization`` header goes to the service in its SigV4
  credential scope (``…/us-east-1/sts/aws4_request`` → STS), so the Vault form reaches STS
  as is, and with ``Host: sts.amazonaws.com`` its signature verifies;
* a request without one is routed by its form body (unsigned actions, ``Version``), then by
  path; a presigned ``GET /?Action=GetCallerIdentity&X-Amz-…`` matches none of these and falls
  through to the default, **S3**: moto answers ``ListAllMyBucketsResult`` (auth off) or 500
  (auth on: ``KeyError: HTTP_AUTHORIZATION`` in S3's auth check). No Host header, path or
  parameter the client signed can change that (`test_stock_moto_*` below shows it);
* even at STS, moto checks SigV4 only from the ``Authorization`` header
  (``IAMRequestBase``), reads ``X-Amz-Date`` only from the *signed* headers (a presigned URL
  signs ``host;x-k8s-aws-id``: KeyError), and for an empty body hashes the parsed query
  instead of the empty payload (``data=self._body or self._data``): a presigned signature can
  never verify there, nor could it identify the caller (``get_access_key`` reads the header).

So the presigned tests run moto's own WSGI app behind `_SHIM`: a middleware that moves the
query signature into an equivalent Authorization header (the rest of the query stays as signed)
and a two-line fix of those two moto lookups, applied only to requests the shim converted.
Signature checking stays moto's (botocore's SigV4 with the secret moto holds). The verifier is
configured exactly as in production (``https://sts.amazonaws.com``) plus ``connect_to``, which
sends the bytes to the loopback server while the Host header stays ``sts.amazonaws.com``.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from cport.errors import CredentialError, TokenExpired
from cport.identity._aws import (
    TOKEN_PREFIX,
    AwsConfig,
    AwsVerifier,
    identity_from_arn,
    parse_authenticator_token,
    parse_caller_identity,
    parse_signed_request,
)
from cport.identity._credentials import credential_hash
from cport.identity._labels import Labels

ACCOUNT = "123456789012"  # moto's default account
CLUSTER = "cport-test-cluster"
STS = "https://sts.amazonaws.com"
NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z
AMZ_DATE = "20260101T000000Z"
AKID = "AKIAIOSFODNN7EXAMPLE"
SCOPE = f"{AKID}/20260101/us-east-1/sts/aws4_request"
SIG = "0" * 64
FORM = "application/x-www-form-urlencoded; charset=utf-8"
GCI_BODY = "Action=GetCallerIdentity&Version=2011-06-15"
READY_TIMEOUT = 20.0


def _no_sts(request: httpx.Request) -> httpx.Response:
    raise AssertionError("the verifier called STS for a request it must refuse locally")


Handler = Callable[[httpx.Request], httpx.Response]


def _verifier(handler: Handler = _no_sts, **kw: Any) -> AwsVerifier:
    config = AwsConfig(audience=CLUSTER, **kw)
    return AwsVerifier(config, transport=httpx.MockTransport(handler))


def _code(call: Callable[[], object]) -> str:
    with pytest.raises(CredentialError) as info:
        call()
    return info.value.code


# --------------------------------------------------------------------------- hand-made requests


def _presigned_url(changes: Mapping[str, str | None] | None = None, base: str = f"{STS}/") -> str:
    params: dict[str, str | None] = {
        "Action": "GetCallerIdentity",
        "Version": "2011-06-15",
        "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
        "X-Amz-Credential": SCOPE,
        "X-Amz-Date": AMZ_DATE,
        "X-Amz-Expires": "60",
        "X-Amz-SignedHeaders": "host;x-k8s-aws-id",
        "X-Amz-Signature": SIG,
    }
    params.update(changes or {})
    query = "&".join(f"{k}={quote(v, safe='-_.~')}" for k, v in params.items() if v is not None)
    return f"{base}?{query}"


def _token(url: str) -> str:
    return TOKEN_PREFIX + base64.urlsafe_b64encode(url.encode()).decode().rstrip("=")


def _untoken(token: str) -> str:
    encoded = token[len(TOKEN_PREFIX) :]
    return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _vault(
    *,
    method: str = "POST",
    url: str = f"{STS}/",
    body: str = GCI_BODY,
    headers: Mapping[str, Any] | None = None,
    signed: str = "content-type;host;x-amz-date",
    scope: str = SCOPE,
) -> dict[str, str]:
    hdrs: dict[str, Any] = {
        "Content-Type": [FORM],
        "X-Amz-Date": [AMZ_DATE],
        "Authorization": [
            f"AWS4-HMAC-SHA256 Credential={scope}, SignedHeaders={signed}, Signature={SIG}"
        ],
    }
    hdrs.update(headers or {})
    return {
        "role": "ignored-by-the-verifier",
        "iam_http_request_method": method,
        "iam_request_url": _b64(url),
        "iam_request_body": _b64(body),
        "iam_request_headers": _b64(json.dumps({k: v for k, v in hdrs.items() if v is not None})),
    }


# --------------------------------------------------------------------------- pure: the token


def test_a_well_formed_token_is_prepared_without_any_call() -> None:
    token = _token(_presigned_url())
    prepared = parse_authenticator_token(token, AwsConfig(audience=CLUSTER), NOW + 30)
    assert (prepared.form, prepared.method, prepared.host) == (
        "aws-iam-authenticator",
        "GET",
        "sts.amazonaws.com",
    )
    assert prepared.headers == (("x-k8s-aws-id", CLUSTER),)
    assert (prepared.signed_at, prepared.expires_at) == (NOW, NOW + 900)
    assert SIG not in repr(prepared) and "X-Amz" not in repr(prepared)


@pytest.mark.parametrize(
    ("token", "code"),
    [
        ("", "malformed"),
        ("Bearer abc", "malformed"),
        ("k8s-aws-v2." + _token(_presigned_url())[len(TOKEN_PREFIX) :], "malformed"),
        (TOKEN_PREFIX, "malformed"),
        (TOKEN_PREFIX + "!!!!", "malformed"),
        (TOKEN_PREFIX + "a", "malformed"),
        (_token(_presigned_url()) + "==", "malformed"),  # padding: RawURLEncoding only
        (TOKEN_PREFIX + base64.urlsafe_b64encode(b"\xff\xfe").decode().rstrip("="), "malformed"),
        (_token("not a url"), "malformed"),
        (_token("https://sts.amazonaws.com/#x?Action=GetCallerIdentity"), "malformed"),
        (TOKEN_PREFIX + "A" * 9000, "token-too-large"),
    ],
)
def test_garbage_tokens(token: str, code: str) -> None:
    assert _code(lambda: _verifier().verify_token(token, NOW)) == code


@pytest.mark.parametrize(
    "base",
    [
        "https://evil.example/",
        "https://sts.amazonaws.com.evil.example/",
        "https://sts.amazonaws.com./",  # trailing dot: not the same name to an allow-list
        "https://sts.amazonaws.com:8443/",  # odd port
        "http://sts.amazonaws.com/",  # downgrade
        "https://user@sts.amazonaws.com/",
        "https://sts.amazonaws.com@evil.example/",
        "https://sts.eu-west-1.amazonaws.com/",  # real, but not configured
        "ftp://sts.amazonaws.com/",
        "https://127.0.0.1/",
    ],
)
def test_a_host_that_is_not_a_configured_endpoint_is_refused_before_any_call(base: str) -> None:
    token = _token(_presigned_url(base=base))
    assert _code(lambda: _verifier().verify_token(token, NOW)) == "sts-host-not-allowed"


def test_endpoints_match_scheme_host_and_port_exactly() -> None:
    regional = "https://sts.eu-west-1.amazonaws.com"
    config = AwsConfig(sts_endpoints=(regional,), audience=CLUSTER)
    # host names are case-insensitive, and :443 is https's default port
    for base in (f"{regional}/", "https://STS.EU-WEST-1.amazonaws.com:443/", regional):
        prepared = parse_authenticator_token(_token(_presigned_url(base=base)), config, NOW)
        assert prepared.host == "sts.eu-west-1.amazonaws.com"
    token = _token(_presigned_url())  # the global endpoint, not configured here
    assert _code(lambda: parse_authenticator_token(token, config, NOW)) == "sts-host-not-allowed"
    loopback = AwsConfig(sts_endpoints=("http://127.0.0.1:4566",), audience=CLUSTER)
    token = _token(_presigned_url(base="http://127.0.0.1:4566/"))
    assert parse_authenticator_token(token, loopback, NOW).host == "127.0.0.1:4566"


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"Action": "AssumeRole"}, "sts-action-not-allowed"),
        ({"Action": None}, "sts-action-not-allowed"),
        ({"Version": "2011-06-16"}, "sts-action-not-allowed"),
        (
            {"X-Amz-Credential": f"{AKID}/20260101/us-east-1/iam/aws4_request"},
            "sts-action-not-allowed",
        ),
        ({"RoleArn": f"arn:aws:iam::{ACCOUNT}:role/x"}, "malformed"),  # nothing else
        ({"action": "GetCallerIdentity"}, "malformed"),  # exact spelling only
        ({"X-Amz-SignedHeaders": "host"}, "audience-mismatch"),  # cluster id not signed
        ({"X-Amz-SignedHeaders": "host;x-amz-foo;x-k8s-aws-id"}, "malformed"),
        ({"X-Amz-SignedHeaders": "x-k8s-aws-id"}, "malformed"),
        ({"X-Amz-SignedHeaders": "x-k8s-aws-id;host"}, "malformed"),
        ({"X-Amz-Algorithm": "AWS4-ECDSA-P256-SHA256"}, "malformed"),
        ({"X-Amz-Signature": None}, "malformed"),
        ({"X-Amz-Signature": "abc"}, "malformed"),
        ({"X-Amz-Expires": "901"}, "malformed"),
        ({"X-Amz-Expires": "0"}, "malformed"),
        ({"X-Amz-Expires": "-1"}, "malformed"),
        ({"X-Amz-Date": "20260101T000000"}, "malformed"),
        ({"X-Amz-Date": "20261301T000000Z"}, "malformed"),
        ({"X-Amz-Credential": f"{AKID}/20251231/us-east-1/sts/aws4_request"}, "malformed"),
        ({"X-Amz-Credential": "short/20260101/us-east-1/sts/aws4_request"}, "malformed"),
        ({"X-Amz-Security-Token": "session+token/=="}, None),  # percent-encoded: fine
    ],
)
def test_query_checks(changes: Mapping[str, str | None], code: str | None) -> None:
    token = _token(_presigned_url(changes))
    if code is None:
        parse_authenticator_token(token, AwsConfig(audience=CLUSTER), NOW)
    else:
        assert _code(lambda: _verifier().verify_token(token, NOW)) == code


@pytest.mark.parametrize(
    "url",
    [
        f"{STS}/other?Action=GetCallerIdentity",
        _presigned_url() + "&Action=AssumeRole",  # duplicate: parsers disagree on which wins
        _presigned_url() + ";Action=AssumeRole",
        _presigned_url() + "&Foo",
        _presigned_url().replace("Version=2011-06-15", "Version=2011+06+15"),
        _presigned_url().replace("X-Amz-Expires=60", "X-Amz-Expires=%FF"),
    ],
)
def test_ambiguous_or_odd_urls_are_malformed(url: str) -> None:
    assert _code(lambda: _verifier().verify_token(_token(url), NOW)) == "malformed"


def test_the_authenticator_form_needs_a_configured_cluster_id() -> None:
    token = _token(_presigned_url())
    assert _code(lambda: parse_authenticator_token(token, AwsConfig(), NOW)) == "audience-mismatch"


def test_signature_age_window_with_skew() -> None:
    token = _token(_presigned_url())
    config = AwsConfig(audience=CLUSTER, max_age=900, clock_skew=60)
    parse_authenticator_token(token, config, NOW + 960)  # 15 min + skew: still honoured
    parse_authenticator_token(token, config, NOW - 60)  # signed a minute "ahead": skew
    with pytest.raises(TokenExpired) as expired:
        _verifier().verify_token(token, NOW + 961)
    assert expired.value.code == "expired"
    assert _code(lambda: _verifier().verify_token(token, NOW - 61)) == "not-yet-valid"
    short = AwsConfig(audience=CLUSTER, max_age=300, clock_skew=0)
    assert parse_authenticator_token(token, short, NOW).expires_at == NOW + 300
    assert _code(lambda: parse_authenticator_token(token, short, NOW + 301)) == "expired"


def test_errors_never_carry_the_credential() -> None:
    secretish = "S3CR3TS3SS10NT0K3N"
    for changes in ({"Action": "AssumeRole"}, {"X-Amz-Expires": "901"}, {"X-Amz-Date": "x"}):
        url = _presigned_url({**changes, "X-Amz-Security-Token": secretish})
        with pytest.raises(CredentialError) as info:
            _verifier().verify_token(_token(url), NOW)
        assert secretish not in str(info.value) and SIG not in str(info.value)


# --------------------------------------------------------------------------- pure: the Vault form


def test_a_well_formed_vault_login_is_prepared_with_only_signed_headers_forwarded() -> None:
    login = _vault(
        headers={
            "X-Forwarded-For": ["203.0.113.9"],
            "Connection": ["close"],
            "Host": ["sts.amazonaws.com"],
        }
    )
    prepared = parse_signed_request(login, AwsConfig(), NOW)
    assert (prepared.form, prepared.method, prepared.host) == ("vault", "POST", "sts.amazonaws.com")
    assert prepared.body == GCI_BODY.encode()
    assert {name.lower() for name, _ in prepared.headers} == {
        "content-type",
        "x-amz-date",
        "authorization",
    }
    assert "Signature" not in repr(prepared)


@pytest.mark.parametrize(
    ("login", "code"),
    [
        ({}, "malformed"),
        ({**_vault(), "iam_request_url": "%%%"}, "malformed"),
        ({**_vault(), "iam_request_headers": _b64("[1]")}, "malformed"),
        ({**_vault(), "iam_request_headers": _b64("{")}, "malformed"),
        ({**_vault(), "iam_request_body": "A" * 40_000}, "token-too-large"),
        (_vault(method="GET"), "sts-action-not-allowed"),
        (_vault(url=f"{STS}/?Action=AssumeRole"), "sts-action-not-allowed"),
        (_vault(body="Action=AssumeRole&Version=2011-06-15"), "sts-action-not-allowed"),
        (_vault(body=GCI_BODY + "&RoleArn=x"), "sts-action-not-allowed"),
        (_vault(body=GCI_BODY + "&Action=AssumeRole"), "malformed"),
        (_vault(body="Action=GetCallerIdentity;Version=2011-06-15"), "malformed"),
        (_vault(url="https://evil.example/"), "sts-host-not-allowed"),
        (_vault(url="http://sts.amazonaws.com/"), "sts-host-not-allowed"),
        (_vault(headers={"Host": ["evil.example"]}), "sts-host-not-allowed"),
        (_vault(headers={"Authorization": None}), "malformed"),
        (_vault(headers={"Authorization": ["AWS4-HMAC-SHA256 Credential=x"]}), "malformed"),
        (_vault(headers={"Content-Type": ["application/json"]}), "malformed"),
        (_vault(headers={"X-Amz-Date": ["20260101"]}), "malformed"),
        (_vault(headers={"x-amz-date": [AMZ_DATE]}), "malformed"),  # the same header twice
        (_vault(headers={"X-Amz-Date": [AMZ_DATE, AMZ_DATE]}), "malformed"),
        (_vault(headers={"X-Custom": ["a\r\nInjected: yes"]}), "malformed"),
        (_vault(signed="content-type;host"), "malformed"),  # X-Amz-Date not signed
        (_vault(signed="content-type;x-amz-date"), "malformed"),  # Host not signed
        (_vault(signed="content-type;host;x-amz-date;x-missing"), "malformed"),
        (
            _vault(
                signed="content-type;host;transfer-encoding;x-amz-date",
                headers={"Transfer-Encoding": ["chunked"]},
            ),
            "malformed",
        ),
        (
            _vault(
                signed="content-length;content-type;host;x-amz-date",
                headers={"Content-Length": ["5"]},
            ),
            "malformed",
        ),
        (
            _vault(
                signed="accept;content-type;host;x-amz-date",
                headers={"Accept": ["application/json"]},
            ),
            "malformed",
        ),
        (_vault(scope=f"{AKID}/20260101/us-east-1/iam/aws4_request"), "sts-action-not-allowed"),
    ],
)
def test_vault_login_checks(login: dict[str, str], code: str) -> None:
    assert _code(lambda: _verifier().verify_signed_request(login, NOW)) == code


def test_vault_login_age_window() -> None:
    login = _vault()
    assert parse_signed_request(login, AwsConfig(), NOW + 960).expires_at == NOW + 900
    assert _code(lambda: parse_signed_request(login, AwsConfig(), NOW + 961)) == "expired"
    assert _code(lambda: parse_signed_request(login, AwsConfig(), NOW - 61)) == "not-yet-valid"


def test_vault_server_id_must_be_signed_and_equal_when_configured() -> None:
    config = AwsConfig(vault_server_id="vault.corp.example")
    signed = "content-type;host;x-amz-date;x-vault-aws-iam-server-id"
    good = _vault(signed=signed, headers={"X-Vault-AWS-IAM-Server-ID": ["vault.corp.example"]})
    assert parse_signed_request(good, config, NOW).host == "sts.amazonaws.com"
    for login in (
        _vault(),
        _vault(headers={"X-Vault-AWS-IAM-Server-ID": ["vault.corp.example"]}),  # unsigned
        _vault(signed=signed, headers={"X-Vault-AWS-IAM-Server-ID": ["other"]}),
    ):
        assert _code(partial(parse_signed_request, login, config, NOW)) == "audience-mismatch"


# --------------------------------------------------------------------------- pure: ARNs, config


@pytest.mark.parametrize(
    ("arn", "subject", "labels"),
    [
        (
            f"arn:aws:iam::{ACCOUNT}:user/alice",
            f"arn:aws:iam::{ACCOUNT}:user/alice",
            "aws:user=alice",
        ),
        (
            f"arn:aws:iam::{ACCOUNT}:user/eng/alice",
            f"arn:aws:iam::{ACCOUNT}:user/eng/alice",
            "aws:user=alice",
        ),
        (
            f"arn:aws:sts::{ACCOUNT}:assumed-role/ci-deploy/session",
            f"arn:aws:iam::{ACCOUNT}:role/ci-deploy",
            "aws:role=ci-deploy",
        ),
        (
            f"arn:aws:sts::{ACCOUNT}:assumed-role/ci-deploy/botocore-session-1700000000",
            f"arn:aws:iam::{ACCOUNT}:role/ci-deploy",
            "aws:role=ci-deploy",
        ),
        (
            f"arn:aws:iam::{ACCOUNT}:role/teams/ci/ci-deploy",
            f"arn:aws:iam::{ACCOUNT}:role/teams/ci/ci-deploy",
            "aws:role=ci-deploy",
        ),
        (
            f"arn:aws-cn:sts::{ACCOUNT}:assumed-role/r@x.y/s",
            f"arn:aws-cn:iam::{ACCOUNT}:role/r@x.y",
            "aws:role=r@x.y",
        ),
        (
            f"arn:aws:sts::{ACCOUNT}:federated-user/bob",
            f"arn:aws:sts::{ACCOUNT}:federated-user/bob",
            "aws:federated-user=bob",
        ),
        (f"arn:aws:iam::{ACCOUNT}:root", f"arn:aws:iam::{ACCOUNT}:root", ""),
    ],
)
def test_identity_from_arn(arn: str, subject: str, labels: str) -> None:
    got_subject, got = identity_from_arn(arn, ACCOUNT)
    assert got_subject == subject
    want = [f"aws:account={ACCOUNT}", f"aws:arn={subject}", *([labels] if labels else [])]
    assert got == Labels.from_strings(want)


@pytest.mark.parametrize(
    ("arn", "account"),
    [
        (f"arn:aws:iam::{ACCOUNT}:user/alice", "210987654321"),
        (f"arn:aws:s3:::{ACCOUNT}", ACCOUNT),
        (f"arn:aws:iam::{ACCOUNT}:group/admins", ACCOUNT),
        (f"arn:aws:sts::{ACCOUNT}:assumed-role/no-session", ACCOUNT),
        (f"arn:aws:iam::{ACCOUNT}:user/", ACCOUNT),
        (f"arn:evil:iam::{ACCOUNT}:user/alice", ACCOUNT),
        ("not an arn", ACCOUNT),
    ],
)
def test_identity_from_arn_refuses_other_principals(arn: str, account: str) -> None:
    assert _code(lambda: identity_from_arn(arn, account)) == "malformed"


@pytest.mark.parametrize(
    "kw",
    [
        {"sts_endpoints": ()},
        {"sts_endpoints": "https://sts.amazonaws.com"},
        {"sts_endpoints": ("http://sts.amazonaws.com",)},  # plain http only on loopback
        {"sts_endpoints": ("https://sts.amazonaws.com/path",)},
        {"sts_endpoints": ("https://u:p@sts.amazonaws.com",)},
        {"sts_endpoints": ("https://sts.amazonaws.com:99999",)},
        {"connect_to": {"evil.example": "http://127.0.0.1:1"}},  # not an endpoint
        {"connect_to": {"sts.amazonaws.com": "http://192.0.2.1:80"}},
        {"audience": ""},
        {"max_age": 0},
        {"max_age": 86400},
    ],
)
def test_config_validation(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        AwsConfig(**kw)


# --------------------------------------------------------------------------- STS answers (mocked)


def _xml(arn: str, account: str = ACCOUNT, user_id: str = "AIDAEXAMPLE") -> bytes:
    return (
        '<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
        f"<GetCallerIdentityResult><Arn>{arn}</Arn><UserId>{user_id}</UserId>"
        f"<Account>{account}</Account></GetCallerIdentityResult>"
        "<ResponseMetadata><RequestId>1</RequestId></ResponseMetadata>"
        "</GetCallerIdentityResponse>"
    ).encode()


def _error(code: str) -> bytes:
    return (
        '<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender'
        f"</Type><Code>{code}</Code><Message>The Canonical String for this request should have "
        "been 'x-amz-security-token:S3CR3T'</Message></Error></ErrorResponse>"
    ).encode()


def test_the_replayed_request_is_exactly_the_signed_one() -> None:
    seen: list[httpx.Request] = []

    def sts(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=_xml(f"arn:aws:iam::{ACCOUNT}:user/alice"))

    url = _presigned_url()
    verifier = _verifier(sts, connect_to={"sts.amazonaws.com": "http://127.0.0.1:9"})
    identity = verifier.verify_token(_token(url), NOW)
    (req,) = seen
    assert req.method == "GET"
    assert str(req.url) == "http://127.0.0.1:9/" + url.split("/", 3)[3]  # same raw query
    assert req.headers["host"] == "sts.amazonaws.com"
    assert req.headers["x-k8s-aws-id"] == CLUSTER
    assert "authorization" not in req.headers
    assert identity.kind == "aws" and identity.issuer == "aws"
    assert identity.token_id == credential_hash(_token(url))

    seen.clear()
    login = _vault(headers={"X-Amz-Security-Token": ["tok"], "X-Other": ["dropped"]})
    _verifier(sts).verify_signed_request(login, NOW)
    (req,) = seen
    assert (req.method, str(req.url), req.content) == ("POST", f"{STS}/", GCI_BODY.encode())
    assert req.headers["host"] == "sts.amazonaws.com"
    assert req.headers["x-amz-security-token"] == "tok" and "x-other" not in req.headers
    assert req.headers["content-length"] == str(len(GCI_BODY))


@pytest.mark.parametrize(
    ("status", "body", "code"),
    [
        (403, _error("SignatureDoesNotMatch"), "sts-rejected"),
        (403, _error("InvalidClientTokenId"), "sts-rejected"),
        (400, _error("ExpiredToken"), "sts-rejected"),
        (400, _error("Throttling"), "sts-unavailable"),
        (429, b"", "sts-unavailable"),
        (500, b"", "sts-unavailable"),
        (503, _error("ServiceUnavailable"), "sts-unavailable"),
        (302, b"", "sts-unavailable"),
        # moto routes a bare presigned GET to S3: a 200 that is not GetCallerIdentity
        (
            200,
            b'<ListAllMyBucketsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"/>',
            "sts-unavailable",
        ),
        (200, b"<!DOCTYPE x [<!ENTITY a 'b'>]>" + _xml("arn:aws:iam::1:user/a"), "sts-unavailable"),
        (200, b'{"GetCallerIdentityResponse": {}}', "sts-unavailable"),
        (200, _xml(f"arn:aws:iam::{ACCOUNT}:user/alice") * 2, "sts-unavailable"),
        (200, b"<a>" * 70_000, "sts-unavailable"),  # over the answer size limit
        (200, _xml(f"arn:aws:iam::{ACCOUNT}:user/alice", account="210987654321"), "malformed"),
    ],
)
def test_sts_answers(status: int, body: bytes, code: str) -> None:
    verifier = _verifier(lambda _req: httpx.Response(status, content=body))
    with pytest.raises(CredentialError) as info:
        verifier.verify_token(_token(_presigned_url()), NOW)
    assert info.value.code == code
    assert "S3CR3T" not in str(info.value)


def test_network_errors_fail_closed() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectTimeout("timed out", request=request)

    assert _code(lambda: _verifier(down).verify_token(_token(_presigned_url()), NOW)) == (
        "sts-unavailable"
    )


def test_parse_caller_identity() -> None:
    caller = parse_caller_identity(_xml(f"arn:aws:iam::{ACCOUNT}:user/alice", user_id="AIDA1"))
    assert (caller.arn, caller.account, caller.user_id) == (
        f"arn:aws:iam::{ACCOUNT}:user/alice",
        ACCOUNT,
        "AIDA1",
    )


# --------------------------------------------------------------------------- moto on loopback

# moto's server app behind the presigned-SigV4 shim (see the module docstring). argv[1]: port.
_SHIM = r'''
import sys
from urllib.parse import unquote

from botocore.awsrequest import AWSRequest
from moto.iam import access_control
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication, MotoRequestHandler, create_backend_app)
from werkzeug.serving import run_simple

MARK = "X-Cport-Test-Presigned"


class PresignedSigV4:
    """A presigned URL's query signature, moved into the Authorization header moto reads."""

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        pairs = [p.partition("=") for p in environ.get("QUERY_STRING", "").split("&") if p]
        params = {k: unquote(v) for k, _, v in pairs}
        if "X-Amz-Signature" in params and "HTTP_AUTHORIZATION" not in environ:
            environ["HTTP_AUTHORIZATION"] = (
                f"{params.get('X-Amz-Algorithm')} Credential={params.get('X-Amz-Credential')}, "
                f"SignedHeaders={params.get('X-Amz-SignedHeaders')}, "
                f"Signature={params['X-Amz-Signature']}")
            environ["HTTP_X_AMZ_DATE"] = params.get("X-Amz-Date", "")
            if "X-Amz-Security-Token" in params:  # moto finds the session by this header
                environ["HTTP_X_AMZ_SECURITY_TOKEN"] = params["X-Amz-Security-Token"]
            environ["HTTP_X_CPORT_TEST_PRESIGNED"] = "1"
            # The canonical query of a presigned URL is every parameter but the signature.
            query = "&".join(f"{k}={v}" for k, _, v in pairs if k != "X-Amz-Signature")
            environ["QUERY_STRING"] = query
            environ["RAW_URI"] = environ["REQUEST_URI"] = f"{environ['PATH_INFO']}?{query}"
        return self.app(environ, start_response)


_original = access_control.IAMRequestBase._create_aws_request


def _create_aws_request(self):
    if MARK not in self._headers:
        return _original(self)
    signed = self._get_string_between("SignedHeaders=", ",", self._headers["Authorization"])
    headers = self._create_headers_for_aws_request(signed.split(";"), self._headers)
    # moto: data=self._body or self._data (the parsed query for a bodiless GET), and the
    # timestamp from the signed headers only; SigV4 hashes the empty payload, and a presigned
    # URL does not sign X-Amz-Date as a header.
    request = AWSRequest(method=self._method, url=self._path, data=self._body, headers=headers)
    request.context["timestamp"] = self._headers["X-Amz-Date"]
    return request


access_control.IAMRequestBase._create_aws_request = _create_aws_request
run_simple("127.0.0.1", int(sys.argv[1]), PresignedSigV4(DomainDispatcherApplication(
    create_backend_app)), threaded=True, request_handler=MotoRequestHandler)
'''


@dataclass(frozen=True)
class Creds:
    access_key: str
    secret_key: str
    token: str | None = None

    def botocore(self) -> Any:
        from botocore.credentials import Credentials  # type: ignore[import-untyped]

        return Credentials(self.access_key, self.secret_key, self.token)

    def wrong_secret(self) -> Creds:
        # One character changed: a secret that starts with "x" already must not stay right
        # (moto's secrets are random; that was a 1-in-32 flake of the wrong-secret test).
        first = "y" if self.secret_key.startswith("x") else "x"
        return Creds(self.access_key, first + self.secret_key[1:], self.token)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class MotoServer:
    """moto's server as a subprocess on 127.0.0.1, IAM auth enforced from the first request."""

    def __init__(self, log: Path, *, shim: bool) -> None:
        pytest.importorskip("moto.server", reason="needs moto[server] (pip install 'moto[server]')")
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        argv = (
            ["-c", _SHIM, str(self.port)]
            if shim
            else ["-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        )
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.upper().endswith("_PROXY") and not k.startswith(("AWS_", "MOTO_"))
        }
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, *argv], env=env, stdout=self._log, stderr=subprocess.STDOUT
        )
        self._http = httpx.Client(transport=httpx.HTTPTransport(), timeout=5.0)
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                self.stop()
                pytest.fail(f"moto exited ({self.proc.returncode}); see {log}")
            try:
                self._http.get(f"{self.base}/moto-api/")
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(f"moto did not start in {READY_TIMEOUT} s; see {log}")
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # this process only, by its own pid
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._http.close()
        self._log.close()

    def enforce_auth(self, enforced: bool) -> None:
        """moto's own switch (what `set_initial_no_auth_action_count` uses in server mode)."""
        count = b"0" if enforced else b"inf"
        r = self._http.post(f"{self.base}/moto-api/reset-auth", content=count)
        assert r.status_code == 200, r.text

    def client(self, service: str, creds: Creds) -> Any:
        import boto3  # type: ignore[import-untyped]
        from botocore.config import Config  # type: ignore[import-untyped]

        session = boto3.session.Session(
            aws_access_key_id=creds.access_key,
            aws_secret_access_key=creds.secret_key,
            aws_session_token=creds.token,
            region_name="us-east-1",
        )
        return session.client(
            service, endpoint_url=self.base, config=Config(retries={"max_attempts": 1})
        )

    def create_user(self, name: str) -> Creds:
        iam = self.client("iam", Creds("AKIASETUPSETUPSETUP0", "setup"))
        iam.create_user(UserName=name)
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return Creds(key["AccessKeyId"], key["SecretAccessKey"])

    def verifier(self, **kw: Any) -> AwsVerifier:
        config = AwsConfig(
            sts_endpoints=(STS,),
            audience=CLUSTER,
            connect_to={"sts.amazonaws.com": self.base},
            **kw,
        )
        return AwsVerifier(config, transport=httpx.HTTPTransport())


@dataclass(frozen=True)
class Principals:
    moto: MotoServer
    alice: Creds
    role: Creds  # alice's session in ci-deploy (path /teams/)


@pytest.fixture(scope="module")
def aws_env() -> Iterator[None]:
    """boto3 with explicit keys only: no profile, config file, metadata service or proxy."""
    pytest.importorskip("boto3", reason="needs boto3")
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.upper().endswith("_PROXY") or name.startswith("AWS_"):
                mp.delenv(name)
        mp.setenv("AWS_CONFIG_FILE", os.devnull)
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        yield


@pytest.fixture(scope="module")
def aws(aws_env: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Principals]:
    moto = MotoServer(tmp_path_factory.mktemp("moto") / "moto.log", shim=True)
    try:
        moto.enforce_auth(False)
        alice = moto.create_user("alice")
        iam = moto.client("iam", alice)
        role_arn = iam.create_role(
            RoleName="ci-deploy",
            Path="/teams/",
            AssumeRolePolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Action": "sts:AssumeRole",
                            "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:user/alice"},
                        }
                    ],
                }
            ),
        )["Role"]["Arn"]
        iam.put_user_policy(
            UserName="alice",
            PolicyName="assume-ci-deploy",
            PolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": role_arn}
                    ],
                }
            ),
        )
        moto.enforce_auth(True)
        # From here on moto checks every signature; this AssumeRole is alice's, signed.
        got = moto.client("sts", alice).assume_role(
            RoleArn=role_arn, RoleSessionName="pipeline-42"
        )["Credentials"]
        role = Creds(got["AccessKeyId"], got["SecretAccessKey"], got["SessionToken"])
        yield Principals(moto, alice, role)
    finally:
        moto.stop()


def presign(
    creds: Creds, cluster: str = CLUSTER, *, base: str = f"{STS}/", region: str = "us-east-1"
) -> str:
    """An aws-iam-authenticator token, made as its `GetWithSTS` does: a presigned
    GetCallerIdentity GET, 60 s X-Amz-Expires, the x-k8s-aws-id header signed."""
    from botocore.auth import SigV4QueryAuth  # type: ignore[import-untyped]
    from botocore.awsrequest import AWSRequest  # type: ignore[import-untyped]

    request = AWSRequest(
        method="GET",
        url=f"{base}?Action=GetCallerIdentity&Version=2011-06-15",
        headers={"x-k8s-aws-id": cluster},
    )
    SigV4QueryAuth(creds.botocore(), "sts", region, expires=60).add_auth(request)
    return _token(request.url)


def vault_login(
    creds: Creds, *, body: str = GCI_BODY, headers: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Vault aws-auth login data, made as hvac / `vault login -method=aws` do."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

    request = AWSRequest(
        method="POST", url=f"{STS}/", data=body, headers={"Content-Type": FORM, **(headers or {})}
    )
    SigV4Auth(creds.botocore(), "sts", "us-east-1").add_auth(request)
    return {
        "iam_http_request_method": "POST",
        "iam_request_url": _b64(f"{STS}/"),
        "iam_request_body": _b64(body),
        "iam_request_headers": _b64(json.dumps({k: [v] for k, v in request.headers.items()})),
    }


USER_LABELS = Labels.from_strings(
    [f"aws:account={ACCOUNT}", "aws:user=alice", f"aws:arn=arn:aws:iam::{ACCOUNT}:user/alice"]
)
ROLE_LABELS = Labels.from_strings(
    [
        f"aws:account={ACCOUNT}",
        "aws:role=ci-deploy",
        f"aws:arn=arn:aws:iam::{ACCOUNT}:role/ci-deploy",
    ]
)


def test_presigned_token_of_an_iam_user(aws: Principals) -> None:
    token = presign(aws.alice)
    now = time.time()
    with aws.moto.verifier() as verifier:
        identity = verifier.verify_token(token, now)
    assert identity.subject == f"arn:aws:iam::{ACCOUNT}:user/alice"
    assert identity.labels == USER_LABELS
    assert (identity.kind, identity.issuer, identity.token_id) == (
        "aws",
        "aws",
        credential_hash(token),
    )
    signed_at = parse_authenticator_token(token, verifier.config, now).signed_at
    assert identity.expires_at == signed_at + 900 and now - 5 < signed_at <= now
    assert identity.claims["arn"] == f"arn:aws:iam::{ACCOUNT}:user/alice"


def test_presigned_token_of_an_assumed_role_made_by_boto3(aws: Principals) -> None:
    """The recipe Python EKS clients use: generate_presigned_url with a before-sign hook."""
    import boto3

    session = boto3.session.Session(
        aws_access_key_id=aws.role.access_key,
        aws_secret_access_key=aws.role.secret_key,
        aws_session_token=aws.role.token,
        region_name="us-east-1",
    )
    sts = session.client("sts", endpoint_url=STS)  # presigning only: no request is sent

    def add_cluster_id(request: Any, **_: Any) -> None:
        request.headers["x-k8s-aws-id"] = CLUSTER

    sts.meta.events.register("before-sign.sts.GetCallerIdentity", add_cluster_id)
    url = sts.generate_presigned_url(
        "get_caller_identity", Params={}, ExpiresIn=60, HttpMethod="GET"
    )
    assert "X-Amz-Security-Token=" in url and "x-k8s-aws-id" in url
    with aws.moto.verifier() as verifier:
        identity = verifier.verify_token(_token(url), time.time())
    assert identity.subject == f"arn:aws:iam::{ACCOUNT}:role/ci-deploy"  # no path, no session
    assert identity.labels == ROLE_LABELS
    assert identity.claims["arn"] == f"arn:aws:sts::{ACCOUNT}:assumed-role/ci-deploy/pipeline-42"


def test_vault_login_of_a_user_and_of_an_assumed_role(aws: Principals) -> None:
    with aws.moto.verifier() as verifier:
        user = verifier.verify_signed_request(vault_login(aws.alice), time.time())
        role = verifier.verify_signed_request(vault_login(aws.role), time.time())
    assert (user.subject, user.labels) == (f"arn:aws:iam::{ACCOUNT}:user/alice", USER_LABELS)
    assert (role.subject, role.labels) == (f"arn:aws:iam::{ACCOUNT}:role/ci-deploy", ROLE_LABELS)


def test_vault_login_with_a_signed_server_id(aws: Principals) -> None:
    login = vault_login(aws.alice, headers={"X-Vault-AWS-IAM-Server-ID": "vault.corp.example"})
    with aws.moto.verifier(vault_server_id="vault.corp.example") as verifier:
        assert verifier.verify_signed_request(login, time.time()).labels == USER_LABELS


def test_a_wrong_secret_is_rejected_by_sts(aws: Principals) -> None:
    with aws.moto.verifier() as verifier:
        for creds in (aws.alice.wrong_secret(), aws.role.wrong_secret()):
            now = time.time()
            assert _code(partial(verifier.verify_token, presign(creds), now)) == "sts-rejected"
            login = vault_login(creds)
            assert _code(partial(verifier.verify_signed_request, login, now)) == "sts-rejected"


def test_a_token_for_another_cluster_fails_the_signature(aws: Principals) -> None:
    """The URL does not carry the cluster id: the verifier sends its own in the signed header,
    and STS refuses the signature. Indistinguishable from a wrong secret, hence sts-rejected."""
    token = presign(aws.alice, cluster="another-cluster")
    with aws.moto.verifier() as verifier:
        assert _code(lambda: verifier.verify_token(token, time.time())) == "sts-rejected"


def test_a_session_token_cannot_be_dropped(aws: Principals) -> None:
    token = presign(aws.role)
    url = _untoken(token)
    stripped = "&".join(p for p in url.split("&") if not p.startswith("X-Amz-Security-Token="))
    with aws.moto.verifier() as verifier:
        assert _code(lambda: verifier.verify_token(_token(stripped), time.time())) == (
            "sts-rejected"
        )


def test_real_tokens_are_refused_locally_when_they_must_be(aws: Principals) -> None:
    """Signed with the right secret, yet refused before any call: wrong host, unsigned cluster
    id, another action, too old."""
    now = time.time()
    with AwsVerifier(AwsConfig(audience=CLUSTER), transport=httpx.MockTransport(_no_sts)) as v:
        assert (
            _code(
                lambda: v.verify_token(
                    presign(
                        aws.alice, base="https://sts.eu-west-1.amazonaws.com/", region="eu-west-1"
                    ),
                    now,
                )
            )
            == "sts-host-not-allowed"
        )
        assert _code(lambda: v.verify_token(presign(aws.alice), now + 3600)) == "expired"
        assert _code(
            lambda: v.verify_signed_request(
                vault_login(aws.alice, body="Action=GetSessionToken&Version=2011-06-15"), now
            )
        ) == ("sts-action-not-allowed")

        from botocore.auth import SigV4QueryAuth
        from botocore.awsrequest import AWSRequest

        unsigned = AWSRequest(method="GET", url=f"{STS}/?{GCI_BODY}")
        SigV4QueryAuth(aws.alice.botocore(), "sts", "us-east-1", expires=60).add_auth(unsigned)
        assert "X-Amz-SignedHeaders=host&" in unsigned.url
        assert _code(lambda: v.verify_token(_token(unsigned.url), now)) == "audience-mismatch"


def test_stock_moto_routes_presigned_get_to_s3_and_then_goes_down(
    aws_env: None, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The unpatched `python -m moto.server`: the Vault form works (routed by its credential
    scope, signature checked); a presigned GET reaches S3 whatever its Host header; and a
    stopped server is sts-unavailable."""
    moto = MotoServer(tmp_path_factory.mktemp("moto-stock") / "moto.log", shim=False)
    try:
        moto.enforce_auth(False)
        bob = moto.create_user("bob")
        token = presign(bob)
        url = _untoken(token)
        with httpx.Client(transport=httpx.HTTPTransport()) as http:
            raw = http.get(
                moto.base + "/" + url.split("/", 3)[3],
                headers={"Host": "sts.amazonaws.com", "x-k8s-aws-id": CLUSTER},
            )
        assert raw.status_code == 200 and b"<ListAllMyBucketsResult" in raw.content  # S3
        with moto.verifier() as verifier:
            assert _code(lambda: verifier.verify_token(token, time.time())) == "sts-unavailable"
            moto.enforce_auth(True)
            assert _code(lambda: verifier.verify_token(token, time.time())) == "sts-unavailable"
            login = vault_login(bob)
            identity = verifier.verify_signed_request(login, time.time())
            assert identity.labels.get("aws", "user") == "bob"
            moto.stop()
            assert _code(lambda: verifier.verify_signed_request(login, time.time())) == (
                "sts-unavailable"
            )
    finally:
        moto.stop()
