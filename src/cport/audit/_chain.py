"""Tamper evidence: a hash chain over events and Ed25519-signed checkpoints of its head.

``hash_n = SHA-256(hash_{n-1} || body_n)`` with ``hash_0`` = 32 zero bytes (or, after pruning,
the hash of the last pruned record, kept with a signed checkpoint). A plain chain cannot show
a truncated tail; a signed checkpoint of (seq, hash, time) can: verification fails if the
store ends before the latest checkpoint or disagrees with it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cport.errors import AuditError

GENESIS = bytes(32)


def link(prev: bytes, body: bytes) -> bytes:
    return hashlib.sha256(prev + body).digest()


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed statement: the chain had `hash` at record `seq`, at `time_ns`."""

    seq: int
    hash: bytes
    time_ns: int
    key_id: str
    signature: bytes

    def message(self) -> bytes:
        return checkpoint_message(self.seq, self.hash, self.time_ns)

    def to_json(self) -> dict[str, object]:
        return {
            "seq": self.seq,
            "hash": self.hash.hex(),
            "timeNs": self.time_ns,
            "keyId": self.key_id,
            "signature": self.signature.hex(),
        }


def checkpoint_message(seq: int, head: bytes, time_ns: int) -> bytes:
    return b"cport-audit-checkpoint-v1\n%d\n%s\n%d" % (seq, head.hex().encode(), time_ns)


class Signer:
    """The Ed25519 key that signs checkpoints, kept in the state directory (mode 0600)."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.public_key = key.public_key()
        self.key_id = hashlib.sha256(raw).hexdigest()[:16]

    @classmethod
    def load(cls, state_dir: Path) -> Signer | None:
        """The existing key, or None: read-only commands never create one."""
        if not (state_dir / "audit-signing.key").exists():
            return None
        return cls.load_or_create(state_dir)

    @classmethod
    def load_or_create(cls, state_dir: Path) -> Signer:
        path = state_dir / "audit-signing.key"
        try:
            if path.exists():
                key = serialization.load_pem_private_key(path.read_bytes(), None)
                if not isinstance(key, Ed25519PrivateKey):
                    raise AuditError(f"{path} is not an Ed25519 key", code="audit-key-invalid")
                return cls(key)
            state_dir.mkdir(parents=True, exist_ok=True)
            key = Ed25519PrivateKey.generate()
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(pem)
            return cls(key)
        except (OSError, ValueError) as exc:
            raise AuditError(
                f"cannot use audit signing key {path}: {exc}", code="audit-key-invalid"
            ) from exc

    def sign(self, seq: int, head: bytes, time_ns: int) -> Checkpoint:
        return Checkpoint(
            seq, head, time_ns, self.key_id, self._key.sign(checkpoint_message(seq, head, time_ns))
        )

    def public_pem(self) -> str:
        return self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()


def verify_checkpoint(cp: Checkpoint, public_key: Ed25519PublicKey) -> bool:
    try:
        public_key.verify(cp.signature, cp.message())
    except InvalidSignature:
        return False
    return True
