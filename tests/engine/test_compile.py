"""Compiler behaviour beyond verdicts: revisions, sharing, incremental reuse, identities."""

from __future__ import annotations

from pathlib import Path

from cport.engine import Compiler, Flow, Reason, Verdict, compile_table, decide
from cport.identity import IdentityAllocator
from cport.model import load, load_text

ROOT = Path(__file__).resolve().parents[2]
ESTATE = ROOT / "examples" / "estate"

INVENTORY = """
apiVersion: cport.dev/v1alpha1
kind: Workload
metadata: {name: db, namespace: shop, labels: {app: db}}
spec: {addresses: [198.51.100.2], ports: [{name: pg, port: 5432}]}
---
apiVersion: cport.dev/v1alpha1
kind: Workload
metadata: {name: db2, namespace: shop, labels: {app: db}}
spec: {addresses: [198.51.100.3], ports: [{name: pg, port: 5433}]}
---
apiVersion: cport.dev/v1alpha1
kind: Workload
metadata: {name: api, namespace: shop, labels: {app: api}}
spec: {addresses: [198.51.100.4]}
---
apiVersion: cport.dev/v1alpha1
kind: Workload
metadata: {name: web, namespace: shop, labels: {app: web}}
spec: {addresses: [198.51.100.5]}
"""


def _policy(name: str, app: str, port: str) -> str:
    return f"""
apiVersion: cport.dev/v1alpha1
kind: PortPolicy
metadata: {{name: {name}, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: {app}}}}}
  ingress:
    - from: [{{workloads: {{matchLabels: {{app: api}}}}}}]
      ports: [{{port: {port}}}]
"""


def test_named_port_resolves_per_workload_identity() -> None:
    # db and db2 share labels, hence one identity; the named port resolves against both.
    b = load_text(INVENTORY + "---" + _policy("db", "db", "pg"))
    t = compile_table(b.policies, b.inventory)
    db, db2, api = (t.workload_ids[("shop", n)] for n in ("db", "db2", "api"))
    assert db == db2
    assert decide(t, Flow(api, db, 6, 5432)).verdict is Verdict.ALLOWED
    assert decide(t, Flow(api, db, 6, 5433)).verdict is Verdict.ALLOWED
    assert decide(t, Flow(api, db, 6, 5434)).reason is Reason.DEFAULT_DENY


def test_update_reuses_untouched_endpoint_policies() -> None:
    b = load_text(
        INVENTORY + "---" + _policy("db", "db", "5432") + "---" + _policy("web", "web", "80")
    )
    compiler = Compiler(b.inventory)
    t1 = compiler.compile(b.policies)
    db, web, api = (t1.workload_ids[("shop", n)] for n in ("db", "web", "api"))
    changed = load_text(INVENTORY + "---" + _policy("db", "db", "5433")).policies[0]
    t2 = compiler.update(upsert=[changed])
    assert t2.revision == t1.revision + 1
    assert t2.ingress[web] is t1.ingress[web]  # untouched: the same object
    assert t2.ingress[db] is not t1.ingress[db]
    assert decide(t2, Flow(api, db, 6, 5433)).verdict is Verdict.ALLOWED
    assert decide(t2, Flow(api, db, 6, 5432)).verdict is Verdict.DENIED
    assert decide(t1, Flow(api, db, 6, 5432)).verdict is Verdict.ALLOWED  # t1 is a snapshot
    # The changed policy carries the new revision; the other keeps its own.
    revs = {str(k): info.revision for k, info in t2.policies.items()}
    assert revs == {"PortPolicy/shop/db": 2, "PortPolicy/shop/web": 1}
    t3 = compiler.update(remove=[changed.key])
    assert db not in t3.ingress
    assert decide(t3, Flow(api, db, 6, 1)).reason is Reason.NOT_SELECTED


def test_endpoints_with_the_same_rules_share_one_endpoint_policy() -> None:
    b = load(ESTATE.iterdir())
    t = compile_table(b.policies, b.inventory)
    ids = [t.workload_ids[("payments", n)] for n in ("ledger-db", "ledger-replica")]
    assert ids[0] != ids[1]
    assert t.ingress[ids[0]] is t.ingress[ids[1]]
    assert t.rows < t.rows_expanded()


def test_identities_persist_across_restarts(tmp_path: Path) -> None:
    b = load(ESTATE.iterdir())
    first = compile_table(b.policies, b.inventory, IdentityAllocator(tmp_path))
    # A new process: the inventory order changes, the numbers must not.
    b2 = load(ESTATE.iterdir())
    b2.inventory.workloads.reverse()
    second = compile_table(b2.policies, b2.inventory, IdentityAllocator(tmp_path))
    assert first.workload_ids == second.workload_ids
    assert (tmp_path / "identities.json").exists()


def test_new_cidr_in_update_keeps_revisions() -> None:
    b = load_text(INVENTORY + "---" + _policy("db", "db", "5432"))
    compiler = Compiler(b.inventory)
    t1 = compiler.compile(b.policies)
    cidr = load_text("""
apiVersion: cport.dev/v1alpha1
kind: PortPolicy
metadata: {name: ext, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  ingress: [{from: [{cidr: [203.0.113.0/24]}], ports: [{port: 443}]}]
""").policies[0]
    t2 = compiler.update(upsert=[cidr])
    assert t2.revision == t1.revision + 1
    assert {str(k): i.revision for k, i in t2.policies.items()} == {
        "PortPolicy/shop/db": 1,
        "PortPolicy/shop/ext": 2,
    }


def test_authenticated_flows_pass_auth_required_rows() -> None:
    b = load_text(
        INVENTORY
        + """---
apiVersion: cport.dev/v1alpha1
kind: PortPolicy
metadata: {name: db, namespace: shop}
spec:
  selector: {matchLabels: {app: db}}
  ingress:
    - from: [{workloads: {matchLabels: {app: api}}}]
      ports: [{port: 5432}]
      authentication: required
"""
    )
    t = compile_table(b.policies, b.inventory)
    api, db, web = (t.workload_ids[("shop", n)] for n in ("api", "db", "web"))
    assert decide(t, Flow(api, db, 6, 5432)).verdict is Verdict.AUTH_REQUIRED
    admitted = decide(t, Flow(api, db, 6, 5432, authenticated=True))
    assert (admitted.verdict, admitted.reason) == (Verdict.ALLOWED, Reason.AUTHENTICATED)
    # A credential never opens what policy does not allow.
    assert decide(t, Flow(web, db, 6, 5432, authenticated=True)).verdict is Verdict.DENIED
    assert decide(t, Flow(api, db, 6, 5433, authenticated=True)).verdict is Verdict.DENIED
