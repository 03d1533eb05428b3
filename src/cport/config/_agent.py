"""The agent's own sections of the configuration file (`cport up`): where policies and the
inventory live, the local API, the CONNECT gateway, per-port listeners, the audit store and
development mode. Paths are relative to the configuration file.

::

    node: node-1                       # default: the host name
    stateDir: .cport                   # identities, audit.db, signing key, revocations
    policies: [policies/]              # watched; a bad change keeps the last good table
    inventory: [inventory/]
    api:
      socket: .cport/agent.sock        # default: <stateDir>/agent.sock (owner-only)
      listen: 127.0.0.1:9464           # optional loopback TCP
      adminTokenFile: admin.token      # required for any non-loopback client
    gateway:
      listen: 127.0.0.1:8443           # HTTP CONNECT with Proxy-Authorization: Bearer
      upstreams: {payments/ledger:5432: 127.0.0.1:15432}   # where a workload port really is
      limits: {maxConnections: 10000, perIdentityConnections: 256, handshakeTimeout: 10s,
               maxHeaderBytes: 8192, connectTimeout: 5s, drainTimeout: 10s}
    listeners:                         # front one workload port; peers by address or SPIFFE
      - listen: 127.0.0.1:15433
        to: payments/ledger:5432
        upstream: 127.0.0.1:15432
        identify: address              # address | spiffe (mTLS; needs tls.cert/tls.key)
    audit: {store: sqlite}             # sqlite (default, <stateDir>/audit.db) | postgres (dsn:)
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from pathlib import Path

from cport.model._fields import Cursor

_ROOT_KEYS = frozenset(
    {
        "node",
        "stateDir",
        "policies",
        "inventory",
        "api",
        "gateway",
        "listeners",
        "audit",
        "recheckInterval",
        "datapath",
    }
)


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return self.host == "localhost"


@dataclass(frozen=True, slots=True)
class Limits:
    """Gateway and listener limits; each refusal has its own reason code (docs/agent.md)."""

    max_connections: int = 10_000  # too-many-connections
    per_identity_connections: int = 256  # identity-connection-cap
    handshake_timeout: float = 10.0  # handshake-timeout
    max_header_bytes: int = 8192  # header-too-large
    connect_timeout: float = 5.0  # upstream-unreachable (502)
    drain_timeout: float = 10.0  # how long SIGTERM waits for connections to finish


@dataclass(frozen=True, slots=True)
class Target:
    """A workload port: ``namespace/name:port``."""

    namespace: str
    name: str
    port: int

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}:{self.port}"


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    listen: HostPort
    upstreams: dict[Target, HostPort] = field(default_factory=dict)
    limits: Limits = Limits()


@dataclass(frozen=True, slots=True)
class ListenerSettings:
    listen: HostPort
    target: Target
    upstream: HostPort | None  # None: the workload's first address, on the target port
    identify: str = "address"  # address | spiffe
    tls_cert: Path | None = None
    tls_key: Path | None = None
    limits: Limits = Limits()


@dataclass(frozen=True, slots=True)
class ApiSettings:
    socket: Path
    listen: HostPort | None = None
    admin_token_file: Path | None = None


@dataclass(frozen=True, slots=True)
class AuditSettings:
    store: str = "sqlite"  # sqlite | postgres
    path: Path | None = None  # sqlite; default <stateDir>/audit.db
    dsn: str | None = None  # postgres


@dataclass(frozen=True, slots=True)
class DatapathSettings:
    """Which kernel enforcer runs beside the proxy: none, or eBPF on one interface."""

    mode: str = "proxy"  # proxy | ebpf
    interface: str | None = None
    pin_root: str | None = None  # default /sys/fs/bpf/cport


@dataclass
class AgentSettings:
    """What `cport up` runs, validated."""

    node: str = field(default_factory=socket.gethostname)
    state_dir: Path = Path(".cport")
    policies: tuple[Path, ...] = ()
    inventory: tuple[Path, ...] = ()
    api: ApiSettings | None = None  # None until resolved: <stateDir>/agent.sock
    gateway: GatewaySettings | None = None
    listeners: tuple[ListenerSettings, ...] = ()
    audit: AuditSettings = AuditSettings()
    recheck_interval: float = 0.25  # how often expiry is checked (live re-check ≤ 1 s)
    datapath: DatapathSettings = DatapathSettings()

    def api_settings(self) -> ApiSettings:
        return self.api or ApiSettings(socket=self.state_dir / "agent.sock")


def host_port(cur: Cursor) -> HostPort:
    text = cur.scalar_string()
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        cur.fail(f"{text!r} is not HOST:PORT", hint="e.g. 127.0.0.1:8443 or [::1]:8443")
    return HostPort(host, int(port))


def target(cur: Cursor, text: str | None = None) -> Target:
    text = cur.scalar_string() if text is None else text
    ref, sep, port = text.rpartition(":")
    ns, slash, name = ref.partition("/")
    if not sep or not slash or not ns or not name or not port.isdigit():
        cur.fail(f"{text!r} is not NAMESPACE/WORKLOAD:PORT", hint="e.g. payments/ledger:5432")
    if not 0 < int(port) < 65536:
        cur.fail(f"port {port} is out of range 1-65535")
    return Target(ns, name, int(port))


def _int(cur: Cursor) -> int:
    if isinstance(cur.value, bool) or not isinstance(cur.value, int) or cur.value <= 0:
        cur.fail(f"expected a positive whole number, got {cur.value!r}")
    return cur.value


_LIMIT_KEYS = {
    "maxConnections": ("max_connections", _int),
    "perIdentityConnections": ("per_identity_connections", _int),
    "maxHeaderBytes": ("max_header_bytes", _int),
    "handshakeTimeout": ("handshake_timeout", None),
    "connectTimeout": ("connect_timeout", None),
    "drainTimeout": ("drain_timeout", None),
}


def _limits(cur: Cursor | None, duration: object) -> Limits:
    if cur is None:
        return Limits()
    cur.mapping(set(_LIMIT_KEYS))
    kwargs: dict[str, object] = {}
    for key, (attr, conv) in _LIMIT_KEYS.items():
        if (c := cur.get(key)) is not None:
            kwargs[attr] = conv(c) if conv is not None else duration(c)  # type: ignore[operator]
    return Limits(**kwargs)  # type: ignore[arg-type]


def _paths(cur: Cursor, base: Path) -> tuple[Path, ...]:
    values = [cur.scalar_string()] if isinstance(cur.value, str) else cur.string_list()
    return tuple(base / v for v in values)


def parse_agent(root: Cursor, base: Path, duration: object) -> AgentSettings:
    """The agent's keys of the root mapping (the caller has checked the key names)."""
    out = AgentSettings()
    if (c := root.get("node")) is not None:
        out.node = c.string()
    if (c := root.get("stateDir")) is not None:
        out.state_dir = base / c.string()
    if (c := root.get("policies")) is not None:
        out.policies = _paths(c, base)
    if (c := root.get("inventory")) is not None:
        out.inventory = _paths(c, base)
    if (c := root.get("recheckInterval")) is not None:
        out.recheck_interval = duration(c)  # type: ignore[operator]
        if out.recheck_interval <= 0:
            c.fail("recheckInterval must be more than 0", hint="e.g. 250ms")
    if (api := root.get("api")) is not None:
        api.mapping({"socket", "listen", "adminTokenFile"})
        listen = host_port(c) if (c := api.get("listen")) is not None else None
        token = base / c.string() if (c := api.get("adminTokenFile")) is not None else None
        if listen is not None and not listen.is_loopback and token is None:
            api.require("listen").fail(
                f"the API listens on {listen}, beyond loopback, without an admin credential",
                hint="set api.adminTokenFile, or listen on 127.0.0.1",
            )
        sock = c.string() if (c := api.get("socket")) is not None else None
        out.api = ApiSettings(
            socket=(base / sock) if sock else out.state_dir / "agent.sock",
            listen=listen,
            admin_token_file=token,
        )
    if (gw := root.get("gateway")) is not None:
        gw.mapping({"listen", "upstreams", "limits"})
        upstreams: dict[Target, HostPort] = {}
        if (ups := gw.get("upstreams")) is not None:
            ups.mapping(set(ups.value or {}))
            for key, val in ups.entries():
                upstreams[target(val, key)] = host_port(val)
        out.gateway = GatewaySettings(
            listen=host_port(gw.require("listen", "HOST:PORT for CONNECT clients")),
            upstreams=upstreams,
            limits=_limits(gw.get("limits"), duration),
        )
    if (ls := root.get("listeners")) is not None:
        items = []
        for item in ls.sequence().items():
            item.mapping({"listen", "to", "upstream", "identify", "tls", "limits"})
            identify = c.choice(("address", "spiffe")) if (c := item.get("identify")) else "address"
            cert: Path | None = None
            tls_key: Path | None = None
            if (tls := item.get("tls")) is not None:
                tls.mapping({"cert", "key"})
                cert = base / tls.require("cert").string()
                tls_key = base / tls.require("key").string()
            if identify == "spiffe" and cert is None:
                item.require("tls", "the listener's own certificate and key for mTLS")
            items.append(
                ListenerSettings(
                    listen=host_port(item.require("listen", "HOST:PORT")),
                    target=target(item.require("to", "NAMESPACE/WORKLOAD:PORT")),
                    upstream=host_port(c) if (c := item.get("upstream")) is not None else None,
                    identify=identify,
                    tls_cert=cert,
                    tls_key=tls_key,
                    limits=_limits(item.get("limits"), duration),
                )
            )
        out.listeners = tuple(items)
    if (au := root.get("audit")) is not None:
        au.mapping({"store", "path", "dsn"})
        store = c.choice(("sqlite", "postgres")) if (c := au.get("store")) else "sqlite"
        dsn = c.string() if (c := au.get("dsn")) is not None else None
        if store == "postgres" and dsn is None:
            au.require("dsn", "a PostgreSQL connection string (postgresql://…)")
        out.audit = AuditSettings(
            store=store,
            path=base / c.string() if (c := au.get("path")) is not None else None,
            dsn=dsn,
        )
    if (dp := root.get("datapath")) is not None:
        dp.mapping({"mode", "interface", "pinRoot"})
        mode = c.choice(("proxy", "ebpf")) if (c := dp.get("mode")) else "proxy"
        iface = c.string() if (c := dp.get("interface")) is not None else None
        if mode == "ebpf" and iface is None:
            dp.require("interface", "the interface whose traffic the eBPF programs enforce")
        out.datapath = DatapathSettings(
            mode, iface, c.string() if (c := dp.get("pinRoot")) is not None else None
        )
    if out.api is None:
        out.api = ApiSettings(socket=out.state_dir / "agent.sock")
    return out


__all__ = [
    "AgentSettings",
    "ApiSettings",
    "AuditSettings",
    "DatapathSettings",
    "GatewaySettings",
    "HostPort",
    "Limits",
    "ListenerSettings",
    "Target",
    "parse_agent",
]
