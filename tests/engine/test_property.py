"""Property tests: the compiled table agrees with the naive reference evaluator, explain agrees
with decide, and incremental updates agree with a full compile, on random estates."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cport.engine import (
    Compiler,
    Endpoint,
    Flow,
    compile_table,
    decide,
    explain,
    resolve_endpoint,
)
from cport.engine._lookup import lookup, lookup_hit
from cport.engine._table import Table
from cport.identity import Labels
from cport.model import Inventory, Policy

from .reference import Peer, reference_decide
from .strategies import EXTERNAL_IPS, PORTS, USERS, inventories, policy_sets

FLOW_PORTS = [*PORTS, 22, 9999]
SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _ends(table: Table, inv: Inventory) -> list[tuple[str, int, Peer]]:
    """Every flow end worth trying: workloads, the host, external addresses, users."""
    out: list[tuple[str, int, Peer]] = []
    for w in inv:
        out.append(
            (w.ref, table.workload_ids[(w.namespace, w.name)], Peer(inv.identity_labels(w), w))
        )
    out.append(("entity:host", 1, Peer(Labels.parse("reserved:host"))))
    for ip in EXTERNAL_IPS:
        ep = resolve_endpoint(table, inv, f"cidr:{ip}")
        out.append((f"cidr:{ip}", ep.identity, Peer(Labels.parse("reserved:world"), ip=ip)))
    by_labels = {labels: num for num, labels in table.identities.items()}
    for labels in USERS:
        out.append((str(labels), by_labels[labels], Peer(labels)))
    return out


def _verdict(table: Table, src: int, dst: int, proto: int, port: int) -> str:
    return decide(table, Flow(src, dst, proto, port)).verdict.value


@SETTINGS
@given(inv=inventories(), pols=policy_sets(), data=st.data())
def test_decide_agrees_with_reference(
    inv: Inventory, pols: list[Policy], data: st.DataObject
) -> None:
    table = compile_table(pols, inv, extra_identities=USERS)
    ends = _ends(table, inv)
    srcs = data.draw(st.lists(st.sampled_from(ends), min_size=1, max_size=6))
    dsts = [e for e in ends if e[2].workload is not None or e[2].ip] + [ends[-1]]
    for s_name, s_id, s_peer in srcs:
        for d_name, d_id, d_peer in data.draw(
            st.lists(st.sampled_from(dsts), min_size=1, max_size=6)
        ):
            for proto in (6, 17):
                for port in data.draw(
                    st.lists(st.sampled_from(FLOW_PORTS), min_size=1, max_size=3)
                ):
                    got = _verdict(table, s_id, d_id, proto, port)
                    want = reference_decide(pols, inv, s_peer, d_peer, proto, port)
                    assert got == want, (
                        f"{s_name} -> {d_name} {port}/{proto}: table says {got}, "
                        f"reference says {want}"
                    )


@SETTINGS
@given(inv=inventories(), pols=policy_sets(), data=st.data())
def test_explain_uses_the_same_lookup(
    inv: Inventory, pols: list[Policy], data: st.DataObject
) -> None:
    table = compile_table(pols, inv, extra_identities=USERS)
    ends = _ends(table, inv)
    for _ in range(10):
        (s_name, s_id, s_peer), (d_name, d_id, d_peer) = data.draw(
            st.tuples(st.sampled_from(ends), st.sampled_from(ends))
        )
        port = data.draw(st.sampled_from(FLOW_PORTS))
        flow = Flow(s_id, d_id, 6, port)
        src = Endpoint(s_id, table.identities[s_id], s_name, s_peer.workload)
        dst = Endpoint(d_id, table.identities[d_id], d_name, d_peer.workload)
        for epp_map, who, peer in ((table.ingress, d_id, s_id), (table.egress, s_id, d_id)):
            epp = epp_map.get(who)
            if epp is not None:
                assert lookup_hit(epp, peer, 6, port).cell is lookup(epp, peer, 6, port)
        exp = explain(table, flow, src, dst)
        assert exp.decision == decide(table, flow)
        for rep in (exp.egress, exp.ingress):
            if rep.hit is not None:
                assert rep.verdict is rep.hit.cell.verdict


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inv=inventories(), pols=policy_sets(), data=st.data())
def test_incremental_update_matches_full_compile(
    inv: Inventory, pols: list[Policy], data: st.DataObject
) -> None:
    if not pols:
        return
    compiler = Compiler(inv, extra_identities=USERS)
    first = compiler.compile(pols[:-1])
    updated = compiler.update(upsert=[pols[-1]])
    assert updated.revision == first.revision + 1
    full = compile_table(pols, inv, extra_identities=USERS)
    removed_key = data.draw(st.sampled_from(pols)).key
    after_remove = compiler.update(remove=[removed_key])
    full_removed = compile_table(
        [p for p in pols if p.key != removed_key], inv, extra_identities=USERS
    )
    ends = [e[1] for e in _ends(full, inv)]

    # Identity numbers may differ between compilers; map them through the label sets.
    def same_ids(a: Table, b: Table) -> dict[int, int]:
        by_labels = {labels: num for num, labels in b.identities.items()}
        return {
            num: by_labels[labels] for num, labels in a.identities.items() if labels in by_labels
        }

    for got, want in ((updated, full), (after_remove, full_removed)):
        to_got = same_ids(want, got)
        for s in ends:
            for d in ends:
                if s not in to_got or d not in to_got:
                    continue
                for port in (80, 5432, 9999):
                    assert _verdict(got, to_got[s], to_got[d], 6, port) == _verdict(
                        want, s, d, 6, port
                    )


@SETTINGS
@given(inv=inventories(), pols=policy_sets(), data=st.data())
def test_identities_added_at_runtime_match_a_full_compile(
    inv: Inventory, pols: list[Policy], data: st.DataObject
) -> None:
    """The agent meets token identities after compiling: adding them later must give the
    same verdicts as compiling with them from the start (and the reference)."""
    compiler = Compiler(inv)
    before = compiler.compile(pols)
    some = data.draw(st.lists(st.sampled_from(USERS), min_size=1, max_size=len(USERS)))
    after, numbers = compiler.add_identities(some)
    assert after.revision == before.revision + 1
    again, same = compiler.add_identities(some)
    assert same == numbers and again.revision == after.revision
    dsts = [
        (after.workload_ids[(w.namespace, w.name)], Peer(inv.identity_labels(w), w)) for w in inv
    ]
    for labels, num in zip(some, numbers, strict=True):
        for d_id, d_peer in dsts:
            for port in FLOW_PORTS:
                got = _verdict(after, num, d_id, 6, port)
                want = reference_decide(pols, inv, Peer(labels), d_peer, 6, port)
                assert got == want, f"{labels} -> {d_peer} {port}: {got} != {want}"
