"""The `cport` command against the example estate: validate, compile, explain, ports; exit
codes 0 (ok/allowed), 1 (denied/invalid), 2 (usage)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ._estate import INVENTORY, POLICIES, Invoke, as_json

WEB_POD = "frontend/web-7d9f8b6c5-x2k4p"

BAD_POLICY = """\
apiVersion: cport.dev/v1alpha1
kind: PortPolicy
metadata: {name: bad, namespace: x}
spec:
  selector: {matchLabels: {app: db}}
  ingres:
    - from: [{entities: [world]}]
---
apiVersion: cport.dev/v1alpha1
kind: PortPolicy
metadata: {name: bad2, namespace: x}
spec:
  selector: {}
  ingress:
    - ports: [{port: 99999}]
"""

L7_POLICY = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: l7, namespace: x}
spec:
  endpointSelector: {}
  ingress:
    - toPorts:
        - ports: [{port: "80"}]
          rules: {http: [{method: GET}]}
"""


def _names(refs: list[dict[str, Any]]) -> list[str]:
    return [f"{r['kind']}/{r['name']}" for r in refs]


def _direction_shape(d: dict[str, Any]) -> None:
    for key in ("verdict", "reason", "allowedBy", "deniedBy", "selectedBy", "auditedBy"):
        assert key in d, key
    for key in ("allowedBy", "deniedBy", "selectedBy", "auditedBy"):
        assert isinstance(d[key], list)
        for ref in d[key]:
            assert {"kind", "namespace", "name", "revision", "mode", "rule", "source"} <= set(ref)


# -- policy validate -------------------------------------------------------------------------
def test_validate_estate_text(cli: Invoke) -> None:
    result = cli("policy", "validate", POLICIES, INVENTORY)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("valid: ")
    assert "6 workload(s)" in result.stdout


def test_validate_estate_json(cli: Invoke) -> None:
    result = cli("policy", "validate", POLICIES, INVENTORY, "-o", "json")
    assert result.exit_code == 0
    data = as_json(result)
    assert data["valid"] is True
    assert data["documents"] >= 10
    assert {
        "PortPolicy/payments/ledger-db",
        "PortPolicy/ci/ci-lockdown",
        "CiliumClusterwideNetworkPolicy/block-legacy-office",
        "CiliumNetworkPolicy/frontend/web",
        "NetworkPolicy/monitoring/prometheus-ui",
    } <= set(data["policies"])
    assert {"payments/ledger-db", "ci/runner", WEB_POD} <= set(data["workloads"])
    assert data["warnings"] == []


def test_validate_invalid_file_json(cli: Invoke, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_POLICY)
    result = cli("policy", "validate", bad, "-o", "json")
    assert result.exit_code == 1
    data = as_json(result)
    assert data["valid"] is False
    assert data["errors"] == [
        {
            "code": "unknown-field",
            "message": "unknown field 'ingres'",
            "file": str(bad),
            "line": 6,
            "column": 3,
            "field": "spec.ingres",
            "hint": "did you mean 'ingress'?",
        },
        {
            "code": "invalid-policy",
            "message": "invalid port 99999",
            "file": str(bad),
            "line": 15,
            "column": 16,
            "field": "spec.ingress[0].ports[0].port",
            "hint": "a number from 1 to 65535, or 0 for every port",
        },
    ]


def test_validate_invalid_file_text(cli: Invoke, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_POLICY)
    result = cli("policy", "validate", bad)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert f"{bad}:6:3: spec.ingres: unknown-field: unknown field 'ingres'" in result.stderr
    assert "hint: did you mean 'ingress'?" in result.stderr
    assert f"{bad}:15:16: spec.ingress[0].ports[0].port: invalid-policy" in result.stderr
    assert "2 error(s)" in result.stderr


def test_validate_skip_unsupported(cli: Invoke, tmp_path: Path) -> None:
    l7 = tmp_path / "l7.yaml"
    l7.write_text(L7_POLICY)
    strict = cli("policy", "validate", l7, "-o", "json")
    assert strict.exit_code == 1
    [err] = as_json(strict)["errors"]
    assert (err["code"], err["field"], err["line"]) == (
        "unsupported-field",
        "spec.ingress[0].toPorts[0].rules",
        9,
    )
    lenient = cli("policy", "validate", "--skip-unsupported", l7, "-o", "json")
    assert lenient.exit_code == 0
    data = as_json(lenient)
    assert data["valid"] is True
    [warning] = data["warnings"]
    assert warning.startswith(f"{l7}:9:")
    text = cli("policy", "validate", "--skip-unsupported", l7)
    assert text.exit_code == 0
    assert "warning" in text.stdout
    assert "dropped this allow rule" in text.stdout


