"""A NAT lab in Linux network namespaces (needs root, iproute2 and iptables).

Topology for one pair of sides (each side ``a``/``b`` with its own NAT type)::

    [h_a 10.1.0.2] --- [r_a 10.1.0.1 | 198.18.1.1] ---+
                                                       +--- br (wan, 198.18.0.1/15: mesh signal)
    [h_b 10.2.0.2] --- [r_b 10.2.0.1 | 198.18.2.1] ---+

A side of type ``none`` puts its host straight on the wan bridge (198.18.N.2).
NAT types (iptables on the router, DESIGN.md):

- ``full-cone``: SNAT to the router's address plus DNAT of all inbound UDP to the host;
- ``port-restricted``: ``MASQUERADE``;
- ``symmetric``: ``MASQUERADE --random-fully`` (a new port per destination);
- ``udp-blocked``: ``MASQUERADE``, and forwarding allows only TCP to the server;
- ``symmetric-portmap``: ``symmetric`` plus miniupnpd (Debian) on the router with
  PCP, NAT-PMP and UPnP-IGD on: mesh asks it for a mapping; ``symmetric-upnp``: the
  same with UPnP-IGD only; ``symmetric-deadupnp``/``symmetric-garbageupnp``: a
  router that answers port-mapping requests with garbage and announces an IGD whose
  description never comes, or is garbage (deadrouter.py);
- ``open-input`` and ``open-input-random``: ``MASQUERADE`` (with ``--random``) on a
  router whose INPUT chain accepts everything, as on some routers and cloud hosts,
  one hop (an "ISP" namespace) away from the wan bridge, as real routers are.

Every other router drops new inbound connections addressed to itself (the
default of any home router).

``Lab(ipv6=True)`` adds routed IPv6 (no NAT66): host ``2001:db8:N::2``, router
``2001:db8:N::1`` / ``2001:db8:ff::N0`` on the wan, the server ``2001:db8:ff::1``;
each router's ip6tables forwards new flows only outward (stateful firewall).
``ipv4_hosts=False`` leaves the hosts IPv6-only (the server listens on both).

Every name carries a per-lab tag, so labs never collide and a crashed run
leaves nothing that the next one trips over; ``close()`` deletes it all.
Traffic stays inside these namespaces: 198.18.0.0/15 and 10.x only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

NAT_TYPES = ("none", "full-cone", "port-restricted", "symmetric", "udp-blocked")
MORE_TYPES = ("symmetric-portmap", "symmetric-upnp", "symmetric-deadupnp",
              "symmetric-garbageupnp", "open-input", "open-input-random")
SERVER_IP = "198.18.0.1"
SERVER_IP6 = "2001:db8:ff::1"
ROUTER_STUN = 3490
"""The plain STUN responder miniupnpd checks its WAN address with (routerstun.py)."""
HERE = Path(__file__).parent


def available() -> str | None:
    """None if the lab can run here, else the reason it cannot."""
    if os.geteuid() != 0:
        return "the NAT lab needs root (network namespaces and iptables)"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"the NAT lab needs {tool} (apt-get install iproute2 iptables)"
    return None


def portmap_available() -> str | None:
    """None if the port-mapping cells can run (miniupnpd and nft), else why not."""
    for tool in ("miniupnpd", "nft"):
        if shutil.which(tool) is None:
            return f"the port-mapping cells need {tool} (apt-get install miniupnpd nftables)"
    return None


def sh(*cmd: str) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {res.stderr.strip()}")


@dataclass
class Side:
    index: int
    nat: str
    host_ns: str
    router_ns: str | None
    host_ip: str


@dataclass
class Lab:
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:5])
    namespaces: list[str] = field(default_factory=list)
    sides: dict[str, Side] = field(default_factory=dict)
    ipv6: bool = False
    ipv4_hosts: bool = True
    """False (with ipv6): IPv6-only hosts behind the routers."""
    procs: list[subprocess.Popen[str]] = field(default_factory=list)
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="meshlab")))

    @property
    def wan(self) -> str:
        return f"ml{self.tag}w"

    def ns(self, name: str) -> str:
        full = f"ml{self.tag}{name}"
        sh("ip", "netns", "add", full)
        self.namespaces.append(full)
        sh("ip", "-n", full, "link", "set", "lo", "up")
        return full

    def build(self, nat_a: str, nat_b: str) -> Lab:
        wan = self.ns("w")
        sh("ip", "-n", wan, "link", "add", "wanbr", "type", "bridge")
        sh("ip", "-n", wan, "addr", "add", f"{SERVER_IP}/15", "dev", "wanbr")
        if self.ipv6:
            sh("ip", "-n", wan, "addr", "add", f"{SERVER_IP6}/64", "dev", "wanbr", "nodad")
        sh("ip", "-n", wan, "link", "set", "wanbr", "up")
        if {"symmetric-portmap", "symmetric-upnp"} & {nat_a, nat_b}:
            self._spawn(wan, [sys.executable, str(HERE / "routerstun.py"), SERVER_IP,
                              str(ROUTER_STUN)], "ready")
        for index, (label, nat) in enumerate((("a", nat_a), ("b", nat_b)), start=1):
            self.sides[label] = self._side(index, label, nat)
        if self.ipv6:
            self._routes6()
        return self

    def _spawn(self, ns: str, cmd: list[str], ready: str) -> subprocess.Popen[str]:
        """Start ``cmd`` in ``ns``; wait (10 s at most) for a line containing ``ready``."""
        env = dict(os.environ, PYTHONPATH=str(HERE.parent.parent))
        proc = subprocess.Popen(self.exec_prefix(ns) + cmd, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=env)
        self.procs.append(proc)
        assert proc.stdout is not None
        deadline, seen = time.monotonic() + 10, []
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            if ready in line:
                return proc
        raise RuntimeError(f"{cmd[0]} did not start: {''.join(seen)[-2000:]}")

    def _veth(self, ns1: str, if1: str, ns2: str, if2: str) -> None:
        # temporary names in the root namespace, distinct even when if1 == if2
        tmp1, tmp2 = f"v{self.tag}{if1}"[:14] + "x", f"v{self.tag}{if2}"[:14] + "y"
        sh("ip", "link", "add", tmp1, "type", "veth", "peer", "name", tmp2)
        sh("ip", "link", "set", tmp1, "netns", ns1)
        sh("ip", "link", "set", tmp2, "netns", ns2)
        sh("ip", "-n", ns1, "link", "set", tmp1, "name", if1)
        sh("ip", "-n", ns2, "link", "set", tmp2, "name", if2)

    def _uplink(self, ns: str, ifname: str, ip: str, wan_if: str) -> None:
        self._veth(ns, ifname, self.wan, wan_if)
        sh("ip", "-n", self.wan, "link", "set", wan_if, "master", "wanbr")
        sh("ip", "-n", self.wan, "link", "set", wan_if, "up")
        sh("ip", "-n", ns, "addr", "add", f"{ip}/15", "dev", ifname)
        sh("ip", "-n", ns, "link", "set", ifname, "up")

    def _side(self, index: int, label: str, nat: str) -> Side:
        if nat not in NAT_TYPES + MORE_TYPES:
            raise ValueError(nat)
        host = self.ns(f"h{label}")
        if nat == "none":
            ip = f"198.18.{index}.2"
            self._uplink(host, "wan0", ip, f"p{label}")
            return Side(index, nat, host, None, ip)
        router = self.ns(f"r{label}")
        public = f"198.18.{index}.1"
        inner, gw = f"10.{index}.0.2", f"10.{index}.0.1"
        if nat.startswith("open-input"):
            public = self._isp(index, label, router)
        else:
            self._uplink(router, "wan0", public, f"p{label}")
        self._veth(router, "lan0", host, "eth0")
        sh("ip", "-n", router, "addr", "add", f"{gw}/24", "dev", "lan0")
        sh("ip", "-n", router, "link", "set", "lan0", "up")
        sh("ip", "-n", host, "link", "set", "eth0", "up")
        if self.ipv4_hosts:
            sh("ip", "-n", host, "addr", "add", f"{inner}/24", "dev", "eth0")
            sh("ip", "-n", host, "route", "add", "default", "via", gw)
        sh("ip", "netns", "exec", router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        ipt = ("ip", "netns", "exec", router, "iptables")
        # Like any home router, drop unsolicited packets addressed to the router itself.
        # Besides realism this matters for hole punching: a dropped packet's conntrack
        # entry is never confirmed, so a peer's early probe cannot claim the tuple the
        # router's own outbound mapping needs (which would force a new port). The
        # open-input routers are the ones that do not.
        if not nat.startswith("open-input"):
            sh(*ipt, "-A", "INPUT", "-i", "wan0", "-m", "conntrack", "--ctstate", "NEW",
               "-j", "DROP")
        if self.ipv6:
            self._firewall6(index, router, host)
        if nat == "full-cone":
            sh(*ipt, "-t", "nat", "-A", "POSTROUTING", "-o", "wan0", "-j", "SNAT",
               "--to-source", public)
            sh(*ipt, "-t", "nat", "-A", "PREROUTING", "-i", "wan0", "-p", "udp", "-j", "DNAT",
               "--to-destination", inner)
        elif nat == "port-restricted":
            sh(*ipt, "-t", "nat", "-A", "POSTROUTING", "-o", "wan0", "-j", "MASQUERADE")
        elif nat.startswith("symmetric"):
            sh(*ipt, "-t", "nat", "-A", "POSTROUTING", "-o", "wan0", "-j", "MASQUERADE",
               "--random-fully")
            if nat in ("symmetric-portmap", "symmetric-upnp"):
                self._miniupnpd(label, router, natpmp=nat == "symmetric-portmap")
            elif nat != "symmetric":
                mode = "dead" if nat == "symmetric-deadupnp" else "garbage"
                self._spawn(router, [sys.executable, str(HERE / "deadrouter.py"), gw, mode],
                            "ready")
        elif nat == "open-input":
            sh(*ipt, "-t", "nat", "-A", "POSTROUTING", "-o", "wan0", "-j", "MASQUERADE")
        elif nat == "open-input-random":
            sh(*ipt, "-t", "nat", "-A", "POSTROUTING", "-o", "wan0", "-j", "MASQUERADE",
               "--random")
        elif nat == "udp-blocked":
            sh(*ipt, "-t", "nat", "-A", "POSTROUTING", "-o", "wan0", "-j", "MASQUERADE")
            sh(*ipt, "-A", "FORWARD", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED",
               "-j", "ACCEPT")
            sh(*ipt, "-A", "FORWARD", "-i", "lan0", "-p", "tcp", "-d", SERVER_IP, "-j", "ACCEPT")
            sh(*ipt, "-A", "FORWARD", "-i", "lan0", "-j", "DROP")
        return Side(index, nat, host, router, inner)

    def _isp(self, index: int, label: str, router: str) -> str:
        """An ISP hop between ``router`` and the wan bridge: the router's public address
        ``198.19.N.1`` sits behind it (proxy ARP answers for it on the bridge)."""
        isp = self.ns(f"i{label}")
        self._uplink(isp, "up0", f"198.18.{index}.254", f"p{label}")
        self._veth(isp, "down0", router, "wan0")
        public, near = f"198.19.{index}.1", f"198.19.{index}.254"
        sh("ip", "-n", isp, "addr", "add", f"{near}/24", "dev", "down0")
        sh("ip", "-n", isp, "link", "set", "down0", "up")
        for key in ("net.ipv4.ip_forward=1", "net.ipv4.conf.up0.proxy_arp=1",
                    "net.ipv4.neigh.up0.proxy_delay=0"):
            sh("ip", "netns", "exec", isp, "sysctl", "-qw", key)
        sh("ip", "-n", router, "addr", "add", f"{public}/24", "dev", "wan0")
        sh("ip", "-n", router, "link", "set", "wan0", "up")
        sh("ip", "-n", router, "route", "add", "default", "via", near)
        return public

    def _miniupnpd(self, label: str, router: str, natpmp: bool) -> None:
        """miniupnpd on ``router``: PCP and NAT-PMP (if ``natpmp``) and UPnP-IGD, rules
        in a table of its own. Its WAN check (STUN) must see its own ports unchanged, so
        the router's own traffic to the STUN responder skips the symmetric NAT."""
        d = self.tmp / f"upnp{label}"
        d.mkdir()
        (d / "rules.nft").write_text(
            "table inet mupnp {\n chain miniupnpd {\n }\n chain pre_mupnp {\n }\n"
            " chain post_mupnp {\n }\n chain forward {\n"
            "  type filter hook forward priority 0; policy accept;\n  jump miniupnpd\n }\n"
            " chain prerouting {\n  type nat hook prerouting priority -100; policy accept;\n"
            "  jump pre_mupnp\n }\n chain postrouting {\n"
            "  type nat hook postrouting priority 100; policy accept;\n  jump post_mupnp\n"
            " }\n}\n")
        sh("ip", "netns", "exec", router, "nft", "-f", str(d / "rules.nft"))
        sh("ip", "netns", "exec", router, "iptables", "-t", "nat", "-I", "POSTROUTING", "-o",
           "wan0", "-p", "udp", "-d", SERVER_IP, "--dport", str(ROUTER_STUN), "-j", "RETURN")
        (d / "miniupnpd.conf").write_text("\n".join([
            "ext_ifname=wan0", "listening_ip=lan0", "port=0",
            f"enable_natpmp={'yes' if natpmp else 'no'}", "enable_upnp=yes", "secure_mode=yes",
            "system_uptime=no", "min_lifetime=60",
            "max_lifetime=86400", "ext_perform_stun=yes", f"ext_stun_host={SERVER_IP}",
            f"ext_stun_port={ROUTER_STUN}", "upnp_table_name=mupnp",
            "upnp_nat_table_name=mupnp", "upnp_forward_chain=miniupnpd",
            "upnp_nat_chain=pre_mupnp", "upnp_nat_postrouting_chain=post_mupnp",
            f"lease_file={d / 'leases'}", f"uuid={uuid.uuid4()}",
            "allow 1024-65535 10.0.0.0/8 1024-65535", "deny 0-65535 0.0.0.0/0 0-65535", ""]))
        self._spawn(router, ["miniupnpd", "-f", str(d / "miniupnpd.conf"), "-d", "-P",
                             str(d / "pid")], "Listening for NAT-PMP/PCP" if natpmp
                    else "HTTP listening")

    def _firewall6(self, index: int, router: str, host: str) -> None:
        """Routed IPv6 for one side behind a stateful firewall: outbound and replies."""
        sh("ip", "-n", router, "addr", "add", f"2001:db8:{index}::1/64", "dev", "lan0", "nodad")
        sh("ip", "-n", host, "addr", "add", f"2001:db8:{index}::2/64", "dev", "eth0", "nodad")
        sh("ip", "-n", host, "-6", "route", "add", "default", "via", f"2001:db8:{index}::1")
        sh("ip", "-n", router, "addr", "add", f"2001:db8:ff::{index}0/64", "dev", "wan0",
           "nodad")
        sh("ip", "netns", "exec", router, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        ip6 = ("ip", "netns", "exec", router, "ip6tables", "-A", "FORWARD")
        sh(*ip6, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT")
        sh(*ip6, "-i", "lan0", "-j", "ACCEPT")
        sh(*ip6, "-p", "ipv6-icmp", "-j", "ACCEPT")
        sh(*ip6, "-j", "DROP")

    def _routes6(self) -> None:
        """Each router reaches the other side's prefix through its wan address."""
        for side in self.sides.values():
            if side.router_ns is None:
                continue
            prefix, via = f"2001:db8:{side.index}::/64", f"2001:db8:ff::{side.index}0"
            sh("ip", "-n", self.wan, "-6", "route", "add", prefix, "via", via)
            for other in self.sides.values():
                if other is not side and other.router_ns is not None:
                    sh("ip", "-n", other.router_ns, "-6", "route", "add", prefix, "via", via)

    def build_pair(self, mtu: int = 1500) -> tuple[str, str]:
        """Two namespaces joined by one veth pair of ``mtu`` (an Ethernet link, no NAT):
        198.18.0.1/15 and 198.18.0.2/15 (benchmarks/veth.py)."""
        a, b = self.ns("a"), self.ns("b")
        self._veth(a, "eth0", b, "eth0")
        for ns, ip in ((a, "198.18.0.1"), (b, "198.18.0.2")):
            sh("ip", "-n", ns, "link", "set", "eth0", "mtu", str(mtu))
            sh("ip", "-n", ns, "addr", "add", f"{ip}/15", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
        return a, b

    def build_lan(self, hosts: int) -> list[str]:
        """``hosts`` namespaces on one bridge (one LAN, multicast works): 10.77.0.N/24."""
        hub = self.ns("l")
        sh("ip", "-n", hub, "link", "add", "lanbr", "type", "bridge")
        sh("ip", "-n", hub, "link", "set", "lanbr", "up")
        names = []
        for i in range(1, hosts + 1):
            host = self.ns(f"n{i}")
            self._veth(host, "eth0", hub, f"p{i}")
            sh("ip", "-n", hub, "link", "set", f"p{i}", "master", "lanbr")
            sh("ip", "-n", hub, "link", "set", f"p{i}", "up")
            sh("ip", "-n", host, "addr", "add", f"10.77.0.{i}/24", "dev", "eth0")
            sh("ip", "-n", host, "link", "set", "eth0", "multicast", "on")
            sh("ip", "-n", host, "link", "set", "eth0", "up")
            sh("ip", "-n", host, "route", "add", "224.0.0.0/4", "dev", "eth0")
            names.append(host)
        return names

    def exec_prefix(self, ns: str) -> list[str]:
        return ["ip", "netns", "exec", ns]

    def cut(self, label: str) -> None:
        """Drop everything the side's host sends or receives (a network outage)."""
        side = self.sides[label]
        ns = side.router_ns or side.host_ns
        chain_if = "lan0" if side.router_ns else "wan0"
        for chain, flag in (("FORWARD", "-i"), ("FORWARD", "-o"), ("INPUT", "-i"),
                            ("OUTPUT", "-o")):
            if side.router_ns is None and chain == "FORWARD":
                continue
            sh("ip", "netns", "exec", ns, "iptables", "-I", chain, flag, chain_if, "-j", "DROP")

    def restore(self, label: str) -> None:
        side = self.sides[label]
        ns = side.router_ns or side.host_ns
        chain_if = "lan0" if side.router_ns else "wan0"
        for chain, flag in (("FORWARD", "-i"), ("FORWARD", "-o"), ("INPUT", "-i"),
                            ("OUTPUT", "-o")):
            if side.router_ns is None and chain == "FORWARD":
                continue
            sh("ip", "netns", "exec", ns, "iptables", "-D", chain, flag, chain_if, "-j", "DROP")

    def block_udp_between_sides(self, block: bool = True) -> None:
        """Drop UDP between the two sides' public addresses (the relay still works)."""
        side = self.sides["a"]
        other = self.sides["b"]
        ns = side.router_ns or side.host_ns
        other_ip = f"198.18.{other.index}.1" if other.router_ns else other.host_ip
        op = "-I" if block else "-D"
        chain = "FORWARD" if side.router_ns else "OUTPUT"
        sh("ip", "netns", "exec", ns, "iptables", op, chain, "-p", "udp", "-d", other_ip,
           "-j", "DROP")
        chain = "FORWARD" if side.router_ns else "INPUT"
        sh("ip", "netns", "exec", ns, "iptables", op, chain, "-p", "udp", "-s", other_ip,
           "-j", "DROP")

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait(5)
        shutil.rmtree(self.tmp, ignore_errors=True)
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "pids", ns], capture_output=True)
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True,
                                  text=True).stdout.split()
            for pid in pids:
                subprocess.run(["kill", "-9", pid], capture_output=True)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.namespaces.clear()
