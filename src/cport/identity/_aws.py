"""AWS IAM identity: a signed ``sts:GetCallerIdentity`` request, checked here, replayed to STS.

Two forms carry such a request:

* the **aws-iam-authenticator token** (what ``aws eks get-token`` prints): ``k8s-aws-v1.`` and
  the unpadded base64url of a presigned ``GET https://sts.amazonaws.com/?Action=
  GetCallerIdentity&Version=2011-06-15&X-Amz-…`` URL whose signature also covers the
  ``x-k8s-aws-id`` header: the cluster id, which the URL does not contain;
* **Vault's aws-auth login data**: ``iam_http_request_method``, ``iam_request_url``,
  ``iam_request_body`` and ``iam_request_headers`` (the last three standard base64; the headers
  a JSON object of strings or one-string lists), a header-signed POST.

Neither can be checked here: the signature is an HMAC under the caller's secret key, which only
AWS holds. So the pure half (:func:`parse_authenticator_token`, :func:`parse_signed_request`)
refuses everything that must never reach STS or that STS would not refuse for us: another host,
another action or parameters, an unsigned cluster id, a stale or future signature. Then
:class:`AwsVerifier` sends the request as signed to the allowed endpoint, and STS's answer
(``Arn``, ``Account``, ``UserId``) is the identity (:func:`identity_from_arn` makes it labels).

Reason codes (:class:`~cport.errors.CredentialError` ``code``): ``malformed``,
``token-too-large``, ``sts-host-not-allowed``, ``sts-action-not-allowed``, ``audience-mismatch``,
``expired``, ``not-yet-valid``, ``sts-rejected`` (STS refused: wrong secret, wrong cluster id,
unknown key), ``sts-unavailable`` (network error, timeout, 5xx, throttling, or an answer that is
not a GetCallerIdentity response: fail closed).

The cluster id of an authenticator token is checked by STS, not here: the verifier sends its own
configured id in the signed ``x-k8s-aws-id`` header, so a token made for another cluster fails
the signature (``sts-rejected``). Only a token that did not sign the header at all is refused
locally (``audience-mismatch``).

A presigned URL and a Vault login are bearer credentials until they expire: nothing here logs
them or puts them in an error message, and :class:`PreparedRequest` keeps them out of its repr.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self
from urllib.parse import unquote, urlsplit

import httpx

from cport.errors import CredentialError, TokenExpired
from cport.identity._credentials import VerifiedIdentity, credential_hash
from cport.identity._labels import Label, Labels

TOKEN_PREFIX = "k8s-aws-v1."
CLUSTER_ID_HEADER = "x-k8s-aws-id"
VAULT_SERVER_ID_HEADER = "x-vault-aws-iam-server-id"
STS_ACTION = "GetCallerIdentity"
STS_VERSION = "2011-06-15"
STS_NAMESPACE = "https://sts.amazonaws.com/doc/2011-06-15/"
SIGV4_ALGORITHM = "AWS4-HMAC-SHA256"
#: aws-iam-authenticator's own limit on X-Amz-Expires; STS ignores the value below 15 minutes
#: and honours a signature for 15 minutes after X-Amz-Date (aws-sdk-go issue 2167).
MAX_PRESIGN_EXPIRES = 900
MAX_STS_RESPONSE = 64 * 1024
VAULT_FIELDS = (
    "iam_http_request_method",
    "iam_request_url",
    "iam_request_body",
    "iam_request_headers",
)

_DEFAULT_PORTS = {"https": 443, "http": 80}
_URL_CHARS = re.compile(r"[\x21-\x7e]+")
# What SDKs emit in a signed query or form body: unreserved characters and percent escapes.
# Refusing the rest ('+', ';', raw '/', …) leaves no room for STS to parse it differently.
_QUERY_CHARS = re.compile(r"[A-Za-z0-9._~%=&-]*")
_B64URL = re.compile(r"[A-Za-z0-9_-]+")
_AMZ_DATE = re.compile(r"[0-9]{8}T[0-9]{6}Z")
_ACCESS_KEY_ID = re.compile(r"[A-Z0-9]{16,128}")
_REGION = re.compile(r"[a-z0-9-]{1,32}")
_SIGNATURE = re.compile(r"[0-9a-f]{64}")
_HEADER_NAME = re.compile(r"[a-z0-9-]{1,64}")
_HEADER_VALUE = re.compile(r"[\x20-\x7e]*")
_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=([^,\s]+), ?"
    r"SignedHeaders=([a-z0-9;-]+), ?Signature=([0-9a-f]{64})"
)
_ERROR_CODE = re.compile(r"[A-Za-z0-9.]{1,64}")
_ARN = re.compile(r"arn:(aws(?:-[a-z]+)*):(iam|sts)::([0-9]{12}):(.+)")
_IAM_NAME = r"[\w+=,.@-]{1,128}"
_IAM_PATH = r"/(?:[\x21-\x7e]{0,510}/)?"
# The session name is dropped, so taken loosely (AWS: 2-64 of [\w+=,.@-]).
_ASSUMED_ROLE = re.compile(rf"assumed-role/({_IAM_NAME})/[\x21-\x7e]{{1,128}}", re.ASCII)
_ROLE = re.compile(rf"role({_IAM_PATH})({_IAM_NAME})", re.ASCII)
_USER = re.compile(rf"user({_IAM_PATH})({_IAM_NAME})", re.ASCII)
_FEDERATED_USER = re.compile(rf"federated-user/({_IAM_NAME})", re.ASCII)

_PRESIGN_PARAMS = frozenset(
    {
        "Action",
        "Version",
        "X-Amz-Algorithm",
        "X-Amz-Credential",
        "X-Amz-Date",
        "X-Amz-Expires",
        "X-Amz-SignedHeaders",
        "X-Amz-Signature",
        "X-Amz-Security-Token",
    }
)
_PRESIGN_SIGNABLE = frozenset({"host", CLUSTER_ID_HEADER})
# Connection-level headers: never replayed, even when signed.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
    }
)
# Sent with the request though not (necessarily) signed: the signature itself and the session.
_AUTH_HEADERS = frozenset({"authorization", "x-amz-security-token", "x-amz-content-sha256"})
_THROTTLED = frozenset({"Throttling", "ThrottlingException", "RequestLimitExceeded"})


def _reject(code: str, message: str) -> CredentialError:
    return CredentialError(message, code=code)


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True, slots=True)
class _Origin:
    """scheme, host and port of an STS endpoint; `host` lower-case, IPv6 without brackets."""

    scheme: str
    host: str
    port: int

    @property
    def netloc(self) -> str:
        """The Host header value SDKs sign for this origin (default port left out)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == _DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _base_url(url: str, what: str) -> _Origin:
    """Parse a configured base URL (``https://sts.eu-west-1.amazonaws.com``); ValueError if
    it is not one: http only on loopback, no userinfo, path, query or fragment."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError(f"{what} {url!r} is not a URL") from None
    scheme = parts.scheme.lower()
    host = parts.hostname
    if scheme not in _DEFAULT_PORTS or not host:
        raise ValueError(f"{what} {url!r} is not an http(s) URL with a host")
    if scheme == "http" and not _is_loopback(host):
        raise ValueError(f"{what} {url!r}: plain http is allowed only on loopback")
    if "@" in parts.netloc or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{what} {url!r} must be scheme://host[:port] only")
    return _Origin(scheme, host, port if port is not None else _DEFAULT_PORTS[scheme])


@dataclass(frozen=True)
class AwsConfig:
    """How AWS IAM credentials are verified.

    `sts_endpoints` are the only STS base URLs a signed request may name, matched exactly on
    scheme, host and port (``https://sts.amazonaws.com`` for the global endpoint; add the
    regional ones clients use, e.g. ``https://sts.eu-west-1.amazonaws.com``). `audience` is the
    cluster id aws-iam-authenticator tokens must have signed in ``x-k8s-aws-id`` (required for
    that form). `vault_server_id`, when set, must be in a signed ``X-Vault-AWS-IAM-Server-ID``
    header of Vault-form logins (Vault's ``iam_server_id_header_value``: stops a login made for
    another service being replayed here). A signature is honoured for `max_age` seconds after
    its X-Amz-Date, with `clock_skew` either way.

    `connect_to` (endpoint host → base URL) sends the bytes for that endpoint elsewhere while
    the Host header, and so the signature, stays the endpoint's: a transparent proxy or VPC
    endpoint the clients do not know about, or a loopback STS emulator in tests. The allow-list
    is always checked against the URL that was signed, never against this.
    """

    sts_endpoints: tuple[str, ...] = ("https://sts.amazonaws.com",)
    audience: str | None = None
    vault_server_id: str | None = None
    max_age: float = 900.0
    clock_skew: float = 60.0
    timeout: float = 5.0
    max_token_bytes: int = 8 * 1024
    max_request_bytes: int = 32 * 1024
    connect_to: Mapping[str, str] | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        if isinstance(self.sts_endpoints, str) or not self.sts_endpoints:
            raise ValueError("sts_endpoints must be a non-empty tuple of base URLs")
        origins = [_base_url(url, "sts endpoint") for url in self.sts_endpoints]
        for name in ("audience", "vault_server_id"):
            value = getattr(self, name)
            if value is not None and (not value or not _URL_CHARS.fullmatch(value)):
                raise ValueError(f"{name} must be a non-empty printable string")
        if not 0 < self.max_age <= 3600 or not 0 <= self.clock_skew <= 900:
            raise ValueError("max_age must be in (0, 3600] and clock_skew in [0, 900] seconds")
        if self.timeout <= 0 or self.max_token_bytes <= 0 or self.max_request_bytes <= 0:
            raise ValueError("timeout and size limits must be positive")
        hosts = {o.host for o in origins}
        for host, url in (self.connect_to or {}).items():
            if host.lower() not in hosts:
                raise ValueError(f"connect_to names {host!r}, which is not an sts endpoint")
            _base_url(url, "connect_to target")

    def _origins(self) -> tuple[_Origin, ...]:
        return tuple(_base_url(url, "sts endpoint") for url in self.sts_endpoints)


# --------------------------------------------------------------------------- pure checks


@dataclass(frozen=True, slots=True)
class PreparedRequest:
    """A signed GetCallerIdentity request that passed every local check: what goes to STS.

    It carries the signature (a replayable credential until `expires_at`): its repr leaves the
    URL, headers and body out, and it must never be logged.
    """

    form: str  # "aws-iam-authenticator" | "vault"
    method: str  # GET (presigned) | POST (Vault)
    host: str  # the Host header: the allowed endpoint the request was signed for
    signed_at: float
    expires_at: float
    url: str = field(repr=False)
    headers: tuple[tuple[str, str], ...] = field(repr=False)
    body: bytes = field(default=b"", repr=False)


def _check_url(url: str, config: AwsConfig) -> tuple[_Origin, str]:
    """The allowed endpoint `url` names, and its raw query."""
    if not _URL_CHARS.fullmatch(url) or "\\" in url:
        raise _reject("malformed", "the STS URL has spaces, control or non-ASCII characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise _reject("malformed", "the STS URL does not parse") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise _reject("sts-host-not-allowed", "the STS URL is not http(s)")
    if "@" in parts.netloc:
        raise _reject("sts-host-not-allowed", "the STS URL carries userinfo")
    if not parts.hostname:
        raise _reject("malformed", "the STS URL has no host")
    if parts.fragment:
        raise _reject("malformed", "the STS URL has a fragment")
    origin = _Origin(scheme, parts.hostname, port if port is not None else _DEFAULT_PORTS[scheme])
    if origin not in config._origins():
        raise _reject("sts-host-not-allowed", f"{origin.netloc} is not a configured STS endpoint")
    if parts.path not in ("", "/"):
        raise _reject("malformed", "STS requests go to the path /")
    return origin, parts.query


def _params(text: str, what: str) -> dict[str, str]:
    """Strictly parse a signed query string or form body: SDK encoding only, no duplicates."""
    if not _QUERY_CHARS.fullmatch(text):
        raise _reject("malformed", f"the {what} is not in the encoding SDKs sign")
    out: dict[str, str] = {}
    for pair in text.split("&") if text else ():
        key, eq, value = pair.partition("=")
        try:
            key, value = unquote(key, errors="strict"), unquote(value, errors="strict")
        except UnicodeDecodeError:
            raise _reject("malformed", f"the {what} is not UTF-8") from None
        if not eq or not key or not key.isprintable() or not value.isprintable():
            raise _reject("malformed", f"the {what} has an empty or unprintable parameter")
        if key in out:
            raise _reject("malformed", f"the {what} repeats the parameter {key!r}")
        out[key] = value
    return out


def _check_action(params: Mapping[str, str]) -> None:
    if params.get("Action") != STS_ACTION:
        raise _reject("sts-action-not-allowed", f"only sts:{STS_ACTION} is accepted")
    if params.get("Version") != STS_VERSION:
        raise _reject("sts-action-not-allowed", f"only STS API version {STS_VERSION}")


def _amz_date(value: str) -> float:
    if not _AMZ_DATE.fullmatch(value):
        raise _reject("malformed", "X-Amz-Date is not YYYYMMDDTHHMMSSZ")
    try:
        return datetime.strptime(value, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        raise _reject("malformed", "X-Amz-Date is not a date") from None


def _check_scope(credential: str, amz_date: str) -> None:
    """``AKID/YYYYMMDD/region/sts/aws4_request``, dated the day of X-Amz-Date."""
    parts = credential.split("/")
    if (
        len(parts) != 5
        or not _ACCESS_KEY_ID.fullmatch(parts[0])
        or parts[1] != amz_date[:8]
        or not _REGION.fullmatch(parts[2])
        or parts[4] != "aws4_request"
    ):
        raise _reject("malformed", "the SigV4 credential scope is not AKID/date/region/sts/…")
    if parts[3] != "sts":
        raise _reject("sts-action-not-allowed", "the request is signed for another service")


def _signed_header_names(value: str) -> list[str]:
    names = value.split(";")
    if not all(_HEADER_NAME.fullmatch(n) for n in names) or names != sorted(set(names)):
        raise _reject("malformed", "SignedHeaders is not a sorted list of header names")
    if "host" not in names:
        raise _reject("malformed", "the signature does not cover the Host header")
    return names


def _check_age(signed_at: float, config: AwsConfig, now: float) -> float:
    """The time the signature stops being honoured; raise if that is past or not yet begun."""
    if signed_at > now + config.clock_skew:
        raise _reject("not-yet-valid", f"the request is signed {int(signed_at - now)} s ahead")
    expires_at = signed_at + config.max_age
    if now > expires_at + config.clock_skew:
        raise TokenExpired(f"the signature is {int(now - signed_at)} s old, over the limit")
    return expires_at


def parse_authenticator_token(token: str, config: AwsConfig, now: float) -> PreparedRequest:
    """Check an aws-iam-authenticator token (``k8s-aws-v1.…``) without calling AWS."""
    if len(token) > config.max_token_bytes:
        raise _reject("token-too-large", f"token is {len(token)} bytes, over the limit")
    if not token.startswith(TOKEN_PREFIX):
        raise _reject("malformed", f"not an aws-iam-authenticator token ({TOKEN_PREFIX}…)")
    encoded = token[len(TOKEN_PREFIX) :]
    if not _B64URL.fullmatch(encoded) or len(encoded) % 4 == 1:
        raise _reject("malformed", "the token is not unpadded base64url")
    try:
        url = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode("ascii")
    except (binascii.Error, ValueError):
        raise _reject("malformed", "the token does not decode to a URL") from None
    origin, query = _check_url(url, config)
    params = _params(query, "presigned query")
    unknown = set(params) - _PRESIGN_PARAMS
    if unknown:
        raise _reject("malformed", f"unexpected query parameter(s) {sorted(unknown)}")
    _check_action(params)
    missing = sorted(_PRESIGN_PARAMS - {"X-Amz-Security-Token"} - set(params))
    if missing:
        raise _reject("malformed", f"not a presigned URL: missing {missing}")
    if params["X-Amz-Algorithm"] != SIGV4_ALGORITHM:
        raise _reject("malformed", f"only {SIGV4_ALGORITHM} signatures are accepted")
    if not _SIGNATURE.fullmatch(params["X-Amz-Signature"]):
        raise _reject("malformed", "X-Amz-Signature is not 64 hex digits")
    amz_date = params["X-Amz-Date"]
    signed_at = _amz_date(amz_date)
    _check_scope(params["X-Amz-Credential"], amz_date)
    names = _signed_header_names(params["X-Amz-SignedHeaders"])
    if CLUSTER_ID_HEADER not in names:
        raise _reject("audience-mismatch", f"the token does not sign {CLUSTER_ID_HEADER}")
    if not set(names) <= _PRESIGN_SIGNABLE:
        raise _reject("malformed", "the token signs headers the verifier cannot supply")
    if config.audience is None:
        raise _reject("audience-mismatch", "no cluster id is configured for these tokens")
    expires = params["X-Amz-Expires"]
    if not expires.isdigit() or not 0 < int(expires) <= MAX_PRESIGN_EXPIRES:
        raise _reject("malformed", f"X-Amz-Expires is not 1..{MAX_PRESIGN_EXPIRES} seconds")
    expires_at = _check_age(signed_at, config, now)
    return PreparedRequest(
        form="aws-iam-authenticator",
        method="GET",
        host=origin.netloc,
        signed_at=signed_at,
        expires_at=expires_at,
        url=url,
        headers=((CLUSTER_ID_HEADER, config.audience),),
    )


def _std_b64(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, ValueError):
        raise _reject("malformed", f"{what} is not base64") from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key.lower() in {k.lower() for k in out}:
            raise _reject("malformed", f"the headers name {key!r} twice")
        out[key] = value
    return out


def _vault_headers(raw: bytes) -> dict[str, tuple[str, str]]:
    """Vault's headers JSON: lower-case name → (name as sent, its single value)."""
    try:
        decoded = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except CredentialError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _reject("malformed", "iam_request_headers is not JSON") from None
    if not isinstance(decoded, dict):
        raise _reject("malformed", "iam_request_headers is not a JSON object")
    out: dict[str, tuple[str, str]] = {}
    for name, raw_value in decoded.items():
        one = raw_value[0] if isinstance(raw_value, list) and len(raw_value) == 1 else raw_value
        if not isinstance(one, str):
            raise _reject("malformed", f"header {name!r} is not one string")
        if not _HEADER_NAME.fullmatch(name.lower()) or not _HEADER_VALUE.fullmatch(one):
            raise _reject("malformed", "a header name or value has forbidden characters")
        out[name.lower()] = (name, one.strip())
    return out


def parse_signed_request(
    request: Mapping[str, str], config: AwsConfig, now: float
) -> PreparedRequest:
    """Check Vault-style login data (a header-signed GetCallerIdentity POST) without calling
    AWS. Other keys in `request` (Vault's ``role``, …) are ignored."""
    fields: list[str] = []
    for name in VAULT_FIELDS:
        value = request.get(name)
        if not isinstance(value, str):
            raise _reject("malformed", f"{name} is missing")
        fields.append(value)
    if sum(len(v) for v in fields) > config.max_request_bytes:
        raise _reject("token-too-large", "the signed request is over the size limit")
    method, url_b64, body_b64, headers_b64 = fields
    try:
        url = _std_b64(url_b64, "iam_request_url").decode("ascii")
        body = _std_b64(body_b64, "iam_request_body").decode("ascii")
    except UnicodeDecodeError:
        raise _reject("malformed", "the URL or body is not ASCII") from None
    headers = _vault_headers(_std_b64(headers_b64, "iam_request_headers"))
    origin, query = _check_url(url, config)
    if method != "POST":
        raise _reject("sts-action-not-allowed", "only a POST of GetCallerIdentity is accepted")
    if query:
        raise _reject("sts-action-not-allowed", "the URL carries parameters; only the body may")
    params = _params(body, "request body")
    _check_action(params)
    if set(params) != {"Action", "Version"}:
        raise _reject("sts-action-not-allowed", "the body carries parameters besides Action")
    if not headers.get("content-type", ("", ""))[1].startswith("application/x-www-form-urlencoded"):
        raise _reject("malformed", "the body is not sent as a form")
    match = _AUTHORIZATION.fullmatch(headers.get("authorization", ("", ""))[1])
    if match is None:
        raise _reject("malformed", f"no {SIGV4_ALGORITHM} Authorization header")
    credential, signed, _signature = match.groups()
    names = _signed_header_names(signed)
    amz_date = headers.get("x-amz-date", ("", ""))[1]
    if "x-amz-date" not in names:
        raise _reject("malformed", "the signature does not cover X-Amz-Date")
    signed_at = _amz_date(amz_date)
    _check_scope(credential, amz_date)
    if "host" in headers and headers["host"][1].lower() != origin.netloc:
        raise _reject("sts-host-not-allowed", "the Host header is not the URL's host")
    for name in names:
        if name in _HOP_BY_HOP:
            raise _reject("malformed", f"the signature covers the connection header {name}")
        if name != "host" and name not in headers:
            raise _reject("malformed", f"the signed header {name} is not in the request")
    if "content-length" in names and headers["content-length"][1] != str(len(body)):
        raise _reject("malformed", "Content-Length is not the body's length")
    accept = headers.get("accept", ("", "*/*"))[1]
    if "accept" in names and "xml" not in accept and "*/*" not in accept:
        raise _reject("malformed", "the request asks STS for a non-XML answer")
    if config.vault_server_id is not None:
        server_id = headers.get(VAULT_SERVER_ID_HEADER)
        if server_id is None or VAULT_SERVER_ID_HEADER not in names:
            raise _reject("audience-mismatch", "the request does not sign the Vault server id")
        if server_id[1] != config.vault_server_id:
            raise _reject("audience-mismatch", "the request is for another server id")
    expires_at = _check_age(signed_at, config, now)
    forward = tuple(
        (name, value)
        for lower, (name, value) in headers.items()
        if (lower in names and lower not in ("host", "content-length")) or lower in _AUTH_HEADERS
    )
    return PreparedRequest(
        form="vault",
        method="POST",
        host=origin.netloc,
        signed_at=signed_at,
        expires_at=expires_at,
        url=url,
        headers=forward,
        body=body.encode("ascii"),
    )


@dataclass(frozen=True, slots=True)
class CallerIdentity:
    """STS's GetCallerIdentity answer."""

    arn: str
    account: str
    user_id: str


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def parse_caller_identity(body: bytes) -> CallerIdentity:
    """Parse a GetCallerIdentity XML response; anything else is ``sts-unavailable``."""
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        raise _reject("sts-unavailable", "the STS answer declares a DTD")
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        raise _reject("sts-unavailable", "the STS answer is not XML") from None
    ns = f"{{{STS_NAMESPACE}}}"
    results = root.findall(f"{ns}GetCallerIdentityResult")
    if root.tag != f"{ns}GetCallerIdentityResponse" or len(results) != 1:
        raise _reject("sts-unavailable", "the STS answer is not a GetCallerIdentity response")
    values: dict[str, str] = {}
    for name in ("Arn", "Account", "UserId"):
        found = results[0].findall(f"{ns}{name}")
        text = found[0].text if len(found) == 1 else None
        if not text or not text.strip().isprintable():
            raise _reject("sts-unavailable", f"the STS answer has no single {name}")
        values[name] = text.strip()
    return CallerIdentity(values["Arn"], values["Account"], values["UserId"])


def _error_code(body: bytes) -> str:
    """The ``<Code>`` of an STS error answer, if it has a plain one (never its Message, which
    may quote the canonical request)."""
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        return "unknown"
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return "unknown"
    for element in root.iter():
        if _local(element.tag) == "Code" and element.text:
            code = element.text.strip()
            return code if _ERROR_CODE.fullmatch(code) else "unknown"
    return "unknown"


def identity_from_arn(arn: str, account: str) -> tuple[str, Labels]:
    """The subject (a normalised ARN) and labels of a caller ARN from STS.

    ``arn:aws:sts::123456789012:assumed-role/ci-deploy/session`` is the role
    ``arn:aws:iam::123456789012:role/ci-deploy`` (the session name is dropped: it changes per
    session, and labels are a security identity). An assumed-role ARN does not carry the role's
    path, so neither does its normalised ARN; an IAM role or user ARN keeps its path, and
    ``aws:role`` / ``aws:user`` are the bare names. Labels: ``aws:account``, ``aws:arn``, and
    ``aws:role``, ``aws:user`` or ``aws:federated-user``.
    """
    match = _ARN.fullmatch(arn)
    if match is None or len(arn) > 2048:
        raise _reject("malformed", "STS returned an ARN that is not an IAM principal")
    partition, service, arn_account, resource = match.groups()
    if arn_account != account:
        raise _reject("malformed", "STS returned an ARN of another account")
    labels = [Label("aws", "account", account)]
    if service == "sts" and (m := _ASSUMED_ROLE.fullmatch(resource)):
        subject = f"arn:{partition}:iam::{account}:role/{m[1]}"
        labels.append(Label("aws", "role", m[1]))
    elif service == "iam" and (m := _ROLE.fullmatch(resource)):
        subject = arn
        labels.append(Label("aws", "role", m[2]))
    elif service == "iam" and (m := _USER.fullmatch(resource)):
        subject = arn
        labels.append(Label("aws", "user", m[2]))
    elif service == "sts" and (m := _FEDERATED_USER.fullmatch(resource)):
        subject = arn
        labels.append(Label("aws", "federated-user", m[1]))
    elif service == "iam" and resource == "root":
        subject = arn
    else:
        raise _reject("malformed", "STS returned an ARN of an unsupported principal type")
    labels.append(Label("aws", "arn", subject))
    return subject, Labels(labels)


# --------------------------------------------------------------------------- the STS call


class AwsVerifier:
    """Verify AWS IAM credentials by replaying their signed GetCallerIdentity to STS.

    Fails closed: any network error, timeout, 5xx, throttling or unexpected answer is
    ``sts-unavailable``. One HTTP client (connection pool) per verifier; :meth:`close` it.
    `transport` replaces httpx's network transport (tests; custom TLS).
    """

    def __init__(self, config: AwsConfig, *, transport: httpx.BaseTransport | None = None) -> None:
        self.config = config
        self._connect_to = {k.lower(): v.rstrip("/") for k, v in (config.connect_to or {}).items()}
        self._client = httpx.Client(
            transport=transport,
            timeout=config.timeout,
            follow_redirects=False,
            headers={"User-Agent": "cport-aws-verifier", "Accept-Encoding": "identity"},
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def verify_token(self, token: str, now: float) -> VerifiedIdentity:
        """Verify an aws-iam-authenticator token (``k8s-aws-v1.…``)."""
        prepared = parse_authenticator_token(token, self.config, now)
        return self._identity(prepared, self.call_sts(prepared), credential_hash(token))

    def verify_signed_request(self, request: Mapping[str, str], now: float) -> VerifiedIdentity:
        """Verify Vault-style login data (the four ``iam_*`` fields)."""
        prepared = parse_signed_request(request, self.config, now)
        canonical = json.dumps({k: request[k] for k in VAULT_FIELDS}, sort_keys=True)
        return self._identity(prepared, self.call_sts(prepared), credential_hash(canonical))

    def _target(self, prepared: PreparedRequest) -> str:
        parts = urlsplit(prepared.url)
        base = self._connect_to.get((parts.hostname or "").lower())
        if base is None:
            base = f"{parts.scheme.lower()}://{prepared.host}"
        return f"{base}/?{parts.query}" if parts.query else f"{base}/"

    def call_sts(self, prepared: PreparedRequest) -> CallerIdentity:
        """Send `prepared` to STS as signed and return the caller it names."""
        headers = [("Host", prepared.host), *prepared.headers]
        deadline = time.monotonic() + self.config.timeout
        body = bytearray()
        try:
            request = self._client.build_request(
                prepared.method, self._target(prepared), headers=headers, content=prepared.body
            )
            response = self._client.send(request, stream=True)
            try:
                status = response.status_code
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > MAX_STS_RESPONSE:
                        raise _reject("sts-unavailable", "the STS answer is too large")
                    if time.monotonic() > deadline:
                        raise _reject("sts-unavailable", "STS answered too slowly")
            finally:
                response.close()
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise _reject("sts-unavailable", f"STS is unreachable ({type(exc).__name__})") from None
        if 200 <= status < 300:
            return parse_caller_identity(bytes(body))
        code = _error_code(bytes(body))
        if status == 429 or status >= 500 or code in _THROTTLED or not 400 <= status < 500:
            raise _reject("sts-unavailable", f"STS answered {status} ({code})")
        raise _reject("sts-rejected", f"STS refused the signed request: {status} {code}")

    def _identity(
        self, prepared: PreparedRequest, caller: CallerIdentity, token_id: str
    ) -> VerifiedIdentity:
        subject, labels = identity_from_arn(caller.arn, caller.account)
        return VerifiedIdentity(
            kind="aws",
            labels=labels,
            subject=subject,
            issuer="aws",
            expires_at=prepared.expires_at,
            token_id=token_id,
            claims={
                "arn": caller.arn,
                "account": caller.account,
                "userId": caller.user_id,
                "form": prepared.form,
                "signedAt": prepared.signed_at,
            },
        )
