"""`PolicyState`: the agent's table, loaded and reloaded atomically — incremental for policy
changes, a full recompile (with stable identities) for inventory changes, and never
half-applied."""

from __future__ import annotations

from pathlib import Path

import pytest

from cport.agent import PolicyState
from cport.engine import Flow, Verdict, decide
from cport.errors import InputErrors
from cport.identity import Labels

from .harness import ESTATE_INVENTORY, ESTATE_POLICIES

EXTRA_WORKLOAD = """\
---
apiVersion: cport.dev/v1alpha1
kind: Workload
metadata: {name: cache, namespace: shop, labels: {app: cache}}
spec:
  addresses: [198.51.100.40]
  ports: [{name: redis, port: 6379}]
"""

ALICE = Labels.from_strings(
    ["oidc:iss=https://issuer.example", "oidc:sub=alice", "oidc:groups=dba"]
)


def make_state(root: Path) -> PolicyState:
    (root / "policies").mkdir()
    (root / "inventory").mkdir()
    (root / "policies" / "shop.yaml").write_text(ESTATE_POLICIES)
    (root / "inventory" / "shop.yaml").write_text(ESTATE_INVENTORY)
    return PolicyState(
        [root / "policies"], [root / "inventory"], cluster="default", state_dir=root / "state"
    )


def allowed(state: PolicyState, peer: int, workload: str, port: int, auth: bool = True) -> bool:
    wid = state.table.workload_ids[("shop", workload)]
    return decide(state.table, Flow(peer, wid, 6, port, auth)).verdict is Verdict.ALLOWED


@pytest.fixture
def state(tmp_path: Path) -> PolicyState:
    s = make_state(tmp_path)
    s.load()
    return s


def test_initial_load(state: PolicyState) -> None:
    table = state.table
    assert table.revision >= 1
    assert set(table.workload_ids) == {("shop", "db"), ("shop", "web"), ("shop", "vault")}
    st = state.status()
    assert st["policies"] == 2 and st["workloads"] == 3 and st["errors"] == []
    # Nothing changed on disk: a reload is a no-op.
    again = state.reload()
    assert not again.changed and again.table is table and not again.errors


def test_a_bad_first_load_raises(tmp_path: Path) -> None:
    s = make_state(tmp_path)
    (tmp_path / "policies" / "shop.yaml").write_text(ESTATE_POLICIES.replace("spec:", "spc:", 1))
    with pytest.raises(InputErrors) as err:
        s.load()
    assert "shop.yaml:4" in str(err.value)


def test_policy_change_is_incremental(state: PolicyState, tmp_path: Path) -> None:
    alice, _ = state.identity_for(ALICE)
    assert not allowed(state, alice, "web", 8080)  # web-access names issuer "test" only
    compiler = state.compiler
    ids = dict(state.table.workload_ids)
    rev = state.table.revision
    pol = tmp_path / "policies" / "shop.yaml"
    pol.write_text(pol.read_text().replace("- users: {issuer: test}", "- entities: [all]"))
    result = state.reload()
    assert result.changed and not result.full and not result.errors
    assert state.compiler is compiler  # the same compiler, updated in place
    assert result.table is state.table and state.table.revision == rev + 1
    assert dict(state.table.workload_ids) == ids
    assert allowed(state, alice, "web", 8080)
    # Removing a policy is incremental too.
    pol.write_text(pol.read_text().split("---")[0])
    result = state.reload()
    assert result.changed and not result.full
    assert state.table.revision == rev + 2 and len(state.table.policies) == 1


def test_inventory_change_recompiles_with_stable_identities(
    state: PolicyState, tmp_path: Path
) -> None:
    ids = dict(state.table.workload_ids)
    alice, _ = state.identity_for(ALICE)
    rev = state.table.revision
    inv = tmp_path / "inventory" / "shop.yaml"
    inv.write_text(inv.read_text() + EXTRA_WORKLOAD)
    result = state.reload()
    assert result.changed and result.full and not result.errors
    assert state.table.revision > rev
    assert ("shop", "cache") in state.table.workload_ids
    assert {k: state.table.workload_ids[k] for k in ids} == ids
    # The token identity seen before the recompile keeps its number and its rows.
    assert state.table.identities[alice] == ALICE
    assert state.identity_for(ALICE)[0] == alice
    assert allowed(state, alice, "db", 5432) is False  # issuer is not "test"


def test_identities_persist_across_agents(tmp_path: Path) -> None:
    first = make_state(tmp_path)
    first.load()
    alice, _ = first.identity_for(ALICE)
    ids = dict(first.table.workload_ids)
    second = PolicyState(
        [tmp_path / "policies"], [tmp_path / "inventory"], state_dir=tmp_path / "state"
    )
    second.load()
    assert dict(second.table.workload_ids) == ids
    assert second.identity_for(ALICE)[0] == alice


def test_invalid_change_keeps_the_table_and_records_errors(
    state: PolicyState, tmp_path: Path
) -> None:
    table = state.table
    pol = tmp_path / "policies" / "shop.yaml"
    good = pol.read_text()
    pol.write_text(good.replace("ingress:", "ingres:", 1))
    result = state.reload()
    assert not result.changed and result.errors
    assert state.table is table
    err = result.errors[0].to_json()
    assert err["file"] == str(pol) and err["line"] == 6 and "ingres" in str(err["message"])
    assert state.status()["errors"] == [e.to_json() for e in result.errors]
    # An inventory error is rejected the same way.
    inv = tmp_path / "inventory" / "shop.yaml"
    inv.write_text(inv.read_text().replace("addresses: [198.51.100.20]", "addresses: [nowhere]"))
    assert state.reload().errors and state.table is table
    # The next good reload applies and clears the errors.
    inv.write_text(ESTATE_INVENTORY)
    pol.write_text(good.replace("[{port: 8080}]", "[{port: 8080}, {port: 8081}]"))
    result = state.reload()
    assert result.changed and not result.errors
    assert state.status()["errors"] == [] and state.table.revision > table.revision


def test_identity_for_adds_a_token_identity_once(state: PolicyState) -> None:
    rev = state.table.revision
    n_ids = len(state.table.identities)
    num, table = state.identity_for(ALICE)
    assert table is state.table and table.identities[num] == ALICE
    assert len(table.identities) == n_ids + 1 and table.revision == rev + 1
    again, table2 = state.identity_for(ALICE)
    assert again == num and table2 is table  # no new table, no new revision
    bob = Labels.from_strings(["oidc:iss=https://issuer.example", "oidc:sub=bob"])
    other, table3 = state.identity_for(bob)
    assert other != num and table3.identities[other] == bob
    assert len(table3.identities) == n_ids + 2


def test_a_digit_only_revocation_matches_a_numeric_subject_or_identity() -> None:
    """Google's subjects are digits: revoking one must not silently match nothing."""
    from cport.agent import Revocations
    from cport.identity import Labels, VerifiedIdentity

    revs = Revocations(None)
    revs.add("identity", "110169484474386276334")
    cred = VerifiedIdentity("oidc", Labels(), "110169484474386276334", "google", 2e9, "t1")
    assert revs.match(cred, 300, 1e9) is not None
    other = VerifiedIdentity("oidc", Labels(), "alice", "google", 2e9, "t2")
    assert revs.match(other, 300, 1e9) is None
    revs.add("identity", "300")
    assert revs.match(other, 300, 1e9) is not None
