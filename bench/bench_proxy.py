"""bench_proxy: cport's CONNECT gateway (``cport up``) beside haproxy and socat, on loopback.

What it measures
----------------
One run starts, on 127.0.0.1 only: an upstream server (one asyncio process; a connection whose
first byte is ``S`` is a *sink* — it counts every byte into one preallocated buffer with
``recv_into`` via ``BufferedProtocol`` and answers the count at EOF — any other connection is
an *echo*), **haproxy** (TCP mode, its defaults: ``nbthread`` = CPUs, 16 KiB buffers, no splice;
config written to a temp dir, ``haproxy -f CFG -db``; a second instance with ``option
splice-auto`` for information in the throughput table), **socat** (``TCP-LISTEN:P,fork,
reuseaddr TCP:…``), **bare**: a 40-line asyncio CONNECT proxy made of ``cport.proxy``'s
``read_connect_head`` + ``relay`` with no token check, policy or audit (the floor for the
agent's own per-connection work), and **cport**: ``cport up --config CFG`` with a PortPolicy
letting users of the bench issuer reach ``bench/sink:9000``, whose upstream is the upstream
server; the ES256 issuer's JWKS is served from a loopback ``http.server`` thread here. cport
(and bare) clients send ``CONNECT sink.bench:9000 HTTP/1.1`` with ``Proxy-Authorization:
Bearer <token>``, read ``HTTP/1.1 200``, then talk. "direct" is the upstream server without
any proxy (the floor).

1. **relay engines** — cport's relay alone, in this process: one stream through
   ``cport.proxy.relay`` with ``use_splice=True`` and with the asyncio copy engine
   (``use_splice=False``); MiB/s and this process's CPU seconds per GiB.
2. **throughput** — bulk upload: a client process ``sendfile``s from a 64 MiB file of random
   bytes (repeated) to the sink; 1 stream and 2 concurrent streams; the clock runs from the
   first payload byte (after CONNECT) to the sink's byte count arriving. 512 MiB per stream
   with ``--quick``, 2 GiB otherwise; best of 3 rounds, targets interleaved. The proxy's CPU
   seconds per GiB are read from ``/proc/PID/stat`` (socat's include its reaped children).
   ``throughput_vs_haproxy`` = cport / haproxy, 1 stream. Target ≥ 0.8.
3. **connection rate** — 32 concurrent asyncio clients in this process, best of 3 rounds of
   2 s (``--quick``) or 5 s, targets interleaved; each connection fresh: connect, (CONNECT +
   token check + 200), one echoed byte, close. cport with one token reused by every
   connection (the verifier's cache is part of the product) and with a unique token per
   connection (a full ES256 verification each; tokens minted beforehand). The load generator
   is Python too, so the direct and haproxy figures are partly bounded by it (haproxy's
   headroom is larger than shown).
   ``connrate_vs_haproxy`` = cport (reused token) / haproxy. Target ≥ 0.3.
4. **setup latency** — one connection at a time, targets interleaved: connect → (CONNECT →
   200) → one echoed byte, p50/p99 in ms (300 each with ``--quick``, 2,000 otherwise).
   ``setup_p99_added_ms`` = cport p99 − direct p99.
5. **soak** — N concurrent tunnels with churn (each tunnel echoes 1 KiB messages for a random
   0.2–2 s, closes, and its worker opens a new one) for T seconds (100 tunnels for 20 s with
   ``--quick``, 1,000 tunnels for 5 minutes otherwise), sampling the agent's fd count and RSS
   every second; reported: tunnels completed, errors, the medians of fds and RSS over 10–50%
   and 50–95% of the run (growth = the difference), the peak, and both once every tunnel is
   closed again (fds must be back at the baseline). The agent keeps the last 10,000 flow
   records in memory by design, so RSS grows until that ring is full (a quick run's soak
   does not fill it; the full run does within its first minute).
6. **idle memory** — 10,000 tunnels opened through cport (and, for comparison, haproxy), each
   having echoed one byte, then held idle: (RSS after − RSS before) / tunnels from
   ``/proc/PID/status`` (VmRSS), and fds per tunnel; then all are closed and the time until
   the proxy is back at its fd baseline is reported. ``kib_per_idle_conn``. Target ≤ 32 KiB.
   RLIMIT_NOFILE is raised to 65,536 for this process and everything it starts; where the
   hard limit cannot be raised (no CAP_SYS_RESOURCE) the bench holds as many tunnels as two
   fds per tunnel allow and says so.

All figures are from one machine where other work may be running; ratios are within one run.
Every process the bench starts is stopped by its own pid (socat's per-connection children by
theirs), also on errors. The last line printed is one JSON object:
``{"bench": "proxy", "throughput_vs_haproxy": …, "connrate_vs_haproxy": …,
"setup_p99_added_ms": …, "kib_per_idle_conn": …, …}``.

Usage: ``python bench/bench_proxy.py [--quick] [--strict] [--only SECTION,…] [--keep]``
(``--strict``: exit 1 when a target is missed; sections: relay, throughput, connrate,
latency, soak, idle).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import http.server
import json
import os
import random
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from cport.proxy import relay

PY = sys.executable
CPORT = str(Path(sys.executable).parent / "cport")
HOST = "127.0.0.1"
TARGET_THROUGHPUT = 0.8  # × haproxy
TARGET_CONNRATE = 0.3  # × haproxy
TARGET_IDLE_KIB = 32.0
SECTIONS = ("relay", "throughput", "connrate", "latency", "soak", "idle")
WORKLOAD_PORT = 9000
AUTHORITY = f"sink.bench:{WORKLOAD_PORT}"
NOFILE = 65536


def mark(ok: bool) -> str:
    return "✔" if ok else "✘"


# --------------------------------------------------------------------------------------------
# child programs (run with `python -c`)
# --------------------------------------------------------------------------------------------

UPSTREAM = r"""
import asyncio, signal, socket, sys
SCRATCH = bytearray(1 << 20)
VIEW = memoryview(SCRATCH)

