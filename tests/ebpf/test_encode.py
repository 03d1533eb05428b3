"""Table → map entries, without a kernel: range → prefix splitting, and a Python model of the
programs' lookups over the encoded entries agreeing with `decide` on random estates."""

from __future__ import annotations

import itertools
import socket
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cport.ebpf import Encoder, Generation, port_blocks
from cport.ebpf import _layout as L
from cport.ebpf._datapath import resolve_address
from cport.ebpf._encode import (
    CellInfo,
    Numbering,
    _hash32,
    address_bytes,
    block_range,
    cookie_value,
    decode_cookie,
    decode_policy,
)
from cport.ebpf._events import combined_reason
from cport.engine import Compiler, Flow, compile_table, decide, resolve_endpoint
from cport.model import Inventory, Policy
from tests.engine.strategies import EXTERNAL_IPS, PORTS, inventories, policy_sets

SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FLOW_PORTS = [*PORTS, 22, 9999]
CODES = {
    "allowed": L.V_ALLOWED,
    "audit": L.V_AUDIT,
    "auth-required": L.V_AUTH,
    "denied": L.V_DENIED,
}


# -- range → prefix blocks ---------------------------------------------------------------
def test_port_blocks_examples() -> None:
    assert port_blocks(0, 65535) == [(0, 0)]
    assert port_blocks(5432, 5432) == [(5432, 16)]
    assert port_blocks(8000, 8010) == [(8000, 13), (8008, 15), (8010, 16)]
    assert port_blocks(1, 65534)[0] == (1, 16) and len(port_blocks(1, 65534)) == 30
    assert port_blocks(1024, 2047) == [(1024, 6)]


@given(st.integers(0, 65535), st.integers(0, 65535))
def test_port_blocks_cover_the_range_exactly(a: int, b: int) -> None:
    lo, hi = min(a, b), max(a, b)
    blocks = port_blocks(lo, hi)
    covered = []
    for base, bits in blocks:
        size = 1 << (16 - bits)
        assert base % size == 0, "a block is aligned to its size"
        first, last = block_range(base, bits)
        covered.append((first, last))
    assert covered[0][0] == lo and covered[-1][1] == hi
    for (_, end), (start, _) in itertools.pairwise(covered):
        assert start == end + 1, "blocks are adjacent and disjoint"
    assert len(blocks) <= 30
    # minimal: no two neighbouring blocks could merge into one aligned block
    for (b1, n1), (b2, n2) in itertools.pairwise(blocks):
        if n1 == n2 and n1 > 0:
            size = 1 << (16 - n1)
            assert b1 % (2 * size) != 0 or b2 != b1 + size


# -- a model of the kernel's lookups over the encoded entries ----------------------------
def probe(
    rows: dict[bytes, bytes], pid: int, peer: int, egress: int, proto: int, port: int
) -> bytes:
    for bits in range(16, -1, -1):
        base = port & (0xFFFF << (16 - bits)) & 0xFFFF
        hit = rows.get(L.POLICY_KEY.pack(80 + bits, pid, peer, egress, proto, socket.htons(base)))
        if hit is not None:
            return hit
    return rows[L.POLICY_KEY.pack(32, pid, 0, 0, 0, 0)]


def policy_verdict(
    gen: Generation, pid: int, peer: int, egress: int, proto: int, port: int
) -> tuple[int, int]:
    rows = gen.policies[pid].rows
    v = L.POLICY_VALUE.unpack(probe(rows, pid, peer, egress, proto, port))
    if v[1] & L.PV_DEFAULT and v[1] & L.PV_HAS_WILDCARD:
        w = L.POLICY_VALUE.unpack(probe(rows, pid, 0, egress, proto, port))
        if not w[1] & L.PV_DEFAULT:
            v = w
    return v[0], v[4]


def kernel_model(
    gen: Generation, src: int, dst: int, proto: int, port: int, granted: bool
) -> tuple[int, int | None, int | None]:
    """(verdict, ingress cookie, egress cookie) as the programs compute them."""

    def policies(ident: int) -> tuple[int, int]:
        raw = gen.endpoints.get(L.ENDPOINT_KEY.pack(ident))
        return L.ENDPOINT_VALUE.unpack(raw) if raw else (0, 0)

    in_pid = policies(dst)[0]
    eg_pid = policies(src)[1]
    iv = ev = L.V_ALLOWED
    ic = ec = None
    if in_pid:
        iv, ic = policy_verdict(gen, in_pid, src, 0, proto, port)
    if eg_pid:
        ev, ec = policy_verdict(gen, eg_pid, dst, 1, proto, port)
    verdict = max(iv, ev)
    if verdict == L.V_AUTH and granted:
        verdict = L.V_AUDIT if L.V_AUDIT in (iv, ev) else L.V_ALLOWED
    return verdict, ic, ec


def addresses(inv: Inventory) -> list[str]:
    return [a for w in inv for a in w.addresses] + EXTERNAL_IPS


