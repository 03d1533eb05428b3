"""Fixtures for the eBPF enforcer's tests: compiled tables from YAML, a two-namespace
topology, a unique pin root, and a datapath on the server's veth — each removed by its own
name afterwards, whatever happened."""

from __future__ import annotations

import itertools
import os
import subprocess
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cport.ebpf import BpfDatapath
from cport.engine import Compiler, Decision, Flow, Table, decide, resolve_endpoint
from cport.model import load
from tests.ebpf.netns import Topology

_pins = itertools.count()

WORKLOADS = """
apiVersion: cport.dev/v1alpha1
kind: Workload
metadata: {{name: {name}, namespace: {ns}, labels: {{app: {app}}}}}
spec: {{serviceAccount: {app}, addresses: [{addr}]}}
"""


def workload(name: str, addr: str, *, ns: str = "shop", app: str | None = None) -> str:
    return WORKLOADS.format(name=name, ns=ns, app=app or name, addr=addr)


class Estate:
    """Policies and inventory from YAML text, compiled (and recompiled) with one Compiler."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.compiler: Compiler | None = None
        self._n = 0

    def compile(self, *docs: str, extra: tuple[str, ...] = ()) -> Table:
        from cport.engine._flow import labels_spec

        self._n += 1
        path = self.dir / f"estate{self._n}.yaml"
        path.write_text("\n---\n".join(textwrap.dedent(d).strip() for d in docs) + "\n")
        bundle = load([str(path)])
        extras = [lab for spec in extra if (lab := labels_spec(spec)) is not None]
        self.compiler = Compiler(bundle.inventory, extra_identities=extras)
        return self.compiler.compile(bundle.policies)

    def update(self, *docs: str) -> Table:
        """Upsert the policies in `docs` (same inventory) and return the next revision."""
        assert self.compiler is not None
        self._n += 1
        path = self.dir / f"update{self._n}.yaml"
        path.write_text("\n---\n".join(textwrap.dedent(d).strip() for d in docs) + "\n")
        return self.compiler.update(upsert=load([str(path)]).policies)

    def identity(self, table: Table, ns: str, name: str) -> int:
        return table.workload_ids[(ns, name)]


@pytest.fixture
def estate(tmp_path: Path) -> Estate:
    return Estate(tmp_path / "estate")


@pytest.fixture(scope="session")
def bpf_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bpf-cache")


@pytest.fixture
def pin_root() -> Iterator[Path]:
    """A pin root of this test alone, removed afterwards (with anything left in it)."""
    root = Path(f"/sys/fs/bpf/cport-test-{os.getpid()}-{next(_pins)}")
    yield root
    if root.exists():
        for p in root.iterdir():
            p.unlink()
        root.rmdir()


@pytest.fixture
def shared_pin_root(tmp_path: Path) -> Iterator[Path]:
    """`ip netns exec` remounts /sys, so pins under /sys/fs/bpf made inside it are private
    to that command; a bpffs mounted elsewhere is shared with it (docs/ebpf.md)."""
    mnt = tmp_path / "bpffs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "bpf", "bpf", str(mnt)], check=True, timeout=30)
    try:
        yield mnt / "cport"
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False, timeout=30)


@pytest.fixture
def topology() -> Iterator[Callable[..., Topology]]:
    made: list[Topology] = []

    def make(client: list[str], server: list[str]) -> Topology:
        topo = Topology()
        made.append(topo)
        return topo.up(client, server)

    yield make
    for topo in made:
        topo.down()


@pytest.fixture
def datapath(pin_root: Path, bpf_cache: Path) -> Iterator[Callable[..., BpfDatapath]]:
    """Open a datapath on a topology's server veth; detached and unpinned afterwards."""
    made: list[BpfDatapath] = []

    def make(topo: Topology, **kwargs: object) -> BpfDatapath:
        dp = BpfDatapath(
            topo.server_if,
            netns=topo.server,
            pin_root=pin_root,
            cache_dir=bpf_cache,
            **kwargs,  # type: ignore[arg-type]
        )
        made.append(dp)
        dp.open()
        return dp

    yield make
    for dp in made:
        dp.close(unpin=True)


def decided(
    estate: Estate, table: Table, src: str, dst: str, port: int, proto: int = 6
) -> Decision:
    """What `decide` says for a flow between two addresses (resolved as `explain` does)."""
    assert estate.compiler is not None
    inv = estate.compiler.inventory
    s = resolve_endpoint(table, inv, src)
    d = resolve_endpoint(table, inv, dst)
    return decide(table, Flow(s.identity, d.identity, proto, port))
