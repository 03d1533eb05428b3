"""One front for every credential form: tell them apart by shape and hand each to its
verifier. Forms: a JWT (OIDC, Kubernetes service account, JWT-SVID), an aws-iam-authenticator
token (``k8s-aws-v1.…``), a Vault-style signed STS request (JSON), a PEM X.509-SVID chain."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from cport.errors import CredentialError
from cport.identity._aws import AwsVerifier
from cport.identity._credentials import VerifiedIdentity
from cport.identity._spiffe import TrustBundle, load_pem_chain, verify_x509_svid
from cport.identity._verifier import Verifier


@dataclass
class Credentials:
    """The configured verifiers; a form with no verifier configured is `unknown-issuer`."""

    jwt: Verifier | None = None
    aws: AwsVerifier | None = None
    bundles: Mapping[str, TrustBundle] = field(default_factory=dict)

    def verify(self, credential: str, now: float) -> VerifiedIdentity:
        text = credential.strip()
        if text.startswith("k8s-aws-v1."):
            return self._aws().verify_token(text, now)
        if text.startswith("{"):
            try:
                request = json.loads(text)
            except ValueError:
                raise CredentialError("not a JSON signed request", code="malformed") from None
            if not isinstance(request, dict) or not all(
                isinstance(v, str) for v in request.values()
            ):
                raise CredentialError("a signed request is an object of strings", code="malformed")
            return self._aws().verify_signed_request(request, now)
        if text.startswith("-----BEGIN"):
            if not self.bundles:
                raise CredentialError(
                    "no SPIFFE trust bundles are configured", code="unknown-trust-domain"
                )
            return verify_x509_svid(
                load_pem_chain(text.encode()), self.bundles, dt.datetime.fromtimestamp(now, dt.UTC)
            )
        if self.jwt is None:
            raise CredentialError("no token issuers are configured", code="unknown-issuer")
        return self.jwt.verify(text, now)

    def _aws(self) -> AwsVerifier:
        if self.aws is None:
            raise CredentialError("AWS IAM is not configured (identity.aws)", code="unknown-issuer")
        return self.aws