@SETTINGS
@given(inv=inventories(), pols=policy_sets(), data=st.data())
def test_encoded_entries_decide_as_decide(
    inv: Inventory, pols: list[Policy], data: st.DataObject
) -> None:
    table = compile_table(pols, inv)
    enc = Encoder()
    gen = enc.encode(table)
    ends = addresses(inv)
    for address in ends:  # the ipcache resolves addresses as `resolve_endpoint` does
        want = resolve_endpoint(table, inv, address).identity
        assert resolve_address(gen, address_bytes(address)) == want
    for _ in range(20):
        src = data.draw(st.sampled_from(ends))
        dst = data.draw(st.sampled_from([a for w in inv for a in w.addresses]))
        proto = data.draw(st.sampled_from([6, 17, 132, 1]))
        port = data.draw(st.sampled_from(FLOW_PORTS)) if proto != 1 else 0
        granted = data.draw(st.booleans())
        s = resolve_endpoint(table, inv, src).identity
        d = resolve_endpoint(table, inv, dst).identity
        want = decide(table, Flow(s, d, proto, port, authenticated=granted))
        verdict, ic, ec = kernel_model(gen, s, d, proto, port, granted)
        assert verdict == CODES[want.verdict.value], (src, dst, proto, port, granted)
        cookies = enc.numbering.cookies
        ing = cookies[ic] if ic is not None else None
        eg = cookies[ec] if ec is not None else None
        authenticated = (
            granted and CODES[decide(table, Flow(s, d, proto, port)).verdict.value] == L.V_AUTH
        )
        name = L.VERDICT_NAMES[verdict]
        assert combined_reason(name, ing, eg, authenticated) == want.reason.value


# -- numbering and incremental encoding ---------------------------------------------------
@SETTINGS
@given(inv=inventories(), pols=policy_sets())
def test_encoding_is_deterministic_across_processes(inv: Inventory, pols: list[Policy]) -> None:
    table = compile_table(pols, inv)
    a, b = Encoder().encode(table), Encoder().encode(table)
    assert a.ipcache == b.ipcache and a.endpoints == b.endpoints
    assert {p: r.rows for p, r in a.policies.items()} == {p: r.rows for p, r in b.policies.items()}


def test_unchanged_endpoint_policies_are_reused(tmp_path: Path) -> None:
    from cport.model import load
    from tests.ebpf.conftest import workload
    from tests.ebpf.test_enforce import DB_POLICY

    path = tmp_path / "estate.yaml"
    docs = [workload("api", "192.0.2.10"), workload("db", "198.51.100.20"), DB_POLICY]
    other = DB_POLICY.replace("name: db,", "name: db2,").replace("app: db}", "app: api}")
    path.write_text("\n---\n".join([*docs, other]))
    bundle = load([str(path)])
    compiler = Compiler(bundle.inventory)
    t1 = compiler.compile(bundle.policies)
    enc = Encoder()
    g1 = enc.encode(t1)
    changed = next(p for p in bundle.policies if p.name == "db2")
    t2 = compiler.update(upsert=[changed])
    g2 = enc.encode(t2)
    assert g1.policies.keys() == g2.policies.keys(), "policy ids are stable"
    same = [pid for pid in g1.policies if g1.policies[pid].source is g2.policies[pid].source]
    assert len(same) == len(g1.policies) - 1, "only the changed policy is re-encoded"


def test_cookie_round_trip_and_collisions() -> None:
    info = CellInfo(
        "denied", "denied-by-policy", "denied/denied-by-policy: X/y#0 ingressDeny[0] enforce"
    )
    back = decode_cookie(cookie_value(info))
    assert (back.verdict, back.reason, back.text) == (info.verdict, info.reason, info.text)
    numbering = Numbering()
    c1 = numbering.cookie(info)
    assert numbering.cookie(info) == c1 and c1 != 0
    # texts alike in their first 252 bytes (what the cookies map stores) stay apart
    long_a = CellInfo("allowed", "allowed", "allowed/allowed: " + "P/n/x#0 ingress[0]; " * 20 + "a")
    long_b = CellInfo("allowed", "allowed", long_a.text[:-1] + "b")
    assert numbering.cookie(long_a) != numbering.cookie(long_b)
    # a hash collision probes to a free number
    taken = Numbering()
    taken.cookies[_hash32(info.text) or 1] = long_a
    assert taken.cookie(info) == (_hash32(info.text) or 1) + 1
    # seeding keeps an earlier process's number, even for a text the kernel truncated
    fresh = Numbering()
    fresh.seed_cookie(12345, decode_cookie(cookie_value(long_a)))
    assert fresh.cookie(long_a) == 12345
    assert fresh.cookie(long_b) != 12345


def test_decode_policy_entry() -> None:
    key = L.POLICY_KEY.pack(80 + 13, 7, 256, 0, 6, socket.htons(8000))
    entry = decode_policy(key, L.POLICY_VALUE.pack(L.V_AUTH, 0, 13, 0, 99))
    assert (entry.peer, entry.protocol, entry.ports, entry.verdict) == (
        256,
        6,
        "8000-8007",
        "auth-required",
    )
    default = decode_policy(
        L.POLICY_KEY.pack(32, 7, 0, 0, 0, 0), L.POLICY_VALUE.pack(3, 3, 0, 0, 1)
    )
    assert default.default and default.has_wildcard and default.ports == "-"


_ENCODE_DIGEST = """
import hashlib
from cport.ebpf import Encoder
from cport.engine import compile_table
from cport.model import load
b = load(["examples/estate"])
g = Encoder().encode(compile_table(b.policies, b.inventory))
doc = repr((sorted(g.ipcache.items()), sorted(g.endpoints.items()),
            sorted((p, sorted(r.rows.items())) for p, r in g.policies.items())))
print(hashlib.sha256(doc.encode()).hexdigest())
"""


def test_encoding_is_the_same_in_processes_with_different_hash_seeds() -> None:
    """Map keys and numbers are content hashes, not Python's salted `hash()`: two processes
    must write the same entries, or an agent adopting pinned maps would rewrite them all."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    digests = set()
    for seed in ("1", "2", "12345"):
        out = subprocess.run(
            [sys.executable, "-c", _ENCODE_DIGEST],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )
        digests.add(out.stdout.strip())
    assert len(digests) == 1, digests