class Conn(asyncio.BufferedProtocol):
    mode = None
    count = 0
    def connection_made(self, transport):
        self.t = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    def get_buffer(self, hint):
        return SCRATCH  # shared: a sink discards, an echo copies out at once
    def buffer_updated(self, n):
        if self.mode is None:
            self.mode = "S" if SCRATCH[0] == 0x53 else "E"
            if self.mode == "S":
                self.count -= 1  # the mode byte
        if self.mode == "S":
            self.count += n
        else:
            self.t.write(bytes(VIEW[:n]))
    def pause_writing(self):
        self.t.pause_reading()
    def resume_writing(self):
        self.t.resume_reading()
    def eof_received(self):
        if self.mode == "S":
            self.t.write(self.count.to_bytes(8, "big"))
        return False

async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Conn, "127.0.0.1", 0, backlog=4096)
    print(server.sockets[0].getsockname()[1], flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    server.close()

asyncio.run(main())
"""

SOURCE = r"""
import json, os, socket, sys, time
port, size, path, head = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
s = socket.create_connection(("127.0.0.1", port), timeout=120)
if head != "-":
    s.sendall(head.encode())
    resp = b""
    while b"\r\n\r\n" not in resp:  # bounded by the timeout and the 64 KiB check
        chunk = s.recv(4096)
        if not chunk or len(resp) > 65536:
            sys.exit("connection closed during CONNECT")
        resp += chunk
    if not resp.startswith(b"HTTP/1.1 200"):
        sys.exit("CONNECT refused: " + resp.split(b"\r\n")[0].decode())
s.sendall(b"S")
fsize = os.path.getsize(path)
t0 = time.monotonic()
sent = 0
with open(path, "rb") as f:
    while sent < size:  # bounded: each pass sends > 0 bytes
        n = s.sendfile(f, 0, min(fsize, size - sent))
        if n <= 0:
            sys.exit("sendfile sent nothing")
        sent += n
s.shutdown(socket.SHUT_WR)
got = b""
while len(got) < 8:
    chunk = s.recv(8 - len(got))
    if not chunk:
        break
    got += chunk
t1 = time.monotonic()
s.close()
acked = int.from_bytes(got, "big") if len(got) == 8 else -1
print(json.dumps({"t0": t0, "t1": t1, "bytes": sent, "acked": acked}))
"""


BARE = r"""
import asyncio, signal, socket, sys
from cport.proxy import ProxyRequestError, http_response, read_connect_head, relay

UPSTREAM = ("127.0.0.1", int(sys.argv[1]))

async def handle(conn):
    loop = asyncio.get_running_loop()
    up = None
    try:
        try:
            req = await read_connect_head(conn, timeout=10)
        except ProxyRequestError as exc:
            await loop.sock_sendall(conn, http_response(exc.status, body={"reason": exc.code}))
            return
        up = socket.socket()
        up.setblocking(False)
        await loop.sock_connect(up, UPSTREAM)
        await loop.sock_sendall(conn, http_response(200))
        await relay(conn, up, initial_up=req.leftover)
    except OSError:
        pass
    finally:
        conn.close()
        if up is not None:
            up.close()

async def main():
    loop = asyncio.get_running_loop()
    ls = socket.create_server(("127.0.0.1", 0), backlog=4096)
    ls.setblocking(False)
    print(ls.getsockname()[1], flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    tasks = set()

    async def accept():
        while True:
            conn, _ = await loop.sock_accept(ls)
            conn.setblocking(False)
            task = asyncio.ensure_future(handle(conn))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    acceptor = asyncio.ensure_future(accept())
    await stop.wait()
    acceptor.cancel()

asyncio.run(main())
"""


# --------------------------------------------------------------------------------------------
# processes
# --------------------------------------------------------------------------------------------


def children_of(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            out.append(int(entry))
    return out


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its waited-for children, in seconds."""
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


class Procs:
    """Every child the bench starts; each is stopped by its own pid."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}

    def start(
        self, name: str, argv: list[str], *, stdout_pipe: bool = False
    ) -> subprocess.Popen[bytes]:
        log = self.workdir / f"{name}.log"
        self.logs[name] = log
        with open(log, "wb") as fh:
            proc = subprocess.Popen(
                argv,
                stdout=subprocess.PIPE if stdout_pipe else fh,
                stderr=fh,
                cwd=self.workdir,
            )
        self.procs[name] = proc
        return proc

    def pid(self, name: str) -> int:
        return self.procs[name].pid

    def check_alive(self, name: str) -> None:
        proc = self.procs[name]
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.tail(name)}")

    def tail(self, name: str, n: int = 30) -> str:
        log = self.logs.get(name)
        if log is None or not log.exists():
            return ""
        return "\n".join(log.read_text(errors="replace").splitlines()[-n:])

    def stop_all(self) -> None:
        for name in reversed(list(self.procs)):
            self.stop(name)

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        kids = children_of(proc.pid) if name == "socat" else []
        for pid in kids:  # socat's per-connection children, each by its pid
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for pid in kids:
            with contextlib.suppress(ProcessLookupError, ChildProcessError):
                os.kill(pid, signal.SIGKILL)
        if proc.stdout is not None:
            proc.stdout.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_port(port: int, procs: Procs, name: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        procs.check_alive(name)
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{name} is not listening on {port} after {timeout}s:\n{procs.tail(name)}")


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(NOFILE, soft)
    for limits in ((want, max(want, hard)), (min(want, hard), hard)):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, limits)
            break
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# --------------------------------------------------------------------------------------------
# issuer
# --------------------------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Issuer:
    """ES256 issuer: JWKS (and discovery) from a loopback http.server thread; mints tokens."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        nums = self.key.public_key().public_numbers()
        self.kid = secrets.token_hex(4)
        jwk = {
            "kty": "EC",
            "crv": "P-256",
            "kid": self.kid,
            "alg": "ES256",
            "use": "sig",
            "x": b64(nums.x.to_bytes(32, "big")),
            "y": b64(nums.y.to_bytes(32, "big")),
        }
        issuer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.endswith("/.well-known/openid-configuration"):
                    doc: dict[str, Any] = {"issuer": issuer.url, "jwks_uri": issuer.url + "/jwks"}
                elif self.path.endswith("/jwks"):
                    doc = {"keys": [jwk]}
                else:
                    self.send_error(404)
                    return
                body = json.dumps(doc).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((HOST, 0), Handler)
        self.url = f"http://{HOST}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.header = b64(json.dumps({"alg": "ES256", "typ": "JWT", "kid": self.kid}).encode())

    def mint(self, sub: str = "bench-user", ttl: int = 7200) -> str:
        now = int(time.time())
        claims = {
            "iss": self.url,
            "aud": "cport",
            "sub": sub,
            "iat": now,
            "nbf": now - 5,
            "exp": now + ttl,
            "jti": secrets.token_hex(8),
        }
        signing = self.header + "." + b64(json.dumps(claims).encode())
        r, s = decode_dss_signature(self.key.sign(signing.encode(), ec.ECDSA(hashes.SHA256())))
        return signing + "." + b64(r.to_bytes(32, "big") + s.to_bytes(32, "big"))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --------------------------------------------------------------------------------------------
# targets and their configuration
# --------------------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    port: int
    pid: int | None  # the process doing the proxying (None: direct)
    connect: bool = False  # speaks CONNECT with a bearer token (cport)


def connect_head(token: str) -> bytes:
    return (
        f"CONNECT {AUTHORITY} HTTP/1.1\r\nHost: {AUTHORITY}\r\n"
        f"Proxy-Authorization: Bearer {token}\r\n\r\n"
    ).encode()


def write_haproxy(
    workdir: Path, port: int, upstream: int, maxconn: int, *, splice: bool = False
) -> Path:
    cfg = workdir / ("haproxy-splice.cfg" if splice else "haproxy.cfg")
    option = "    option splice-auto\n" if splice else ""
    cfg.write_text(f"""\
global
    maxconn {maxconn}
defaults
    mode tcp
{option}    timeout connect 5s
    timeout client 600s
    timeout server 600s
frontend bench
    bind {HOST}:{port}
    default_backend sink
backend sink
    server upstream {HOST}:{upstream}
""")
    return cfg


def write_cport(workdir: Path, port: int, upstream: int, issuer: Issuer) -> Path:
    (workdir / "policies").mkdir(exist_ok=True)
    (workdir / "inventory").mkdir(exist_ok=True)
    (workdir / "policies" / "bench.yaml").write_text(f"""\
apiVersion: cport.dev/v1alpha1
kind: PortPolicy
metadata: {{name: sink-for-bench-users, namespace: bench}}
spec:
  selector: {{matchLabels: {{app: sink}}}}
  ingress:
    - from:
        - users: {{issuer: bench}}
      ports: [{{port: {WORKLOAD_PORT}}}]
      authentication: required
""")
    (workdir / "inventory" / "bench.yaml").write_text(f"""\
apiVersion: cport.dev/v1alpha1
kind: Workload
metadata: {{name: sink, namespace: bench, labels: {{app: sink}}}}
spec:
  addresses: [198.51.100.50]
  ports: [{{name: data, port: {WORKLOAD_PORT}}}]
""")
    cfg = workdir / "cport.yaml"
    cfg.write_text(f"""\
node: bench
stateDir: {workdir}/state
policies: [{workdir}/policies]
inventory: [{workdir}/inventory]
api: {{socket: {workdir}/agent.sock}}
gateway:
  listen: {HOST}:{port}
  upstreams: {{"bench/sink:{WORKLOAD_PORT}": "{HOST}:{upstream}"}}
  limits: {{maxConnections: 20000, perIdentityConnections: 20000, drainTimeout: 1s}}
identity:
  issuers:
    - name: bench
      issuer: {issuer.url}
      audiences: [cport]
      jwksUri: {issuer.url}/jwks
""")
    return cfg


def wait_cport_ready(workdir: Path, procs: Procs, timeout: float = 60.0) -> None:
    import httpx

    sock = workdir / "agent.sock"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        procs.check_alive("cport")
        if sock.exists():
            with (
                contextlib.suppress(httpx.HTTPError),
                httpx.Client(
                    transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://cport", timeout=5
                ) as client,
            ):
                if client.get("/readyz").status_code == 200:
                    return
        time.sleep(0.1)
    raise RuntimeError(f"cport up not ready after {timeout}s:\n{procs.tail('cport')}")


def cport_available() -> str | None:
    """None when `cport up` exists, else why not."""
    if not Path(CPORT).exists():
        return f"{CPORT} not found"
    out = subprocess.run(
        [CPORT, "up", "--help"], check=False, capture_output=True, text=True, timeout=60
    )
    if out.returncode != 0:
        return f"`cport up --help` exited {out.returncode}: {out.stderr.strip()[-300:]}"
    return None


# --------------------------------------------------------------------------------------------
# client operations (asyncio, raw non-blocking sockets)
# --------------------------------------------------------------------------------------------


class Refused(Exception):
    pass


async def open_tunnel(target: Target, token: str | None) -> socket.socket:
    """Connected socket to the upstream through `target` (CONNECT done for cport)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await loop.sock_connect(sock, (HOST, target.port))
        if target.connect:
            assert token is not None
            await loop.sock_sendall(sock, connect_head(token))
            resp = b""
            for _ in range(64):  # bounded: a response head is far below 64 reads
                chunk = await loop.sock_recv(sock, 4096)
                if not chunk:
                    raise Refused("closed during CONNECT")
                resp += chunk
                if b"\r\n\r\n" in resp:
                    break
            if not resp.startswith(b"HTTP/1.1 200"):
                raise Refused(resp.split(b"\r\n", 1)[0].decode(errors="replace"))
        return sock
    except BaseException:
        sock.close()
        raise


async def echo(sock: socket.socket, data: bytes) -> None:
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(sock, data)
    got = 0
    while got < len(data):  # bounded: each pass reads ≥ 1 byte or raises
        chunk = await loop.sock_recv(sock, 65536)
        if not chunk:
            raise Refused("closed during echo")
        got += len(chunk)


async def one_connection(target: Target, token: str | None) -> None:
    sock = await open_tunnel(target, token)
    try:
        await echo(sock, b"x")
    finally:
        sock.close()


@dataclass
class RateResult:
    rate: float
    ok: int
    errors: int
    seconds: float
    first_error: str = ""
    cpu_us_per_conn: float = 0.0  # the proxy's CPU (user + system) per connection


async def conn_rate(
    target: Target, seconds: float, concurrency: int, tokens: Callable[[], str | None]
) -> RateResult:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    ok = errors = 0
    first_error = ""
    exhausted = False

    async def worker() -> None:
        nonlocal ok, errors, first_error, exhausted
        while loop.time() < deadline and not exhausted:  # bounded by the deadline
            try:
                token = tokens()
            except IndexError:
                exhausted = True
                return
            try:
                await asyncio.wait_for(one_connection(target, token), 10)
                ok += 1
            except (OSError, Refused, TimeoutError) as exc:
                errors += 1
                first_error = first_error or f"{type(exc).__name__}: {exc}"
                await asyncio.sleep(0.01)

    t0 = loop.time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = loop.time() - t0
    return RateResult(ok / elapsed, ok, errors, elapsed, first_error)


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


# --------------------------------------------------------------------------------------------
# sections
# --------------------------------------------------------------------------------------------


@dataclass
class Bench:
    args: argparse.Namespace
    workdir: Path
    procs: Procs
    issuer: Issuer
    upstream_port: int
    targets: dict[str, Target]
    blob: Path
    cport_missing: str | None
    out: dict[str, Any] = field(default_factory=dict)
    token: str = ""

    def token_for(self, target: Target) -> str | None:
        return self.token if target.connect else None


def run_source(port: int, size: int, blob: Path, head: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [PY, "-c", SOURCE, str(port), str(size), str(blob), head],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish_sources(sources: list[subprocess.Popen[str]], timeout: float) -> list[dict[str, Any]]:
    results = []
    try:
        for src in sources:
            stdout, stderr = src.communicate(timeout=timeout)
            if src.returncode != 0:
                raise RuntimeError(f"source exited {src.returncode}: {stderr.strip()[-500:]}")
            results.append(json.loads(stdout))
    finally:
        for src in sources:
            if src.poll() is None:
                src.kill()
                src.wait(5)
    for r in results:
        if r["acked"] != r["bytes"]:
            raise RuntimeError(f"sink counted {r['acked']} of {r['bytes']} bytes")
    return results


def bulk(b: Bench, target: Target, streams: int, size: int) -> tuple[float, float]:
    """(MiB/s aggregate, proxy CPU s per GiB) for `streams` concurrent uploads of `size`."""
    cpu0 = cpu_seconds(target.pid) if target.pid else 0.0
    heads = [
        connect_head(b.issuer.mint()).decode() if target.connect else "-" for _ in range(streams)
    ]
    sources = [run_source(target.port, size, b.blob, h) for h in heads]
    results = finish_sources(sources, timeout=600)
    if target.pid and target.name == "socat":
        # socat forks per connection: its children's CPU counts once socat has reaped them
        for _ in range(100):  # bounded: ≤ 5 s
            if not children_of(target.pid):
                break
            time.sleep(0.05)
    cpu = (cpu_seconds(target.pid) - cpu0) if target.pid else 0.0
    total = sum(r["bytes"] for r in results)
    wall = max(r["t1"] for r in results) - min(r["t0"] for r in results)
    return total / wall / 2**20, cpu / (total / 2**30)


def settle(pid: int, baseline_fds: int, timeout: float = 60.0) -> tuple[int, int]:
    """Wait (bounded) until the proxy is back to its fd baseline; (fds, RSS KiB) then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and fd_count(pid) > baseline_fds + 2:
        time.sleep(0.25)
    time.sleep(0.5)
    return fd_count(pid), rss_kib(pid)


def section_relay(b: Bench) -> None:
    """Splice vs the asyncio copy engine, in this process."""
    size = (512 << 20) if b.args.quick else (2 << 30)
    rounds = 2 if b.args.quick else 3

    async def once(use_splice: bool) -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        with socket.create_server((HOST, 0)) as gw:
            gw.setblocking(False)
            src = run_source(gw.getsockname()[1], size, b.blob, "-")
            try:
                client, _ = await asyncio.wait_for(loop.sock_accept(gw), 30)
            except BaseException:
                src.kill()
                src.wait(5)
                raise
        client.setblocking(False)
        up = socket.socket()
        up.setblocking(False)
        try:
            await loop.sock_connect(up, (HOST, b.upstream_port))
            cpu0 = time.process_time()
            result = await asyncio.wait_for(relay(client, up, use_splice=use_splice), 600)
            cpu = time.process_time() - cpu0
        finally:
            client.close()
            up.close()
        (r,) = finish_sources([src], timeout=60)
        assert result.bytes_up == size + 1, result
        return size / (r["t1"] - r["t0"]) / 2**20, cpu / (size / 2**30)

    best: dict[str, tuple[float, float]] = {}
    for _ in range(rounds):
        for engine in ("splice", "copy"):
            mibs, cpu = asyncio.run(once(engine == "splice"))
            if engine not in best or mibs > best[engine][0]:
                best[engine] = (mibs, cpu)
    print(
        f"\nrelay engines (cport.proxy.relay in this process), {size >> 20} MiB, best of {rounds}"
    )
    print(f"{'engine':<26} {'MiB/s':>9} {'CPU s/GiB':>10}")
    for engine, (mibs, cpu) in best.items():
        label = "splice (os.splice, pipes)" if engine == "splice" else "copy (sock_recv_into)"
        print(f"{label:<26} {mibs:>9,.0f} {cpu:>10.3f}")
    b.out["relay_splice_mibs"] = round(best["splice"][0])
    b.out["relay_copy_mibs"] = round(best["copy"][0])
    b.out["relay_splice_cpu_s_per_gib"] = round(best["splice"][1], 3)
    b.out["relay_copy_cpu_s_per_gib"] = round(best["copy"][1], 3)


def section_throughput(b: Bench) -> None:
    size = (512 << 20) if b.args.quick else (2 << 30)
    rounds = 3
    order = ("direct", "haproxy", "haproxy-splice", "socat", "bare", "cport")
    names = [n for n in order if n in b.targets]
    best: dict[tuple[str, int], tuple[float, float]] = {}
    for _ in range(rounds):
        for streams in (1, 2):
            for name in names:
                mibs, cpu = bulk(b, b.targets[name], streams, size)
                key = (name, streams)
                if key not in best or mibs > best[key][0]:
                    best[key] = (mibs, cpu)
    print(f"\nthroughput: upload, {size >> 20} MiB per stream, best of {rounds} (MiB/s)")
    print(f"{'':<15} {'1 stream':>10} {'2 streams':>10} {'CPU s/GiB':>10}  target")
    h1 = best.get(("haproxy", 1), (0.0, 0.0))[0]
    for name in names:
        one, two = best[(name, 1)], best[(name, 2)]
        cpu = f"{one[1]:>10.2f}" if name != "direct" else f"{'-':>10}"
        note = ""
        if name == "cport" and h1:
            ratio = one[0] / h1
            note = (
                f"{ratio:.2f}x haproxy, >= {TARGET_THROUGHPUT}x: {mark(ratio >= TARGET_THROUGHPUT)}"
            )
        if name == "haproxy-splice":
            note = "(info: option splice-auto)"
        print(f"{name:<15} {one[0]:>10,.0f} {two[0]:>10,.0f} {cpu}  {note}")
    for name in names:
        key = name.replace("-", "_")
        b.out[f"throughput_{key}_mibs"] = round(best[(name, 1)][0])
        b.out[f"throughput2_{key}_mibs"] = round(best[(name, 2)][0])
        if name != "direct":
            b.out[f"cpu_s_per_gib_{key}"] = round(best[(name, 1)][1], 3)
    if "cport" in names and h1:
        b.out["throughput_vs_haproxy"] = round(best[("cport", 1)][0] / h1, 3)


def section_connrate(b: Bench) -> None:
    seconds = 2.0 if b.args.quick else 5.0
    rounds = 3
    concurrency = 32
    results: dict[str, RateResult] = {}
    names = [n for n in ("direct", "haproxy", "socat", "bare", "cport") if n in b.targets]
    runs: list[tuple[str, Target, Callable[[], Callable[[], str | None]]]] = []
    for name in names:
        target = b.targets[name]
        tok = b.token_for(target)
        runs.append((name, target, lambda tok=tok: lambda: tok))
    if "cport" in b.targets:
        n_tokens = int(seconds * 4000) + 1000
        t0 = time.perf_counter()
        pools = [[b.issuer.mint() for _ in range(n_tokens)] for _ in range(rounds)]
        mint_s = time.perf_counter() - t0
        print(f"  (minted {rounds} x {n_tokens:,} unique ES256 tokens in {mint_s:.1f} s)")
        runs.append(("cport, unique tokens", b.targets["cport"], lambda: pools.pop().pop))

    async def go() -> None:
        for _ in range(rounds):  # targets interleaved; the best round of each counts
            for name, target, tokens in runs:
                cpu0 = cpu_seconds(target.pid) if target.pid else 0.0
                r = await conn_rate(target, seconds, concurrency, tokens())
                if target.pid and r.ok:
                    r.cpu_us_per_conn = (cpu_seconds(target.pid) - cpu0) / r.ok * 1e6
                best = results.get(name)
                if best is None or r.rate > best.rate:
                    r.errors += best.errors if best else 0
                    results[name] = r
                else:
                    best.errors += r.errors

    asyncio.run(go())
    h = results.get("haproxy")
    print(f"\nconnection rate: {concurrency} concurrent clients, best of {rounds} x {seconds:g} s; "
          "connect, (CONNECT), 1 echoed byte, close")  # fmt: skip
    print(f"{'':<22} {'conn/s':>9} {'errors':>7} {'proxy CPU us/conn':>18}  target")
    for name, r in results.items():
        note = ""
        if name.startswith("cport") and h and h.rate:
            ratio = r.rate / h.rate
            note = f"{ratio:.2f}x haproxy"
            if name == "cport":
                note += f", >= {TARGET_CONNRATE}x: {mark(ratio >= TARGET_CONNRATE)}"
        cpu = f"{r.cpu_us_per_conn:,.0f}" if r.cpu_us_per_conn else "-"
        print(f"{name:<22} {r.rate:>9,.0f} {r.errors:>7} {cpu:>18}  {note}")
        if r.first_error:
            print(f"{'':<22} first error: {r.first_error}")
    for name, r in results.items():
        key = name.replace(", unique tokens", "_unique")
        b.out[f"connrate_{key}"] = round(r.rate)
        b.out[f"connrate_{key}_errors"] = r.errors
        if r.cpu_us_per_conn:
            b.out[f"connrate_{key}_cpu_us"] = round(r.cpu_us_per_conn)
    if "cport" in results and h and h.rate:
        b.out["connrate_vs_haproxy"] = round(results["cport"].rate / h.rate, 3)
        b.out["connrate_unique_vs_haproxy"] = round(
            results["cport, unique tokens"].rate / h.rate, 3
        )


def section_latency(b: Bench) -> None:
    n = 300 if b.args.quick else 2000
    names = [n for n in ("direct", "haproxy", "socat", "bare", "cport") if n in b.targets]
    samples: dict[str, list[float]] = {name: [] for name in names}

    async def go() -> None:
        for name in names:  # warm-up
            for _ in range(20):
                await one_connection(b.targets[name], b.token_for(b.targets[name]))
        for _ in range(n):
            for name in names:
                target = b.targets[name]
                t0 = time.perf_counter()
                await asyncio.wait_for(one_connection(target, b.token_for(target)), 10)
                samples[name].append((time.perf_counter() - t0) * 1000)

    asyncio.run(go())
    print(f"\nsetup latency: connect → (CONNECT → 200) → 1 echoed byte, {n} sequential each (ms)")
    print(f"{'':<10} {'p50':>8} {'p99':>8} {'+p50':>8} {'+p99':>8}")
    d50, d99 = percentile(samples["direct"], 50), percentile(samples["direct"], 99)
    for name in names:
        p50, p99 = percentile(samples[name], 50), percentile(samples[name], 99)
        print(f"{name:<10} {p50:>8.3f} {p99:>8.3f} {p50 - d50:>+8.3f} {p99 - d99:>+8.3f}")
        b.out[f"setup_{name}_p50_ms"] = round(p50, 3)
        b.out[f"setup_{name}_p99_ms"] = round(p99, 3)
    if "cport" in names:
        b.out["setup_p50_added_ms"] = round(percentile(samples["cport"], 50) - d50, 3)
        b.out["setup_p99_added_ms"] = round(percentile(samples["cport"], 99) - d99, 3)


@dataclass
class IdleRow:
    name: str
    kib_per_conn: float
    fds_per_conn: float
    fds_left: int  # fds above the baseline once every tunnel was closed again
    rss_left_kib: int  # RSS above the baseline then (memory kept by the allocator)
    close_s: float  # how long the proxy took to get back to its fd baseline


def section_idle(b: Bench) -> None:
    count = b.args.idle_conns
    rows: list[IdleRow] = []

    async def hold(target: Target) -> IdleRow:
        assert target.pid is not None
        # warm-up: a few hundred tunnels opened and closed, so one-off allocations are done
        for _ in range(200):
            await one_connection(target, b.token_for(target))
        await asyncio.sleep(1.0)
        rss0, fds0 = rss_kib(target.pid), fd_count(target.pid)
        socks: list[socket.socket] = []
        sem = asyncio.Semaphore(64)

        async def opener() -> None:
            async with sem:
                sock = await asyncio.wait_for(open_tunnel(target, b.token_for(target)), 30)
                socks.append(sock)
                await asyncio.wait_for(echo(sock, b"i"), 30)

        try:
            await asyncio.gather(*(opener() for _ in range(count)))
            await asyncio.sleep(2.0)
            rss1, fds1 = rss_kib(target.pid), fd_count(target.pid)
        finally:
            for sock in socks:
                sock.close()
        t0 = time.monotonic()
        fds2, rss2 = settle(target.pid, fds0)
        return IdleRow(
            target.name,
            (rss1 - rss0) / count,
            (fds1 - fds0) / count,
            fds2 - fds0,
            rss2 - rss0,
            time.monotonic() - t0,
        )

    for name in [n for n in ("cport", "haproxy") if n in b.targets]:
        rows.append(asyncio.run(hold(b.targets[name])))
    print(f"\nidle tunnels: {count:,} open, each echoed one byte; RSS and fds of the proxy")
    print(
        f"{'':<10} {'KiB/conn':>9} {'fds/conn':>9} {'closed in':>10} {'fds left':>9} "
        f"{'RSS kept':>9}  target"
    )
    for r in rows:
        note = ""
        if r.name == "cport":
            note = f"<= {TARGET_IDLE_KIB:g} KiB: {mark(r.kib_per_conn <= TARGET_IDLE_KIB)}"
        print(
            f"{r.name:<10} {r.kib_per_conn:>9.1f} {r.fds_per_conn:>9.2f} {r.close_s:>9.1f}s "
            f"{r.fds_left:>9} {r.rss_left_kib / 1024:>7.1f}Mi  {note}"
        )
        b.out[f"kib_per_idle_conn_{r.name}"] = round(r.kib_per_conn, 2)
        b.out[f"fds_per_idle_conn_{r.name}"] = round(r.fds_per_conn, 3)
        b.out[f"idle_close_s_{r.name}"] = round(r.close_s, 2)
        b.out[f"idle_fds_left_{r.name}"] = r.fds_left
    if "kib_per_idle_conn_cport" in b.out:
        b.out["kib_per_idle_conn"] = b.out["kib_per_idle_conn_cport"]
    b.out["idle_conns"] = count
    print("(closed in: until the proxy's fd count is back at its baseline after the clients "
          "closed; RSS kept: RSS above the baseline then)")  # fmt: skip


def section_soak(b: Bench) -> None:
    if "cport" not in b.targets:
        return
    tunnels = 100 if b.args.quick else 1000
    seconds = 20.0 if b.args.quick else 300.0
    target = b.targets["cport"]
    assert target.pid is not None
    pid = target.pid
    samples: list[tuple[float, int, int]] = []
    stats = {"tunnels": 0, "errors": 0, "messages": 0}
    first_error: list[str] = []

    async def worker(seed: int) -> None:
        rnd = random.Random(seed)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        message = b"E" + os.urandom(1023)  # not "S": that would make a sink
        while loop.time() < deadline:  # bounded by the deadline
            try:
                sock = await asyncio.wait_for(open_tunnel(target, b.token), 10)
            except (OSError, Refused, TimeoutError) as exc:
                stats["errors"] += 1
                first_error.append(f"open: {type(exc).__name__}: {exc}")
                await asyncio.sleep(0.1)
                continue
            try:
                life = loop.time() + rnd.uniform(0.2, 2.0)
                while loop.time() < min(life, deadline):
                    await asyncio.wait_for(echo(sock, message), 10)
                    stats["messages"] += 1
                    await asyncio.sleep(rnd.uniform(0.01, 0.1))
                stats["tunnels"] += 1
            except (OSError, Refused, TimeoutError) as exc:
                stats["errors"] += 1
                first_error.append(f"echo: {type(exc).__name__}: {exc}")
            finally:
                sock.close()

    async def sampler(stop: asyncio.Event) -> None:
        t0 = time.monotonic()
        while not stop.is_set():  # bounded: stop is set when the workers end
            samples.append((time.monotonic() - t0, fd_count(pid), rss_kib(pid)))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)

    async def go() -> None:
        stop = asyncio.Event()
        task = asyncio.ensure_future(sampler(stop))
        await asyncio.gather(*(worker(i) for i in range(tunnels)))
        stop.set()
        await task

    fds_before = fd_count(pid)
    asyncio.run(go())
    fds_after, rss_after = settle(pid, fds_before)
    # steady state: the first 10% is ramp-up, the last 5% ramp-down
    early = [x for x in samples if 0.10 * seconds <= x[0] < 0.50 * seconds] or samples
    late = [x for x in samples if 0.50 * seconds <= x[0] < 0.95 * seconds] or samples
    fd_early, fd_late = (
        statistics.median(x[1] for x in early),
        statistics.median(x[1] for x in late),
    )
    rss_early = statistics.median(x[2] for x in early)
    rss_late = statistics.median(x[2] for x in late)
    peak_fds, peak_rss = max(x[1] for x in samples), max(x[2] for x in samples)
    print(
        f"\nsoak: {tunnels} concurrent tunnels with churn for {seconds:g} s ({stats['tunnels']:,} "
        f"tunnels, {stats['messages']:,} echoes, {stats['errors']} errors)"
    )
    print(
        f"{'agent':<14} {'before':>9} {'1st half':>9} {'2nd half':>9} {'growth':>9} {'max':>9} "
        f"{'after':>9}"
    )
    print(
        f"{'fds':<14} {fds_before:>9,} {fd_early:>9,.0f} {fd_late:>9,.0f} "
        f"{fd_late - fd_early:>+9,.0f} {peak_fds:>9,} {fds_after:>9,}"
    )
    print(
        f"{'RSS MiB':<14} {samples[0][2] / 1024:>9.1f} {rss_early / 1024:>9.1f} "
        f"{rss_late / 1024:>9.1f} {(rss_late - rss_early) / 1024:>+9.1f} {peak_rss / 1024:>9.1f} "
        f"{rss_after / 1024:>9.1f}"
    )
    print("(1st/2nd half: medians of the samples in 10-50% and 50-95% of the run)")
    if first_error:
        print(f"  first error: {first_error[0]}")
    b.out.update(
        soak_tunnels=tunnels,
        soak_seconds=seconds,
        soak_completed=stats["tunnels"],
        soak_errors=stats["errors"],
        soak_fds_before=fds_before,
        soak_fds_median_1st_half=fd_early,
        soak_fds_median_2nd_half=fd_late,
        soak_fds_max=peak_fds,
        soak_fds_after=fds_after,
        soak_rss_median_1st_half_kib=rss_early,
        soak_rss_median_2nd_half_kib=rss_late,
        soak_rss_growth_kib=rss_late - rss_early,
        soak_rss_max_kib=peak_rss,
        soak_rss_after_kib=rss_after,
    )


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else "")
    parser.add_argument("--quick", action="store_true", help="smaller runs (about a minute)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument(
        "--only", default=",".join(SECTIONS), help=f"sections: {','.join(SECTIONS)}"
    )
    parser.add_argument(
        "--idle-conns",
        type=int,
        default=0,
        help="idle tunnels to hold (default 10,000, fewer when RLIMIT_NOFILE cannot allow it)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(only) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    for tool in ("haproxy", "socat"):
        if shutil.which(tool) is None:
            print(f"FAIL: {tool} is not installed", file=sys.stderr)
            return 2

    nofile = raise_nofile()
    # a proxy holds two fds per tunnel; leave room for everything else it has open
    fit = (nofile - 500) // 2
    if not args.idle_conns:
        args.idle_conns = min(10_000, fit)
        if args.idle_conns < 10_000:
            print(f"NOTE: RLIMIT_NOFILE is {nofile:,} and cannot be raised (no CAP_SYS_RESOURCE): "
                  f"{args.idle_conns:,} idle tunnels instead of 10,000")  # fmt: skip
    print(f"bench_proxy: {os.cpu_count()} CPUs, RLIMIT_NOFILE {nofile:,}, "
          f"python {sys.version.split()[0]}, {'quick' if args.quick else 'full'} run")  # fmt: skip
    workdir = Path(tempfile.mkdtemp(prefix="cport-bench-proxy-"))
    procs = Procs(workdir)
    issuer = Issuer()
    out: dict[str, Any] = {"bench": "proxy"}
    try:
        blob = workdir / "blob.bin"
        with open(blob, "wb") as fh:
            for _ in range(64):
                fh.write(os.urandom(1 << 20))

        up = procs.start("upstream", [PY, "-c", UPSTREAM], stdout_pipe=True)
        assert up.stdout is not None
        upstream_port = int(up.stdout.readline())
        targets = {"direct": Target("direct", upstream_port, None)}

        hport, hsport, sport = free_port(), free_port(), free_port()
        hcfg = write_haproxy(workdir, hport, upstream_port, min(30_000, fit))
        hscfg = write_haproxy(workdir, hsport, upstream_port, 1000, splice=True)
        procs.start("haproxy", ["haproxy", "-f", str(hcfg), "-db"])
        procs.start("haproxy-splice", ["haproxy", "-f", str(hscfg), "-db"])
        procs.start("socat", ["socat", f"TCP-LISTEN:{sport},fork,reuseaddr,backlog=4096",
                              f"TCP:{HOST}:{upstream_port}"])  # fmt: skip
        bare = procs.start("bare", [PY, "-c", BARE, str(upstream_port)], stdout_pipe=True)
        assert bare.stdout is not None
        bport = int(bare.stdout.readline() or 0)
        for name, port in (("haproxy", hport), ("haproxy-splice", hsport), ("socat", sport),
                           ("bare", bport)):  # fmt: skip
            wait_port(port, procs, name)
            targets[name] = Target(name, port, procs.pid(name), connect=name == "bare")

        missing = cport_available()
        if missing is None:
            cport_port = free_port()
            cfg = write_cport(workdir, cport_port, upstream_port, issuer)
            procs.start("cport", [CPORT, "up", "--config", str(cfg)])
            wait_cport_ready(workdir, procs)
            targets["cport"] = Target("cport", cport_port, procs.pid("cport"), connect=True)
        else:
            print(f"NOTE: cport side skipped: {missing}")
        out["cport_available"] = missing is None

        bench = Bench(args, workdir, procs, issuer, upstream_port, targets, blob, missing, out)
        bench.token = issuer.mint()
        if "cport" in targets:  # the token and the path work before anything is timed
            asyncio.run(one_connection(targets["cport"], bench.token))
        sections: dict[str, Callable[[Bench], None]] = {
            "relay": section_relay,
            "throughput": section_throughput,
            "connrate": section_connrate,
            "latency": section_latency,
            "idle": section_idle,
            "soak": section_soak,
        }
        for name in SECTIONS:
            if name in only:
                sections[name](bench)
                for proc in list(procs.procs):
                    procs.check_alive(proc)
    finally:
        procs.stop_all()
        issuer.close()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"work directory kept: {workdir}")

    met = []
    if "throughput_vs_haproxy" in out:
        met.append(out["throughput_vs_haproxy"] >= TARGET_THROUGHPUT)
    if "connrate_vs_haproxy" in out:
        met.append(out["connrate_vs_haproxy"] >= TARGET_CONNRATE)
    if "kib_per_idle_conn" in out:
        met.append(out["kib_per_idle_conn"] <= TARGET_IDLE_KIB)
    out["targets_met"] = all(met) if met else None
    out["quick"] = args.quick
    head = {k: out.pop(k, None) for k in ("throughput_vs_haproxy", "connrate_vs_haproxy",
                                          "setup_p99_added_ms", "kib_per_idle_conn")}  # fmt: skip
    print(json.dumps({"bench": out.pop("bench"), **head, **out}))
    return 1 if args.strict and not all(met) else 0


if __name__ == "__main__":
    sys.exit(main())
