"""`cport bpf status|policy|ipcache|grants`: the realised kernel state, read from the maps
pinned by the eBPF enforcer (as ``cilium-dbg bpf policy get`` reads Cilium's). Reads only:
nothing is compiled, loaded or changed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.table import Table as RichTable

from cport.cli._common import console, emit_json, escape, handle_errors, output_option
from cport.identity import RESERVED_NAMES

if TYPE_CHECKING:
    from cport.ebpf import PinnedState

T = TypeVar("T")

_GENERATIONS = ("active", "0", "1")
_PROTOS = {0: "*", 1: "ICMP", 6: "TCP", 17: "UDP", 58: "ICMPv6", 132: "SCTP"}
_LOCAL_SCOPE = 1 << 24


def pin_root_option(f: Any) -> Any:
    return click.option(
        "--pin-root",
        type=click.Path(file_okay=False, path_type=Path),
        default=Path("/sys/fs/bpf/cport"),
        show_default=True,
        help="Where the enforcer pinned its maps (BpfDatapath's pin_root).",
    )(f)


def generation_option(f: Any) -> Any:
    return click.option(
        "--generation",
        type=click.Choice(_GENERATIONS),
        default="active",
        show_default=True,
        help="Which policy generation to read (the inactive one holds the previous policy).",
    )(f)


def _read(pin_root: Path, read: Callable[[PinnedState], T]) -> T:
    """`read` the pinned state under `pin_root`, closing it afterwards."""
    from cport.ebpf import PinnedState

    state = PinnedState.open(pin_root)
    try:
        return read(state)
    finally:
        state.close()


def _gen(generation: str) -> int | None:
    return None if generation == "active" else int(generation)


def identity_text(ident: int) -> str:
    """An identity with what the number alone tells: reserved name, CIDR scope, any."""
    if ident == 0:
        return "any"
    if ident in RESERVED_NAMES:
        return f"{ident} ({RESERVED_NAMES[ident]})"
    if ident >= _LOCAL_SCOPE:
        return f"{ident} (cidr)"
    return str(ident)


@click.group()
def bpf() -> None:
    """Read the eBPF enforcer's realised state from its pinned maps (needs root)."""


@bpf.command()
@pin_root_option
@output_option
@handle_errors
def status(pin_root: Path, output: str) -> None:
    """Attachment, active policy generation and revision, counters and map fill."""
    doc = _read(pin_root, lambda s: s.status())
    if output == "json":
        emit_json(doc)
        return
    att = doc["attached"]
    console.print(f"pin root      {escape(str(doc['pinRoot']))}")
    if isinstance(att, dict):
        console.print(
            f"attached      {escape(str(att['interface']))} (ifindex {att['ifindex']}), tc ingress "
            f"prog {att['ingressProgId']}, egress prog {att['egressProgId']}, build "
            f"{att['buildId']}, since {att['attachedAt']}"
        )
    else:
        console.print("attached      [yellow]no[/yellow]")
    if doc["epoch"]:
        console.print(
            f"policy        revision {doc['realisedRevision']} (epoch {doc['epoch']}, "
            f"generation {doc['activeGeneration']})"
        )
    else:
        console.print("policy        [yellow]none realised yet[/yellow]")
    gens = doc["generations"]
    assert isinstance(gens, list)
    for g in gens:
        mark = "  [green]active[/green]" if g["active"] else ""
        console.print(
            f"generation {g['generation']}  revision {g['revision']}, {g['entries']} entries, "
            f"epoch {g['epoch']}, synced {g['syncedAt'] or '-'}{mark}"
        )
    counters = doc["counters"]
    assert isinstance(counters, dict)
    console.print("counters      " + ", ".join(f"{k} {v}" for k, v in counters.items()))
    maps = doc["maps"]
    assert isinstance(maps, dict)
    t = RichTable("map", "type", "entries", "max", box=None, pad_edge=False)
    for name, m in maps.items():
        t.add_row(name, str(m["type"]), str(m.get("entries", "-")), str(m["maxEntries"]))
    console.print(t)


@bpf.command()
@pin_root_option
@generation_option
@click.option(
    "--identity", type=int, default=None, help="Only the policies of this endpoint identity."
)
@output_option
@handle_errors
def policy(pin_root: Path, generation: str, identity: int | None, output: str) -> None:
    """Every policy map entry: endpoints, direction, peer, protocol, ports, verdict, the rules
    behind it and its packet and byte counters."""
    entries = _read(pin_root, lambda s: s.policy_entries(_gen(generation), identity=identity))
    if output == "json":
        emit_json([e.to_json() for e in entries])
        return
    if not entries:
        console.print("no policy entries")
        return
    t = RichTable(
        "POLICY", "ENDPOINTS", "DIRECTION", "PEER", "PROTO", "PORTS", "VERDICT", "PACKETS",
        "BYTES", "RULES", box=None, pad_edge=False,
    )  # fmt: skip
    for e in entries:
        rules = e.rules.partition(": ")[2] or e.rules
        t.add_row(
            f"{e.policy_id:08x}",
            ",".join(map(str, e.endpoints)) or "-",
            e.direction if not e.default else "-",
            "(default)" if e.default else identity_text(e.peer),
            _PROTOS.get(e.protocol, str(e.protocol)) if not e.default else "-",
            e.ports,
            e.verdict,
            str(e.packets),
            str(e.bytes),
            escape(rules),
        )
    console.print(t)


@bpf.command()
@pin_root_option
@generation_option
@output_option
@handle_errors
def ipcache(pin_root: Path, generation: str, output: str) -> None:
    """Address prefix → identity: workload addresses, CIDR identities, and addresses bound
    to a credential's identity by a grant (kind `bound`)."""
    entries = _read(pin_root, lambda s: s.ipcache_entries(_gen(generation)))
    if output == "json":
        emit_json([e.to_json() for e in entries])
        return
    t = RichTable("PREFIX", "IDENTITY", "KIND", box=None, pad_edge=False)
    for e in entries:
        t.add_row(e.prefix, identity_text(e.identity), e.kind)
    console.print(t)


@bpf.command()
@pin_root_option
@output_option
@handle_errors
def grants(pin_root: Path, output: str) -> None:
    """Grants for auth-required rows: peer identity, address, expiry, live or expired."""
    entries = _read(pin_root, lambda s: s.grant_entries())
    if output == "json":
        emit_json([e.to_json() for e in entries])
        return
    if not entries:
        console.print("no grants")
        return
    t = RichTable("PEER", "ADDRESS", "EXPIRES", "STATE", box=None, pad_edge=False)
    for e in entries:
        doc = e.to_json()
        t.add_row(
            identity_text(e.peer_identity),
            e.address,
            str(doc["expiresAt"]),
            "live" if e.live else "[yellow]expired[/yellow]",
        )
    console.print(t)
