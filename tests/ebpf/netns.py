"""Test topology: two network namespaces joined by a veth pair, and real traffic between them.

``client`` holds the source addresses (192.0.2.0/24 and 203.0.113.0/24), ``server`` the
destination addresses (198.51.100.0/24); the datapath attaches to the server's end. Names
are unique per test run (pid and a counter) and everything is removed by name in
:meth:`Topology.down`, even when the test failed. Sockets are made in a namespace by
entering it on this thread only (`in_netns`), so no subprocess is needed for traffic.
"""

from __future__ import annotations

import errno
import itertools
import os
import select
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress

from cport.ebpf._netns import entered

_counter = itertools.count()
SO_RCVBUFFORCE = 33  # linux/socket.h; above net.core.rmem_max (we are root)


def run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)


@contextmanager
def in_netns(name: str) -> Iterator[None]:
    with entered(name):
        yield


class Topology:
    """client netns ── veth ── server netns (the datapath goes on `server_if`)."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}{next(_counter)}"
        self.client = f"cpc{tag}"
        self.server = f"cps{tag}"
        self.client_if = f"vc{tag}"
        self.server_if = f"vs{tag}"
        self._up = False
        self._sockets: list[socket.socket] = []

    def up(self, client_addrs: Iterable[str], server_addrs: Iterable[str]) -> Topology:
        self._up = True
        run("ip", "netns", "add", self.client)
        run("ip", "netns", "add", self.server)
        run("ip", "link", "add", self.client_if, "type", "veth", "peer", "name", self.server_if)
        run("ip", "link", "set", self.client_if, "netns", self.client)
        run("ip", "link", "set", self.server_if, "netns", self.server)
        client_addrs, server_addrs = list(client_addrs), list(server_addrs)
        v6 = any(":" in a for a in [*client_addrs, *server_addrs])
        for ns, ifname, addrs, routes in (
            (self.client, self.client_if, client_addrs, ["198.51.100.0/24", "2001:db8:2::/64"]),
            (
                self.server,
                self.server_if,
                server_addrs,
                ["192.0.2.0/24", "203.0.113.0/24", "2001:db8:1::/64"],
            ),
        ):
            exe = ("ip", "netns", "exec", ns)
            if not v6:
                run(*exe, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
            run(*exe, "ip", "link", "set", "lo", "up")
            run(*exe, "ip", "link", "set", ifname, "up")
            for addr in addrs:
                if ":" in addr:
                    run(*exe, "ip", "-6", "addr", "add", f"{addr}/128", "dev", ifname, "nodad")
                else:
                    run(*exe, "ip", "addr", "add", f"{addr}/32", "dev", ifname)
            for route in routes:
                if ":" not in route:
                    run(*exe, "ip", "route", "add", route, "dev", ifname)
                elif v6:
                    run(*exe, "ip", "-6", "route", "add", route, "dev", ifname)
        return self

    def down(self) -> None:
        for s in self._sockets:
            s.close()
        self._sockets.clear()
        if not self._up:
            return
        for ns in (self.client, self.server):
            with suppress(subprocess.CalledProcessError):
                run("ip", "netns", "del", ns)
        self._up = False

    # -- traffic -------------------------------------------------------------------------
    def listen_tcp(self, ports: Iterable[int]) -> list[socket.socket]:
        out = []
        with in_netns(self.server):
            for port in ports:
                s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # IPv4 too
                s.bind(("::", port))
                s.listen(1024)
                s.setblocking(False)
                out.append(s)
        self._sockets.extend(out)
        return out

    def tcp_probe(
        self, flows: list[tuple[str, str, int]], timeout: float = 0.8
    ) -> dict[tuple[str, str, int], bool]:
        """Try a TCP connection for each (source address, destination address, port), all at
        once; True where the handshake completed within `timeout` seconds (a dropped SYN is
        retransmitted only after a second, so a drop shows as no connection). Needs
        listeners on every port (:meth:`listen_tcp`)."""
        socks: dict[socket.socket, tuple[str, str, int]] = {}
        with in_netns(self.client):
            for flow in flows:
                src, dst, port = flow
                s = socket.socket(socket.AF_INET6 if ":" in src else socket.AF_INET)
                s.setblocking(False)
                s.bind((src, 0))
                rc = s.connect_ex((dst, port))
                if rc not in (0, errno.EINPROGRESS):
                    s.close()
                    raise OSError(rc, f"connect {flow}: {os.strerror(rc)}")
                socks[s] = flow
        result = dict.fromkeys(flows, False)
        pending = set(socks)
        deadline = time.monotonic() + timeout
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            _, writable, _ = select.select([], list(pending), [], left)
            for s in writable:
                pending.discard(s)
                if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    result[socks[s]] = True
        for s in socks:
            s.close()
        return result

    @staticmethod
    def drain(listeners: list[socket.socket]) -> int:
        """Accept and close whatever connections are waiting; returns how many."""
        n = 0
        for ls in listeners:
            while True:
                try:
                    conn, _ = ls.accept()
                except BlockingIOError:
                    break
                conn.close()
                n += 1
        return n

    def udp_socket(self, ns: str, addr: str, port: int) -> socket.socket:
        with in_netns(ns):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            # room for every datagram a test sends, even if its reader is starved a while:
            # a test that counts datagrams must not see the socket's own drops
            s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
            s.bind((addr, port))
        self._sockets.append(s)
        return s


def leftovers(tag_prefixes: tuple[str, ...] = ("cpc", "cps")) -> list[str]:
    """Network namespaces of these tests that still exist (should be none after a run)."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return [
        line.split()[0]
        for line in out.stdout.splitlines()
        if line.split() and line.split()[0].startswith(tag_prefixes)
    ]
