"""`cport bpf status|policy|ipcache|grants`: the realised state read back from pinned maps."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from cport.cli import main
from cport.ebpf import BpfDatapath
from tests.ebpf.conftest import Estate, workload
from tests.ebpf.netns import Topology
from tests.ebpf.test_auth import POLICY

API, WEB, DB = "192.0.2.10", "192.0.2.11", "198.51.100.20"


def test_missing_pin_root_is_an_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["bpf", "status", "--pin-root", str(tmp_path / "no")])
    assert result.exit_code == 1
    assert "not-pinned" in result.output or "not-pinned" in (result.stderr or "")
    result = CliRunner().invoke(
        main, ["bpf", "policy", "--pin-root", str(tmp_path / "no"), "-o", "json"]
    )
    assert result.exit_code == 1
    assert json.loads(result.output)["error"]["code"] == "not-pinned"


@pytest.mark.privileged
def test_bpf_commands_read_the_pinned_state(
    topology: Callable[..., Topology],
    datapath: Callable[..., BpfDatapath],
    estate: Estate,
    pin_root: Path,
) -> None:
    topo = topology([API, WEB], [DB])
    listeners = topo.listen_tcp([8080])
    table = estate.compile(workload("api", API), workload("web", WEB), workload("db", DB), POLICY)
    dp = datapath(topo)
    dp.sync(table)
    api_id = estate.identity(table, "shop", "api")
    db_id = estate.identity(table, "shop", "db")
    dp.grant(api_id, API, time.time() + 600)
    assert topo.tcp_probe([(WEB, DB, 8080)]) == {(WEB, DB, 8080): True}
    dp.close()  # the CLI reads what stays pinned, not this process
    run = CliRunner()
    root = ["--pin-root", str(pin_root)]

    result = run.invoke(main, ["bpf", "status", *root, "-o", "json"])
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    assert status["realisedRevision"] == table.revision and status["epoch"] == 1
    assert status["attached"]["interface"] == topo.server_if
    assert status["counters"]["allowed"] >= 1
    text = run.invoke(main, ["bpf", "status", *root])
    assert text.exit_code == 0 and f"revision {table.revision}" in text.output

    result = run.invoke(main, ["bpf", "policy", *root, "--identity", str(db_id), "-o", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    by_peer = {(r["peer"], r["ports"], r["protocol"]): r for r in rows if not r["default"]}
    web_row = by_peer[(estate.identity(table, "shop", "web"), "8080", 6)]
    assert web_row["verdict"] == "allowed" and web_row["packets"] >= 1
    assert "PortPolicy/shop/db#0 ingress[1] enforce" in web_row["rules"]
    api_row = by_peer[(api_id, "5432", 17)]
    assert api_row["verdict"] == "auth-required" and api_row["endpoints"] == [db_id]
    [default] = [r for r in rows if r["default"]]
    assert default["verdict"] == "denied" and default["rules"] == "denied/default-deny"
    text = run.invoke(main, ["bpf", "policy", *root])
    assert text.exit_code == 0 and "auth-required" in text.output and "(default)" in text.output

    result = run.invoke(main, ["bpf", "ipcache", *root, "-o", "json"])
    prefixes = {e["prefix"]: e for e in json.loads(result.output)}
    assert prefixes[f"{API}/32"]["identity"] == api_id
    assert prefixes["0.0.0.0/0"]["kind"] == "cidr"

    result = run.invoke(main, ["bpf", "grants", *root, "-o", "json"])
    [grant] = json.loads(result.output)
    assert (grant["peerIdentity"], grant["address"], grant["live"]) == (api_id, API, True)
    text = run.invoke(main, ["bpf", "grants", *root])
    assert "live" in text.output and API in text.output
    topo.drain(listeners)
