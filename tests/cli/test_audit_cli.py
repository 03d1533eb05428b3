"""`cport explain --record`, `cport who` and `cport audit verify|checkpoint|query|export`,
in-process against the example estate.

One module-scoped state directory holds the recorded decisions; tests that change it (a
checkpoint, tampering) work on a copy.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cport.audit import AuditFilter, Signer, SQLiteStore
from cport.cli import _token, main
from cport.identity import JWKSKeySource

from ._estate import INVENTORY, POLICIES, as_json

WEB_POD = "frontend/web-7d9f8b6c5-x2k4p"
ISS = "https://corp.okta.example/oauth2/default"
JWKS_URL = ISS + "/v1/keys"
CONFIG = f"""\
identity:
  issuers:
    - name: corp-okta
      issuer: {ISS}
      audiences: [cport]
      jwksUri: {JWKS_URL}
"""

# (source, destination, port, exit code) — recorded in this order, so seq = index + 1.
FLOWS = [
    ("payments/payments-api", "payments/ledger-db", "5432", 0),  # allowed
    ("frontend/web", "payments/ledger-db", "5432", 1),  # denied: default-deny
    ("cidr:203.0.113.7", "payments/payments-api", "8080", 1),  # denied-by-policy
    ("payments/payments-api", "payments/ledger-db", "5432", 0),  # allowed, again
    ("ci/runner", "payments/ledger-db", "5432", 1),  # denied (audited by ci-lockdown)
    ("token", "payments/ledger-db", "5432", 0),  # allowed: authenticated (alice's token)
]


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def run_caught(*args: str | Path) -> Result:
    """Like `run`, but an unhandled exception becomes the result (to tell a crash apart)."""
    return CliRunner().invoke(main, [str(a) for a in args])


def _b64(n: int) -> str:
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def token_setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, Path]]:
    """A signed OIDC token for alice in a file, and a config trusting its issuer (whose key set
    is served by a fake fetcher)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pub = key.public_key().public_numbers()
    doc = {"keys": [{"kty": "RSA", "kid": "k1", "use": "sig", "n": _b64(pub.n), "e": "AQAB"}]}

    def fetch_json(url: str, timeout: float) -> Any:
        if url != JWKS_URL:
            raise LookupError(f"404 {url}")
        return doc

    now = int(time.time())
    claims = {"iss": ISS, "aud": "cport", "sub": "alice@corp.example", "iat": now - 5,
              "exp": now + 3600, "groups": ["dba"], "jti": "tok-alice-1"}  # fmt: skip
    token = pyjwt.encode(claims, key, algorithm="RS256", headers={"kid": "k1"})
    tmp = tmp_path_factory.mktemp("token")
    (tmp / "token").write_text(token + "\n")
    (tmp / "cport.yaml").write_text(CONFIG)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_token, "JWKSKeySource", lambda: JWKSKeySource(fetch_json))
        yield token, tmp / "token", tmp / "cport.yaml"


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory, token_setup: tuple[str, Path, Path]) -> Path:
    """A state directory holding one recorded decision per FLOWS entry."""
    _, token_file, config = token_setup
    state = tmp_path_factory.mktemp("recorded") / "state"
    for name, dst, port, code in FLOWS:
        src, extra = name, []
        if name == "token":
            src, extra = f"token:{token_file}", ["-c", str(config)]
        result = run(
            "explain", "-p", POLICIES, "-i", INVENTORY, "--from", src, "--to", dst,
            "--port", port, "--record", "--state-dir", state, *extra,
        )  # fmt: skip
        assert result.exit_code == code, (src, dst, result.output)
    return state


@pytest.fixture
def state(recorded: Path, tmp_path: Path) -> Path:
    """A private copy of the recorded state directory (for tests that change it)."""
    copy = tmp_path / "state"
    shutil.copytree(recorded, copy)
    return copy


