"""Labels and identities: stable numeric allocation, and verification of the credentials that
turn a peer into an identity (OIDC/JWT, Kubernetes service-account tokens, SPIFFE, AWS IAM)."""

from __future__ import annotations

from cport.identity._allocator import IdentityAllocator
from cport.identity._credentials import VerifiedIdentity, credential_hash
from cport.identity._issuer import ClaimLabel, IssuerConfig
from cport.identity._jwt import ParsedJWS, VerificationKey, parse_jws, verify_jws
from cport.identity._keys import JWKSKeySource, KeySource, StaticKeySource, keys_from_jwks
from cport.identity._labels import Label, Labels
from cport.identity._reserved import (
    CLUSTER_RESERVED,
    ENTITIES,
    HOST_ID,
    RESERVED_IDS,
    RESERVED_NAMES,
    WILDCARD_ID,
    WORLD_ID,
    reserved_labels,
)
from cport.identity._verifier import Verifier

__all__ = [
    "CLUSTER_RESERVED",
    "ENTITIES",
    "HOST_ID",
    "RESERVED_IDS",
    "RESERVED_NAMES",
    "WILDCARD_ID",
    "WORLD_ID",
    "ClaimLabel",
    "IdentityAllocator",
    "IssuerConfig",
    "JWKSKeySource",
    "KeySource",
    "Label",
    "Labels",
    "ParsedJWS",
    "StaticKeySource",
    "VerificationKey",
    "VerifiedIdentity",
    "Verifier",
    "credential_hash",
    "keys_from_jwks",
    "parse_jws",
    "reserved_labels",
    "verify_jws",
]