@pytest.mark.parametrize(
    ("body", "shown"),
    [
        pytest.param("    - from:\n        - entities: '[world]'\n", "'[world]'", id="swallowed"),
        pytest.param("    - ports: [{port: '[/x]'}]\n", "'[/x]'", id="crash"),
    ],
)
def test_text_errors_show_bracketed_values_verbatim(
    cli: Invoke, tmp_path: Path, body: str, shown: str
) -> None:
    bad = tmp_path / "brackets.yaml"
    bad.write_text(
        "apiVersion: cport.dev/v1alpha1\nkind: PortPolicy\nmetadata: {name: m, namespace: x}\n"
        "spec:\n  selector: {}\n  ingress:\n" + body
    )
    result = cli("policy", "validate", bad)
    assert result.exit_code == 1
    assert shown in result.stderr


def test_validate_missing_path_is_a_usage_error(cli: Invoke, tmp_path: Path) -> None:
    result = cli("policy", "validate", tmp_path / "nope.yaml")
    assert result.exit_code == 2


# -- policy compile --------------------------------------------------------------------------
def test_compile_json(cli: Invoke) -> None:
    result = cli("policy", "compile", POLICIES, "-i", INVENTORY, "-o", "json")
    assert result.exit_code == 0, result.output
    data = as_json(result)
    assert data["revision"] >= 1
    assert data["rows"] > 0
    assert data["policies"] == 6
    assert data["identities"] >= 6 + 8
    endpoints = {e["workload"]: e for e in data["endpoints"]}
    assert set(endpoints) == {
        WEB_POD,
        "payments/payments-api",
        "payments/ledger-db",
        "payments/ledger-replica",
        "monitoring/prometheus",
        "ci/runner",
    }
    ledger = endpoints["payments/ledger-db"]
    assert ledger["identity"] >= 256
    assert ledger["ingress"]["default"] == "denied"
    assert ledger["ingress"]["rows"] > 0
    assert set(ledger["ingress"]["selectedBy"]) == {
        "PortPolicy/payments/ledger-db",
        "CiliumClusterwideNetworkPolicy/block-legacy-office",
    }
    assert ledger["egress"] is None  # no policy governs its egress
    assert endpoints["ci/runner"]["ingress"] is None
    assert endpoints["ci/runner"]["egress"]["selectedBy"] == ["PortPolicy/ci/ci-lockdown"]
    assert "peers" not in data


def test_compile_rows(cli: Invoke) -> None:
    result = cli("policy", "compile", POLICIES, "-i", INVENTORY, "-o", "json", "--rows")
    assert result.exit_code == 0
    data = as_json(result)
    ledger = next(e for e in data["endpoints"] if e["workload"] == "payments/ledger-db")
    rows = ledger["ingress"]["rows_list"]
    assert len(rows) == ledger["ingress"]["rows"]
    api_id = next(
        e["identity"] for e in data["endpoints"] if e["workload"].endswith("/payments-api")
    )
    assert {
        "peer": api_id,
        "protocol": "TCP",
        "ports": "5432",
        "verdict": "allowed",
        "policies": ["PortPolicy/payments/ledger-db"],
    } in rows
    assert str(api_id) in data["peers"]
    assert data["peers"][str(api_id)]["workloads"] == ["payments/payments-api"]


def test_compile_text(cli: Invoke) -> None:
    result = cli("policy", "compile", POLICIES, "-i", INVENTORY)
    assert result.exit_code == 0
    assert result.stdout.startswith("table revision ")
    assert "payments/ledger-db" in result.stdout


def test_compile_invalid_input_exit_1(cli: Invoke, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_POLICY)
    result = cli("policy", "compile", bad, "-i", INVENTORY, "-o", "json")
    assert result.exit_code == 1
    assert as_json(result)["valid"] is False


