"""`cport up` with no configuration (the quickstart), as a user meets it: the bundled estate,
the built-in development issuer, curl through the gateway, observe, who, and a clean SIGTERM."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from .harness import CPORT, env_without_proxy, free_port, wait_for

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")

URL = "http://prometheus.monitoring:9090/"


@dataclass
class Quickstart:
    proc: subprocess.Popen[bytes]
    cwd: Path
    gateway: int
    api: int
    log: Path

    @property
    def socket(self) -> Path:
        return self.cwd / ".cport" / "agent.sock"

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [CPORT, *args],
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env=env_without_proxy(),
        )

    def ready(self) -> bool:
        if not self.socket.exists():
            return False
        with (
            contextlib.suppress(httpx.HTTPError),
            httpx.Client(
                transport=httpx.HTTPTransport(uds=str(self.socket)), base_url="http://cport"
            ) as c,
        ):
            return c.get("/readyz", timeout=5).status_code == 200
        return False

    def curl(self, token: str) -> subprocess.CompletedProcess[str]:
        proxy = f"http://127.0.0.1:{self.gateway}"
        auth = f"Proxy-Authorization: Bearer {token}"
        return subprocess.run(
            [
                "curl",
                "-sS",
                "-v",
                "--max-time",
                "10",
                "-p",
                "-x",
                proxy,
                "--proxy-header",
                auth,
                URL,
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env=env_without_proxy(),
        )


@pytest.fixture
def quickstart(tmp_path: Path) -> Iterator[Quickstart]:
    gateway, api = free_port(), free_port()
    env = env_without_proxy()
    env.pop("CPORT_SOCKET", None)
    env["CPORT_QUICKSTART_GATEWAY"] = f"127.0.0.1:{gateway}"
    env["CPORT_QUICKSTART_API"] = f"127.0.0.1:{api}"
    log = tmp_path / "quickstart.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([CPORT, "up"], cwd=tmp_path, env=env, stdout=out, stderr=out)
    qs = Quickstart(proc, tmp_path, gateway, api, log)
    try:
        deadline = time.monotonic() + 30
        while not qs.ready():
            assert proc.poll() is None, f"cport up exited {proc.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"not ready in 30 s:\n{log.read_text()}"
            time.sleep(0.05)
        yield qs
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def test_quickstart_end_to_end(quickstart: Quickstart) -> None:
    qs = quickstart
    assert "DEVELOPMENT ONLY" in qs.log.read_text()
    assert (qs.cwd / ".cport" / "dev-issuer.pem").stat().st_mode & 0o077 == 0

    tokens = {}
    for user in ("alice", "bob"):
        out = qs.cli("dev", "token", user)
        assert out.returncode == 0, out.stderr
        tokens[user] = out.stdout.strip()
        assert tokens[user].count(".") == 2

    allowed = qs.curl(tokens["alice"])
    assert allowed.returncode == 0, allowed.stderr
    assert "hello from monitoring/prometheus" in allowed.stdout

    denied = qs.curl(tokens["bob"])
    assert denied.returncode != 0
    assert "< HTTP/1.1 403" in denied.stderr
    assert "< Cport-Reason: default-deny" in denied.stderr, denied.stderr
    assert "< Cport-Explanation: x-" in denied.stderr

    out = wait_for(
        lambda: (
            (o := qs.cli("observe", "--to", "monitoring/prometheus")).stdout.count("\n") >= 3 and o
        )
    )
    assert out, qs.cli("observe").stdout
    lines = out.stdout.splitlines()
    assert any("alice" in ln and "OPEN ALLOWED (authenticated)" in ln for ln in lines), lines
    assert any("bob" in ln and "REFUSED DENIED (default-deny)" in ln for ln in lines), lines

    who = wait_for(
        lambda: (
            {
                (r["subject"], r["workload"], tuple(sorted(r["verdicts"])))
                for r in json.loads(qs.cli("who", "-o", "json").stdout or "[]")
            }
            >= {
                ("alice", "monitoring/prometheus", ("allowed",)),
                ("bob", "monitoring/prometheus", ("denied",)),
            }
        )
    )
    assert who, qs.cli("who", "-o", "json").stdout
    table = qs.cli("who")
    assert table.returncode == 0 and "alice" in table.stdout and "bob" in table.stdout

    qs.proc.send_signal(signal.SIGTERM)
    assert qs.proc.wait(20) == 0
    assert not qs.socket.exists()