def _sql(state: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(state / "audit.db", isolation_level=None)
    try:
        return list(db.execute(sql, params))
    finally:
        db.close()


# -- explain --record ------------------------------------------------------------------------
def test_explain_record_writes_one_event_per_decision(recorded: Path) -> None:
    assert {"audit-signing.key", "audit.db"} <= {p.name for p in recorded.iterdir()}
    assert (recorded / "audit-signing.key").stat().st_mode & 0o777 == 0o600
    store = SQLiteStore(recorded / "audit.db", Signer.load_or_create(recorded))
    try:
        events = [s.event for s in store.query(AuditFilter())]
        assert store.verify().ok
    finally:
        store.close()
    assert [(e.verdict, e.reason) for e in events] == [
        ("allowed", "allowed"),
        ("denied", "default-deny"),
        ("denied", "denied-by-policy"),
        ("allowed", "allowed"),
        ("denied", "default-deny"),
        ("allowed", "authenticated"),
    ]
    assert {e.enforcer for e in events} == {"cli"}
    assert {e.kind for e in events} == {"decision"}
    first = events[0]
    assert (first.workload, first.port, first.protocol) == ("payments/ledger-db", 5432, "TCP")
    assert first.subject == "payments/payments-api"
    assert {(p.kind, p.namespace, p.name) for p in first.policies} == {
        ("PortPolicy", "payments", "payments-api"),
        ("PortPolicy", "payments", "ledger-db"),
    }
    assert events[1].subject == WEB_POD
    assert [(p.namespace, p.name) for p in events[2].policies] == [("", "block-legacy-office")]
    assert ("ci", "ci-lockdown") in [(p.namespace, p.name) for p in events[4].policies]
    alice = events[5]
    assert (alice.subject, alice.issuer, alice.credential_kind, alice.token_id) == (
        "alice@corp.example",
        "corp-okta",
        "oidc",
        "tok-alice-1",
    )


def test_explain_record_never_stores_the_token(
    recorded: Path, token_setup: tuple[str, Path, Path]
) -> None:
    token = token_setup[0]
    raw = b"".join(p.read_bytes() for p in recorded.glob("audit.db*"))
    assert b"tok-alice-1" in raw
    for piece in (token, *token.split(".")):
        assert piece.encode() not in raw


def test_explain_without_record_writes_nothing(tmp_path: Path) -> None:
    result = run(
        "explain", "-p", POLICIES, "-i", INVENTORY, "--from", "payments/payments-api",
        "--to", "payments/ledger-db", "--port", "5432", "--state-dir", tmp_path,
    )  # fmt: skip
    assert result.exit_code == 0
    assert not (tmp_path / "audit.db").exists()


# -- who -------------------------------------------------------------------------------------
def test_who_json(recorded: Path) -> None:
    result = run("who", "--state-dir", recorded, "-o", "json")
    assert result.exit_code == 0, result.output
    rows = as_json(result)
    by_subject = {(r["subject"], r["workload"], r["port"]): r for r in rows}
    assert len(rows) == len(by_subject) == 5
    api = by_subject["payments/payments-api", "payments/ledger-db", 5432]
    assert api["count"] == 2
    assert api["verdicts"] == {"allowed": 2}
    assert api["protocol"] == "TCP"
    assert api["firstSeenNs"] < api["lastSeenNs"]
    assert by_subject[WEB_POD, "payments/ledger-db", 5432]["verdicts"] == {"denied": 1}
    assert by_subject["alice@corp.example", "payments/ledger-db", 5432]["verdicts"] == {
        "allowed": 1
    }
    office = [r for r in rows if r["workload"] == "payments/payments-api"]
    assert [(r["port"], r["verdicts"]) for r in office] == [(8080, {"denied": 1})]
    # newest first: alice's decision was the last one recorded
    assert rows[0]["subject"] == "alice@corp.example"
    assert [r["lastSeenNs"] for r in rows] == sorted((r["lastSeenNs"] for r in rows), reverse=True)
    for r in rows:
        assert set(r) == {
            "peerIdentity", "subject", "workload", "port", "protocol", "count",
            "firstSeenNs", "lastSeenNs", "verdicts",
        }  # fmt: skip
        assert sum(r["verdicts"].values()) == r["count"]


def test_who_filters(recorded: Path) -> None:
    def who(*args: str) -> list[dict[str, Any]]:
        result = run("who", "--state-dir", recorded, "-o", "json", *args)
        assert result.exit_code == 0, result.output
        rows: list[dict[str, Any]] = as_json(result)
        return rows

    ledger = who("--workload", "payments/ledger-db")
    assert {r["workload"] for r in ledger} == {"payments/ledger-db"}
    assert sum(r["count"] for r in ledger) == 5
    assert sum(r["count"] for r in who("--since", "1h")) == 6
    assert sum(r["count"] for r in who("--since", "2000-01-01T00:00:00Z")) == 6
    assert who("--until", "1h") == []
    assert who("--until", "2000-01-01T00:00:00Z") == []
    assert who("--since", "2200-01-01") == []
    assert [r["port"] for r in who("--port", "8080")] == [8080]
    [denied_web] = who("--verdict", "denied", "--workload", "payments/ledger-db", "--subject",
                       WEB_POD)  # fmt: skip
    assert denied_web["count"] == 1
    [alice] = who("--subject", "alice@corp.example")
    assert alice["verdicts"] == {"allowed": 1}
    assert who("--identity", str(alice["peerIdentity"])) == [alice]
    assert [r["subject"] for r in who("--reason", "authenticated")] == ["alice@corp.example"]
    assert [r["workload"] for r in who("--policy", "block-legacy-office")] == [
        "payments/payments-api"
    ]
    assert {r["subject"] for r in who("--policy", "payments/ledger-db")} == {
        "payments/payments-api",
        "alice@corp.example",
    }
    assert who("--policy", "ledger") == []  # a name, not a prefix of ledger-db


def test_who_text(recorded: Path) -> None:
    result = run("who", "--state-dir", recorded, "--workload", "payments/ledger-db")
    assert result.exit_code == 0, result.output
    assert "payments/ledger-db:5432/TCP" in result.stdout
    assert "alice@corp.example" in result.stdout
    assert "allowed 2" in result.stdout
    empty = run("who", "--state-dir", recorded, "--until", "2000-01-01")
    assert empty.exit_code == 0
    assert "no matching events" in empty.stdout


# -- audit query -----------------------------------------------------------------------------
def test_audit_query_denied_json(recorded: Path) -> None:
    result = run("audit", "query", "--state-dir", recorded, "--verdict", "denied", "-o", "json")
    assert result.exit_code == 0, result.output
    rows = as_json(result)
    assert [r["seq"] for r in rows] == [2, 3, 5]
    assert {r["verdict"] for r in rows} == {"denied"}
    assert [r["reason"] for r in rows] == ["default-deny", "denied-by-policy", "default-deny"]
    office = rows[1]
    assert office["workload"] == "payments/payments-api" and office["port"] == 8080
    assert office["policies"] == [
        {
            "kind": "CiliumClusterwideNetworkPolicy",
            "namespace": "",
            "name": "block-legacy-office",
            "revision": office["policies"][0]["revision"],
        }
    ]
    assert isinstance(office["peer_labels"], list)


def test_audit_query_limit_and_filters(recorded: Path) -> None:
    def seqs(*args: str) -> list[int]:
        result = run("audit", "query", "--state-dir", recorded, "-o", "json", *args)
        assert result.exit_code == 0, result.output
        return [r["seq"] for r in as_json(result)]

    assert seqs() == [1, 2, 3, 4, 5, 6]
    assert seqs("--limit", "2") == [1, 2]
    assert seqs("--workload", "payments/ledger-db", "--verdict", "allowed") == [1, 4, 6]
    assert seqs("--policy", "ci-lockdown") == [5]
    assert seqs("--port", "8080") == [3]
    assert seqs("--until", "2000-01-01") == []


def test_audit_query_text(recorded: Path) -> None:
    result = run("audit", "query", "--state-dir", recorded, "--verdict", "denied")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    assert "denied-by-policy" in lines[1] and "payments/payments-api:8080/TCP" in lines[1]
    assert "block-legacy-office" in lines[1]


# -- audit export ----------------------------------------------------------------------------
def test_audit_export_jsonl(recorded: Path) -> None:
    result = run("audit", "export", "--state-dir", recorded, "--format", "jsonl")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 6
    docs = [json.loads(line) for line in lines]
    assert [d["seq"] for d in docs] == [1, 2, 3, 4, 5, 6]
    for d in docs:
        assert len(bytes.fromhex(d["hash"])) == 32
        assert {"time_ns", "verdict", "reason", "workload", "port", "policies"} <= set(d)
    assert len({d["hash"] for d in docs}) == 6
    # the hashes are the chain's
    store = SQLiteStore(recorded / "audit.db")
    try:
        assert [d["hash"] for d in docs] == [s.hash.hex() for s in store.query(AuditFilter())]
    finally:
        store.close()
    default = run("audit", "export", "--state-dir", recorded)  # jsonl is the default
    assert default.stdout == result.stdout


def test_audit_export_csv(recorded: Path) -> None:
    result = run("audit", "export", "--state-dir", recorded, "--format", "csv")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    header = result.stdout.splitlines()[0].split(",")
    assert header[:3] == ["seq", "time", "kind"]
    assert {"policies", "verdict", "workload", "port", "subject", "token_id"} <= set(header)
    assert [r["seq"] for r in rows] == ["1", "2", "3", "4", "5", "6"]
    assert rows[0]["time"].endswith("+00:00")
    assert sorted(rows[0]["policies"].split(";")) == [
        "PortPolicy/payments/ledger-db@1",
        "PortPolicy/payments/payments-api@1",
    ]
    assert rows[1]["policies"] == ""
    assert rows[2]["policies"].startswith("CiliumClusterwideNetworkPolicy//block-legacy-office@")
    assert rows[5]["token_id"] == "tok-alice-1"
    assert (rows[0]["verdict"], rows[0]["workload"], rows[0]["port"]) == (
        "allowed",
        "payments/ledger-db",
        "5432",
    )


def test_audit_export_filters_and_output_file(recorded: Path, tmp_path: Path) -> None:
    out = tmp_path / "denied.csv"
    result = run(
        "audit", "export", "--state-dir", recorded, "--format", "csv", "--verdict", "denied",
        "--output", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert "exported 3 event(s)" in result.stderr
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [r["seq"] for r in rows] == ["2", "3", "5"]
    jsonl = tmp_path / "out.jsonl"
    result = run("audit", "export", "--state-dir", recorded, "-O", jsonl, "--port", "8080")
    assert result.exit_code == 0, result.output
    [line] = jsonl.read_text().splitlines()
    assert json.loads(line)["seq"] == 3


# -- audit checkpoint ------------------------------------------------------------------------
def test_audit_checkpoint_export(state: Path) -> None:
    result = run("audit", "checkpoint", "--export", "--state-dir", state)
    assert result.exit_code == 0, result.output
    doc = as_json(result)
    assert doc["seq"] == 6
    assert len(bytes.fromhex(doc["hash"])) == 32
    assert len(bytes.fromhex(doc["signature"])) == 64
    assert doc["publicKey"].startswith("-----BEGIN PUBLIC KEY-----")
    assert doc["time"].endswith("+00:00")
    # the exported key verifies the exported signature over the chain's head
    key = serialization.load_pem_public_key(doc["publicKey"].encode())
    store = SQLiteStore(state / "audit.db")
    try:
        head = list(store.query(AuditFilter()))[-1]
        cp = store.latest_checkpoint()
    finally:
        store.close()
    assert doc["hash"] == head.hash.hex()
    assert cp is not None and cp.signature.hex() == doc["signature"]
    msg = b"cport-audit-checkpoint-v1\n%d\n%s\n%d" % (6, doc["hash"].encode(), doc["timeNs"])
    assert isinstance(key, Ed25519PublicKey)
    key.verify(bytes.fromhex(doc["signature"]), msg)
    assert (
        doc["keyId"]
        == hashlib.sha256(
            key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        ).hexdigest()[:16]
    )
    text = run("audit", "checkpoint", "--state-dir", state)
    assert text.exit_code == 0
    assert text.stdout.startswith("checkpoint at record 6: ")
    verified = as_json(run("audit", "verify", "--state-dir", state, "-o", "json"))
    assert verified["ok"] is True and verified["checkpoints"] == 1


def test_audit_checkpoint_of_an_empty_store(tmp_path: Path) -> None:
    SQLiteStore(tmp_path / "audit.db").close()
    result = run("audit", "checkpoint", "--state-dir", tmp_path, "-o", "json")
    assert result.exit_code == 1
    assert as_json(result)["error"]["code"] == "audit-empty"


# -- audit verify ----------------------------------------------------------------------------
def test_audit_verify_ok(recorded: Path) -> None:
    result = run("audit", "verify", "--state-dir", recorded)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("ok: 6 records (1..6)")
    doc = as_json(run("audit", "verify", "--state-dir", recorded, "-o", "json"))
    assert doc == {
        "ok": True,
        "records": 6,
        "checkpoints": 0,
        "firstSeq": 1,
        "lastSeq": 6,
        "problem": None,
        "seq": None,
        "detail": "",
    }


def test_audit_verify_detects_tampering(state: Path) -> None:
    assert run("audit", "verify", "--state-dir", state).exit_code == 0
    _sql(state, "UPDATE events SET verdict = 'allowed' WHERE seq = 2")  # hide a denial
    result = run("audit", "verify", "--state-dir", state, "-o", "json")
    assert result.exit_code == 1
    doc = as_json(result)
    assert (doc["ok"], doc["problem"], doc["seq"]) == (False, "altered", 2)
    assert doc["records"] == 1
    assert "verdict" in doc["detail"]
    text = run("audit", "verify", "--state-dir", state)
    assert text.exit_code == 1
    assert "altered" in text.stderr and "record 2" in text.stderr


def test_audit_verify_detects_a_missing_record(state: Path) -> None:
    _sql(state, "DELETE FROM events WHERE seq = 3")
    result = run("audit", "verify", "--state-dir", state, "-o", "json")
    assert result.exit_code == 1
    assert (as_json(result)["problem"], as_json(result)["seq"]) == ("missing", 3)


def test_audit_verify_detects_a_truncated_tail(state: Path) -> None:
    assert run("audit", "checkpoint", "--state-dir", state).exit_code == 0
    _sql(state, "DELETE FROM events WHERE seq > 4")
    result = run("audit", "verify", "--state-dir", state, "-o", "json")
    assert result.exit_code == 1
    assert (as_json(result)["problem"], as_json(result)["seq"]) == ("truncated", 6)


def _write_public_key(path: Path, key: Any) -> Path:
    path.write_bytes(
        key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


def test_audit_verify_with_public_key(state: Path, tmp_path: Path) -> None:
    other = _write_public_key(tmp_path / "other.pem", Ed25519PrivateKey.generate().public_key())
    own = tmp_path / "own.pem"
    own.write_text(Signer.load_or_create(state).public_pem())
    # no checkpoint yet: nothing for a key to disagree with
    assert run("audit", "verify", "--state-dir", state, "--public-key", other).exit_code == 0
    assert run("audit", "checkpoint", "--state-dir", state).exit_code == 0
    result = run("audit", "verify", "--state-dir", state, "--public-key", other, "-o", "json")
    assert result.exit_code == 1
    doc = as_json(result)
    assert (doc["problem"], doc["seq"]) == ("bad-checkpoint", 6)
    result = run("audit", "verify", "--state-dir", state, "--public-key", own, "-o", "json")
    assert result.exit_code == 0, result.output
    assert as_json(result)["checkpoints"] == 1


def test_audit_verify_public_key_file_must_exist(state: Path, tmp_path: Path) -> None:
    result = run("audit", "verify", "--state-dir", state, "--public-key", tmp_path / "nope.pem")
    assert result.exit_code == 2


@pytest.mark.parametrize("kind", ["garbage", "rsa"])
def test_audit_verify_rejects_an_unusable_public_key(
    state: Path, tmp_path: Path, kind: str
) -> None:
    assert run("audit", "checkpoint", "--state-dir", state).exit_code == 0
    pem = tmp_path / "key.pem"
    if kind == "garbage":
        pem.write_text("not a key\n")
    else:
        _write_public_key(pem, rsa.generate_private_key(65537, 1024).public_key())
    result = run_caught("audit", "verify", "--state-dir", state, "--public-key", pem)
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code in (1, 2)


# -- errors ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv",
    [
        ["audit", "verify"],
        ["audit", "checkpoint"],
        ["audit", "query"],
        ["audit", "export"],
        ["who"],
    ],
)
def test_a_missing_store_is_an_error(tmp_path: Path, argv: list[str]) -> None:
    state = tmp_path / "state"
    state.mkdir()
    result = (
        run(*argv, "--state-dir", state, "-o", "json")
        if argv != ["audit", "export"]
        else (run(*argv, "--state-dir", state))
    )
    assert result.exit_code == 1
    if argv != ["audit", "export"]:
        assert as_json(result)["error"]["code"] == "audit-store-unavailable"
    else:
        assert "audit-store-unavailable" in result.stderr
    assert not (state / "audit.db").exists()  # not created by asking


def test_a_missing_store_given_with_store(tmp_path: Path) -> None:
    result = run("who", "--store", tmp_path / "nope.db", "--state-dir", tmp_path, "-o", "json")
    assert result.exit_code == 1
    error = as_json(result)["error"]
    assert error["code"] == "audit-store-unavailable"
    assert "nope.db" in error["message"]


def test_a_missing_store_creates_no_key(tmp_path: Path) -> None:
    state = tmp_path / "typo"
    result = run("audit", "verify", "--state-dir", state, "-o", "json")
    assert result.exit_code == 1
    assert as_json(result)["error"]["code"] == "audit-store-unavailable"
    assert not state.exists()


def test_the_store_option_reads_another_file(recorded: Path, tmp_path: Path) -> None:
    db = tmp_path / "copy.db"
    shutil.copy(recorded / "audit.db", db)
    shutil.copy(recorded / "audit-signing.key", tmp_path / "audit-signing.key")
    result = run("audit", "verify", "--store", db, "--state-dir", tmp_path, "-o", "json")
    assert result.exit_code == 0, result.output
    assert as_json(result)["records"] == 6


def test_a_store_that_is_not_a_database(tmp_path: Path) -> None:
    (tmp_path / "audit.db").write_bytes(b"not sqlite " * 200)
    result = run("who", "--state-dir", tmp_path, "-o", "json")
    assert result.exit_code == 1
    assert as_json(result)["error"]["code"] == "audit-store-unavailable"


@pytest.mark.parametrize(
    "argv",
    [
        ["who", "--since", "yesterday"],
        ["who", "--until", "1w"],
        ["audit", "query", "--since", "-1h"],
        ["audit", "export", "--since", "2026-13-45"],
    ],
)
def test_a_bad_time_is_a_usage_error(recorded: Path, argv: list[str]) -> None:
    result = run(*argv, "--state-dir", recorded)
    assert result.exit_code == 2
    assert "30m, 1h, 7d or an ISO time" in result.stderr


@pytest.mark.parametrize("when", ["2999-01-01", "0001-01-01T00:00:00Z"])
def test_a_time_beyond_the_nanosecond_range(recorded: Path, when: str) -> None:
    result = run_caught("who", "--state-dir", recorded, "--since", when, "-o", "json")
    # An empty answer (after everything / before everything) or a usage error, never a crash.
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code in (0, 2)


def test_a_bad_verdict_is_a_usage_error(recorded: Path) -> None:
    result = run("audit", "query", "--state-dir", recorded, "--verdict", "maybe")
    assert result.exit_code == 2
