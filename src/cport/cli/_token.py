"""`cport token verify|inspect`: check a credential the way enforcement will, or look inside one
without trusting it."""

from __future__ import annotations

import datetime as dt
import sys
import time
from pathlib import Path

import click

from cport.cli._common import (
    EXIT_FAIL,
    console,
    emit_json,
    err_console,
    escape,
    handle_errors,
    output_option,
)
from cport.config import load_config
from cport.errors import CredentialError, FlowError
from cport.identity import (
    IdentityAllocator,
    JWKSKeySource,
    VerifiedIdentity,
    Verifier,
    credential_hash,
    parse_jws,
)
from cport.identity._aws import AwsVerifier
from cport.identity._front import Credentials


def read_token(token: str | None) -> str:
    """The token from the argument, or from standard input for ``-`` or none."""
    text = sys.stdin.read() if token in (None, "-") else token
    assert text is not None
    text = text.strip()
    if text.lower() == "bearer" or text[:7].lower() == "bearer ":
        text = text[6:].strip()
    if not text:
        raise FlowError(
            "no token given (pass it as an argument or on standard input)",
            code="invalid-token-input",
        )
    return text


def verifier_from_config(config_path: str) -> Credentials:
    """Every verifier the configuration enables (JWT issuers, AWS IAM, SPIFFE bundles)."""
    cfg = load_config(config_path)
    ident = cfg.identity
    if not (ident.issuers or ident.aws or ident.spiffe_bundles):
        raise FlowError(
            f"{config_path} configures no issuers, AWS or SPIFFE (identity)", code="no-issuers"
        )
    return Credentials(
        jwt=Verifier(ident.issuers, JWKSKeySource(), cluster=cfg.cluster)
        if ident.issuers
        else None,
        aws=AwsVerifier(ident.aws) if ident.aws is not None else None,
        bundles=ident.spiffe_bundles,
    )


def verify_token_file(config_path: str, token_file: str) -> VerifiedIdentity:
    """Verify the token in `token_file` (for `explain --from token:FILE`)."""
    try:
        token = Path(token_file).read_text().strip()
    except OSError as exc:
        raise FlowError(
            f"cannot read token file {token_file}: {exc.strerror}", code="invalid-flow"
        ) from exc
    return verifier_from_config(config_path).verify(read_token(token), time.time())


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@click.group()
def token() -> None:
    """Verify or inspect credentials: OIDC/JWT, Kubernetes service-account tokens, SPIFFE SVIDs
    (JWT or a PEM certificate chain), AWS IAM (k8s-aws-v1. tokens or a signed request)."""


@token.command()
@click.argument("token_arg", metavar="[TOKEN|-]", required=False)
@click.option(
    "--config",
    "-c",
    "config_path",
    required=True,
    type=click.Path(exists=True),
    help="Agent configuration file with identity.issuers.",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Persist the numeric identity here.",
)
@output_option
@handle_errors
def verify(token_arg: str | None, config_path: str, state_dir: Path | None, output: str) -> None:
    """Verify TOKEN (or standard input) against the configured issuers.

    Prints the identity's labels, numeric identity and expiry; exit 1 with the reason code
    when the token is rejected."""
    tok = read_token(token_arg)
    verifier = verifier_from_config(config_path)
    try:
        ident = verifier.verify(tok, time.time())
    except CredentialError as exc:
        if output == "json":
            emit_json(
                {
                    "verified": False,
                    "reason": exc.code,
                    "message": exc.message,
                    "tokenSha256": credential_hash(tok),
                }
            )
        else:
            err_console.print(f"[red]rejected[/red] ({exc.code}): {escape(exc.message)}")
        raise SystemExit(EXIT_FAIL) from None
    num = IdentityAllocator(state_dir).allocate(ident.labels)
    if output == "json":
        emit_json({"verified": True, "identity": num, **ident.to_json()})
        return
    console.print(
        f"[green]verified[/green] {ident.kind} token for [bold]{escape(ident.subject)}"
        f"[/bold] from {escape(ident.issuer)}"
        + (f", acting agent {escape(ident.actor)}" if ident.actor else "")
    )
    console.print(
        f"  identity {num}; expires {_when(ident.expires_at)} "
        f"(in {int(ident.expires_at - time.time())} s); token id {ident.token_id}"
    )
    for label in ident.labels.strings():
        console.print(f"  {escape(label)}")


@token.command()
@click.argument("token_arg", metavar="[TOKEN|-]", required=False)
@output_option
@handle_errors
def inspect(token_arg: str | None, output: str) -> None:
    """Decode TOKEN without verifying anything (never trust what this prints)."""
    tok = read_token(token_arg)
    jws = parse_jws(tok, max_bytes=1024 * 1024)
    info = {
        "verified": False,
        "header": jws.header,
        "claims": jws.claims,
        "tokenSha256": credential_hash(tok),
    }
    if output == "json":
        emit_json(info)
        return
    err_console.print("[yellow]UNVERIFIED[/yellow]: decoded only; nothing here is trusted")
    console.print(f"header: {escape(str(jws.header))}")
    for key, value in jws.claims.items():
        text = str(value)
        if key in ("exp", "nbf", "iat") and isinstance(value, (int, float)):
            text += f"  ({_when(float(value))})"
        console.print(f"  {escape(key)}: {escape(text)}")
