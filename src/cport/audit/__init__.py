"""The audit record: who reached which port, when, under which policy, and why.

Events (schema v1) are appended to a hash-chained store (SQLite WAL embedded; PostgreSQL for
shared deployments), checkpointed with Ed25519 signatures, verified, queried and exported.
"""

from __future__ import annotations

from cport.audit._chain import GENESIS, Checkpoint, Signer, link, verify_checkpoint
from cport.audit._event import SCHEMA_VERSION, AuditEvent, PolicyRef
from cport.audit._from_engine import event_from_explanation
from cport.audit._metrics import AuditMetrics
from cport.audit._postgres import PostgresStore
from cport.audit._sqlite import SQLiteStore
from cport.audit._store import AuditFilter, Store, StoredEvent, VerifyReport, WhoRow
from cport.audit._writer import AuditWriter

__all__ = [
    "GENESIS",
    "SCHEMA_VERSION",
    "AuditEvent",
    "AuditFilter",
    "AuditMetrics",
    "AuditWriter",
    "Checkpoint",
    "PolicyRef",
    "PostgresStore",
    "SQLiteStore",
    "Signer",
    "Store",
    "StoredEvent",
    "VerifyReport",
    "WhoRow",
    "event_from_explanation",
    "link",
    "verify_checkpoint",
]