# -- explain ----------------------------------------------------------------------------------
def test_explain_allowed(explain: Invoke) -> None:
    result = explain("payments/payments-api", "payments/ledger-db", "5432", "-o", "json")
    assert result.exit_code == 0, result.output
    data = as_json(result)
    assert (data["verdict"], data["reason"]) == ("allowed", "allowed")
    assert data["authenticationRequired"] is False
    assert (data["protocol"], data["port"]) == ("TCP", 5432)
    assert data["from"]["workload"] == "payments/payments-api"
    assert data["to"]["workload"] == "payments/ledger-db"
    assert data["to"]["serviceAccount"] == "ledger"
    assert "k8s:io.kubernetes.pod.namespace=payments" in data["to"]["labels"]
    for direction in ("egress", "ingress"):
        _direction_shape(data[direction])
        assert data[direction]["verdict"] == "allowed"
        assert data[direction]["governed"] is True
    [egress_by] = data["egress"]["allowedBy"]
    assert (egress_by["name"], egress_by["rule"]) == ("payments-api", "egress[0]")
    assert egress_by["source"].endswith("payments-api.yaml:15:7: spec.egress[0]")
    [ingress_by] = data["ingress"]["allowedBy"]
    assert (ingress_by["name"], ingress_by["rule"]) == ("ledger-db", "ingress[0]")
    assert ingress_by["mode"] == "enforce"
    assert "ledger-db.yaml:9:7" in ingress_by["source"]
    assert data["ingress"]["row"] == {"peer": data["from"]["identity"], "ports": "5432"}
    assert set(_names(data["ingress"]["selectedBy"])) == {
        "PortPolicy/ledger-db",
        "CiliumClusterwideNetworkPolicy/block-legacy-office",
    }
    assert data["ingress"]["deniedBy"] == []


def test_explain_allowed_text(explain: Invoke) -> None:
    result = explain("payments/payments-api", "payments/ledger-db", "5432")
    assert result.exit_code == 0
    assert result.stdout.startswith("ALLOWED")
    assert "reason: allowed" in result.stdout
    assert "allowed by: PortPolicy payments/ledger-db ingress[0]" in result.stdout


def test_explain_denied_by_default(explain: Invoke) -> None:
    result = explain("frontend/web", "payments/ledger-db", "5432", "-o", "json")
    assert result.exit_code == 1
    data = as_json(result)
    assert (data["verdict"], data["reason"]) == ("denied", "default-deny")
    assert data["from"]["workload"] == WEB_POD  # found by its Deployment's name
    for direction in ("egress", "ingress"):
        _direction_shape(data[direction])
        assert data[direction]["reason"] == "default-deny"
        assert data[direction]["allowedBy"] == []
        assert data[direction]["row"] is None
    assert _names(data["egress"]["selectedBy"]) == ["CiliumNetworkPolicy/web"]
    text = explain("frontend/web", "payments/ledger-db", "5432")
    assert text.exit_code == 1
    assert text.stdout.startswith("DENIED")
    assert "default-deny" in text.stdout


def test_explain_user_needs_authentication(explain: Invoke) -> None:
    src = "labels:oidc:iss=corp-okta,oidc:sub=alice,oidc:groups=dba"
    result = explain(src, "payments/ledger-db", "5432", "-o", "json")
    assert result.exit_code == 1
    data = as_json(result)
    assert (data["verdict"], data["reason"]) == ("denied", "auth-required")
    assert data["authenticationRequired"] is True
    assert sorted(data["from"]["labels"]) == [
        "oidc:groups=dba",
        "oidc:iss=corp-okta",
        "oidc:sub=alice",
    ]
    assert data["ingress"]["verdict"] == "auth-required"
    [by] = data["ingress"]["allowedBy"]
    assert (by["name"], by["rule"]) == ("ledger-db", "ingress[1]")
    assert data["egress"]["governed"] is False  # not a workload: no egress policy


def test_explain_blocked_office_range_is_denied_by_the_clusterwide_policy(
    explain: Invoke,
) -> None:
    result = explain("cidr:203.0.113.7", "payments/payments-api", "8080", "-o", "json")
    assert result.exit_code == 1
    data = as_json(result)
    assert (data["verdict"], data["reason"]) == ("denied", "denied-by-policy")
    ingress = data["ingress"]
    assert ingress["reason"] == "denied-by-policy"
    [by] = ingress["deniedBy"]
    assert (by["kind"], by["name"], by["namespace"]) == (
        "CiliumClusterwideNetworkPolicy",
        "block-legacy-office",
        "",
    )
    assert by["rule"] == "ingressDeny[0]"
    assert "ci-lockdown.yaml" in by["source"]


def test_explain_excepted_part_of_the_office_range_is_not_denied_by_it(explain: Invoke) -> None:
    result = explain("cidr:203.0.113.200", "payments/payments-api", "8080", "-o", "json")
    data = as_json(result)
    assert data["reason"] != "denied-by-policy"
    assert "block-legacy-office" not in [r["name"] for r in data["ingress"]["deniedBy"]]
    # Still not allowed: payments-api admits only the frontend and SRE on 8080.
    assert (data["verdict"], data["reason"]) == ("denied", "default-deny")
    assert result.exit_code == 1


