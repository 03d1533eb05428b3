"""Credentials.verify tells credential forms apart and hands each to its verifier; the config
file's identity.aws and identity.spiffe sections build those verifiers."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cport.cli import main
from cport.config import parse_config
from cport.errors import CredentialError, InputErrors
from cport.identity._front import Credentials
from cport.identity._spiffe import TrustBundle

NOW = dt.datetime.now(dt.UTC)


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool,
    uri: str | None = None,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name = (
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer[0])]) if issuer else name
    )
    b = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(minutes=5))
        .not_valid_after(NOW + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    if uri:
        b = b.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False
        )
    return b.sign(issuer[1] if issuer else key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki() -> tuple[bytes, bytes]:
    """(root bundle PEM, leaf chain PEM) for spiffe://corp.example/ns/payments/sa/api."""
    root_key, leaf_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    root = _cert("root", root_key, None, ca=True, uri="spiffe://corp.example")
    leaf = _cert(
        "api",
        leaf_key,
        ("root", root_key),
        ca=False,
        uri="spiffe://corp.example/ns/payments/sa/api",
    )
    pem = serialization.Encoding.PEM
    return root.public_bytes(pem), leaf.public_bytes(pem)


def test_pem_chain_goes_to_spiffe(pki: tuple[bytes, bytes]) -> None:
    bundle = TrustBundle.from_pem("corp.example", pki[0])
    ident = Credentials(bundles={"corp.example": bundle}).verify(pki[1].decode(), time.time())
    assert ident.kind == "spiffe-x509"
    assert set(ident.labels.strings()) == {
        "spiffe:id=spiffe://corp.example/ns/payments/sa/api",
        "spiffe:trust-domain=corp.example",
    }


@pytest.mark.parametrize(
    ("credential", "code"),
    [
        ("k8s-aws-v1.aGVsbG8", "unknown-issuer"),  # AWS form, AWS not configured
        ('{"iam_http_request_method": "POST"}', "unknown-issuer"),
        ("{not json", "malformed"),
        ('{"a": 1}', "malformed"),
        ("-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----", "unknown-trust-domain"),
        ("eyJhbGciOiJFUzI1NiJ9.e30.c2ln", "unknown-issuer"),  # a JWT, no issuers configured
    ],
)
def test_each_form_fails_closed_when_unconfigured(credential: str, code: str) -> None:
    with pytest.raises(CredentialError) as info:
        Credentials().verify(credential, time.time())
    assert info.value.code == code


def test_config_builds_aws_and_spiffe(tmp_path: Path, pki: tuple[bytes, bytes]) -> None:
    (tmp_path / "corp.pem").write_bytes(pki[0])
    cfg = parse_config(
        """
identity:
  aws: {stsEndpoints: [https://sts.amazonaws.com], audience: prod-cluster, maxAge: 10m}
  spiffe: {trustBundles: {corp.example: corp.pem}}
""",
        str(tmp_path / "cport.yaml"),
    )
    assert cfg.identity.aws is not None and cfg.identity.aws.audience == "prod-cluster"
    assert cfg.identity.aws.max_age == 600
    assert list(cfg.identity.spiffe_bundles) == ["corp.example"]


def test_config_errors_in_aws_and_spiffe_are_located(tmp_path: Path) -> None:
    (tmp_path / "bad.pem").write_text("not a certificate")
    with pytest.raises(InputErrors) as info:
        parse_config(
            """identity:
  aws: {stsEndpoint: [https://sts.amazonaws.com]}
  spiffe: {trustBundles: {corp.example: bad.pem, other.example: missing.pem}}
""",
            str(tmp_path / "cport.yaml"),
        )
    errors = info.value.errors
    assert [(e.location.line, e.location.path) for e in errors] == [
        (2, "identity.aws.stsEndpoint"),
        (3, "identity.spiffe.trustBundles.corp.example"),
    ]
    assert errors[0].hint == "did you mean 'stsEndpoints'?"


def test_cli_verifies_an_svid_from_stdin(tmp_path: Path, pki: tuple[bytes, bytes]) -> None:
    (tmp_path / "corp.pem").write_bytes(pki[0])
    (tmp_path / "cport.yaml").write_text(
        "identity:\n  spiffe: {trustBundles: {corp.example: corp.pem}}\n"
    )
    result = CliRunner().invoke(
        main,
        ["token", "verify", "-", "-c", str(tmp_path / "cport.yaml"), "-o", "json"],
        input=pki[1].decode(),
    )
    assert result.exit_code == 0, result.output
    assert '"kind": "spiffe-x509"' in result.output