def test_explain_audit_mode(explain: Invoke) -> None:
    result = explain("ci/runner", "payments/ledger-db", "5432", "-o", "json")
    data = as_json(result)
    egress = data["egress"]
    assert (egress["verdict"], egress["reason"]) == ("audit", "audit")
    assert _names(egress["auditedBy"]) == ["PortPolicy/ci-lockdown"]
    assert egress["auditedBy"][0]["mode"] == "audit"
    assert egress["deniedBy"] == []
    # The database itself does not admit the runner.
    assert data["ingress"]["reason"] == "default-deny"
    assert result.exit_code == 1


def test_explain_audit_only_flow_exits_0(explain: Invoke) -> None:
    result = explain("ci/runner", "cidr:8.8.8.8", "443", "-o", "json")
    assert result.exit_code == 0, result.output
    data = as_json(result)
    assert (data["verdict"], data["reason"]) == ("audit", "audit")
    assert data["ingress"]["governed"] is False


def test_explain_entity_source(explain: Invoke) -> None:
    result = explain("entity:world", "frontend/web", "8080", "-o", "json")
    assert result.exit_code == 0
    data = as_json(result)
    assert data["from"]["identity"] == 2
    assert data["verdict"] == "allowed"


@pytest.mark.parametrize("port", ["70000", "65536", "0", "80/ICMP", "abc", "80/tcpx"])
def test_explain_bad_port_is_a_usage_error(explain: Invoke, port: str) -> None:
    result = explain("frontend/web", "payments/ledger-db", port)
    assert result.exit_code == 2
    assert "Invalid value" in result.stderr
    assert result.stdout == ""


def test_explain_port_protocol_is_case_insensitive(explain: Invoke) -> None:
    result = explain("payments/payments-api", "payments/ledger-db", "5432/tcp", "-o", "json")
    assert result.exit_code == 0
    assert as_json(result)["protocol"] == "TCP"


def test_explain_missing_option_is_a_usage_error(cli: Invoke) -> None:
    result = cli("explain", "-p", POLICIES, "-i", INVENTORY, "--from", "a/b", "--to", "c/d")
    assert result.exit_code == 2


def test_explain_unknown_workload(explain: Invoke) -> None:
    result = explain("frontend/nope", "payments/ledger-db", "5432")
    assert result.exit_code == 1
    assert "unknown-workload" in result.stderr
    assert "no workload frontend/nope" in result.stderr
    assert "web-7d9f8b6c5-x2k4p" in result.stderr  # what exists there
    as_j = explain("ghost/x", "payments/ledger-db", "5432", "-o", "json")
    assert as_j.exit_code == 1
    error = as_json(as_j)["error"]
    assert error["code"] == "unknown-workload"
    assert "no workloads in namespace 'ghost'" in error["message"]
    assert "payments" in error["message"]


def test_explain_unreadable_endpoint(explain: Invoke) -> None:
    result = explain("not-an-endpoint", "payments/ledger-db", "5432", "-o", "json")
    assert result.exit_code == 1
    assert as_json(result)["error"]["code"] == "invalid-flow"


def test_explain_cluster_name(explain: Invoke) -> None:
    result = explain(
        "payments/payments-api", "payments/ledger-db", "5432", "--cluster", "prod", "-o", "json"
    )
    assert result.exit_code == 0
    assert "k8s:io.cilium.k8s.policy.cluster=prod" in as_json(result)["from"]["labels"]


# -- ports --------------------------------------------------------------------------------------
def test_ports_ledger_db(cli: Invoke) -> None:
    result = cli("ports", "payments/ledger-db", "-p", POLICIES, "-i", INVENTORY, "-o", "json")
    assert result.exit_code == 0, result.output
    data = as_json(result)
    assert data["workload"]["name"] == "ledger-db"
    assert data["workload"]["addresses"] == ["198.51.100.20"]
    ingress = data["ingress"]
    assert ingress["governed"] is True
    assert ingress["default"] == "deny"
    line = next(p for p in ingress["ports"] if p["port"] == "5432" and p["protocol"] == "TCP")
    assert line["name"] == "postgres"
    # The payments API's grant, resolved to the workload.
    api = [
        g
        for g in line["allowed"]
        if g["resolved"] != "any"
        and any(r.get("workloads") == ["payments/payments-api"] for r in g["resolved"])
    ]
    assert len(api) == 1
    assert api[0]["policy"]["name"] == "ledger-db"
    assert api[0]["policy"]["rule"] == "ingress[0]"
    assert api[0]["authentication"] == "none"
    # The DBA / CI grant needs a verified credential.
    auth = [g for g in line["allowed"] if g["authentication"] == "required"]
    assert len(auth) == 1
    assert auth[0]["policy"]["rule"] == "ingress[1]"
    assert any("oidc:groups=dba" in p for p in auth[0]["peers"])
    # Who is denied: the office range (cluster-wide) and the world (ledger-db's own deny).
    denied = {g["policy"]["name"] for g in line["denied"]}
    assert denied == {"block-legacy-office", "ledger-db"}
    assert data["egress"]["governed"] is False


def test_ports_text(cli: Invoke) -> None:
    result = cli("ports", "payments/ledger-db", "-p", POLICIES, "-i", INVENTORY)
    assert result.exit_code == 0
    assert result.stdout.startswith("payments/ledger-db (Workload")
    assert "5432" in result.stdout
    assert "auth required" in result.stdout


def test_ports_by_deployment_name(cli: Invoke) -> None:
    result = cli("ports", "frontend/web", "-p", POLICIES, "-i", INVENTORY, "-o", "json")
    assert result.exit_code == 0
    data = as_json(result)
    assert data["workload"]["name"] == WEB_POD.split("/")[1]
    assert data["workload"]["kind"] == "Pod"
    line = next(p for p in data["ingress"]["ports"] if p["port"] == "8080")
    assert line["name"] == "http"


@pytest.mark.parametrize(
    ("workload", "code"),
    [("ledger-db", "invalid-flow"), ("payments/nope", "unknown-workload")],
)
def test_ports_bad_workload(cli: Invoke, workload: str, code: str) -> None:
    result = cli("ports", workload, "-p", POLICIES, "-i", INVENTORY, "-o", "json")
    assert result.exit_code == 1
    assert as_json(result)["error"]["code"] == code


# -- state directory ----------------------------------------------------------------------------
def test_state_dir_keeps_identity_numbers_across_runs(explain: Invoke, tmp_path: Path) -> None:
    state = tmp_path / "state"
    runs = [
        as_json(
            explain(
                "payments/payments-api", "payments/ledger-db", "5432", "--state-dir", state,
                "-o", "json",
            )
        )
        for _ in range(2)
    ]  # fmt: skip
    assert (state / "identities.json").is_file()
    assert runs[0]["from"]["identity"] == runs[1]["from"]["identity"]
    assert runs[0]["to"]["identity"] == runs[1]["to"]["identity"]
    assert runs[0]["ingress"]["row"] == runs[1]["ingress"]["row"]


def test_state_dir_keeps_numbers_when_the_inventory_shrinks(cli: Invoke, tmp_path: Path) -> None:
    state = tmp_path / "state"

    def ids(*inventory: Path, stateful: bool = True) -> dict[str, int]:
        args: list[str | Path] = ["policy", "compile", POLICIES, "-o", "json"]
        for inv in inventory:
            args += ["-i", inv]
        if stateful:
            args += ["--state-dir", state]
        result = cli(*args)
        assert result.exit_code == 0, result.output
        return {e["workload"]: e["identity"] for e in as_json(result)["endpoints"]}

    full = ids(INVENTORY)
    fewer = (INVENTORY / "workloads.yaml", INVENTORY / "namespaces.yaml")
    stateless = ids(*fewer, stateful=False)
    stateful = ids(*fewer)
    assert WEB_POD not in stateful
    # Without state the numbers shift once the frontend pod is gone; with it they do not.
    assert stateless != {w: full[w] for w in stateless}
    assert stateful == {w: full[w] for w in stateful}


def test_corrupt_state_dir_is_reported(explain: Invoke, tmp_path: Path) -> None:
    (tmp_path / "identities.json").write_text("{not json")
    args = ("payments/payments-api", "payments/ledger-db", "5432", "--state-dir", tmp_path)
    result = explain(*args, "-o", "json")
    assert result.exit_code == 1
    assert as_json(result)["error"]["code"] == "identity-state-corrupt"
    text = explain(*args)
    assert text.exit_code == 1
    assert "identity-state-corrupt" in text.stderr


def test_version(cli: Invoke) -> None:
    result = cli("--version")
    assert result.exit_code == 0
    assert "0.1.0" in result.stdout
