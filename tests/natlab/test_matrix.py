"""Every pair of NAT types connects, moves 5 MB byte-exact, and takes the expected path.

The rows: the five classic types, plus a symmetric NAT whose router maps ports
(miniupnpd: PCP, NAT-PMP, UPnP) and the Linux MASQUERADE router that accepts
unsolicited input, without and with ``--random`` (tests/natlab/lab.py). The first
matrix (the classic five) goes direct in 8 pairs of 15; test_direct.py adds the
IPv6 cells and the broken routers.

Path MTU discovery runs on every pair: the lab's links are Ethernet-sized (MTU 1500)
and probes travel with DF set, relayed ones too, so both sides must settle on the
1400-byte candidate, never on a size that only fragmentation would carry. The one
exception is two TCP-only sides: both legs are TCP streams and the relay hop stays
inside the server's host, so 16 KiB packets really get through unfragmented."""

from __future__ import annotations

import os
from itertools import combinations_with_replacement
from typing import Any

import pytest

from tests.natlab.conftest import RESULTS
from tests.natlab.lab import NAT_TYPES, portmap_available

ROWS = (*NAT_TYPES, "symmetric-portmap", "open-input", "open-input-random")
CONES = {"none", "full-cone", "port-restricted", "open-input"}
"""Endpoint-independent mapping (open-input too, once the sharer primes: test_direct.py)."""
RANDOM = {"symmetric", "open-input-random"}
"""A new port per destination."""
PAIRS = list(combinations_with_replacement(ROWS, 2))
NO_PORTMAP = portmap_available() is not None and not os.environ.get("CI")


def expected_path(a: str, b: str) -> str | None:
    if "udp-blocked" in (a, b):
        return "relay"
    if "symmetric-portmap" in (a, b):
        return "direct"  # the router's mapping takes any peer's packets
    if a in CONES and b in CONES:
        return "direct"
    if a in RANDOM and b in RANDOM:
        return "relay"
    return None  # either is fine; reported in the table


def params() -> list[Any]:
    out = []
    for a, b in PAIRS:
        marks = [pytest.mark.skip(reason=str(portmap_available()))] if NO_PORTMAP and (
            "symmetric-portmap" in (a, b)) else []
        out.append(pytest.param(a, b, id=f"{a}+{b}", marks=marks))
    return out


@pytest.mark.parametrize(("nat_a", "nat_b"), params())
def test_pair_connects(lab_run: Any, nat_a: str, nat_b: str) -> None:
    run = lab_run(nat_a, nat_b)
    url = run.signal()
    a, b = run.lab.sides["a"], run.lab.sides["b"]
    run.echo(a.host_ns, 7000)
    share = run.mesh(a.host_ns, "a", "share", "7000", "--signal", url, "--json")
    ticket = share.event("ready", timeout=30)["ticket"]
    conn = run.mesh(b.host_ns, "b", "connect", ticket, "--port", "9000", "--json")
    conn.event("listening", timeout=30)
    connected = conn.event("connected", timeout=40)
    result = run.client(b.host_ns, 9000, 5 * 1024 * 1024)
    mtu = conn.event("path_mtu", timeout=20)["packet"]
    RESULTS.append({"mtu": mtu, "a": nat_a, "b": nat_b, "path": connected["path"],
                    "cands": f"{connected['local_candidate']}/{connected['remote_candidate']}",
                    "connect_ms": connected["connect_ms"], "seconds": result["seconds"]})
    assert result["ok"], result
    want = expected_path(nat_a, nat_b)
    if want is not None:
        assert connected["path"] == want, connected
    shared = share.event("connected", timeout=10)  # the sharer reports the same path
    assert shared["path"] == connected["path"] and shared["rtt_ms"] is not None, shared
    want_mtu = 16384 if nat_a == nat_b == "udp-blocked" else 1400
    assert mtu == want_mtu, conn.events
    assert share.event("path_mtu", timeout=20)["packet"] == want_mtu, share.events
    if nat_b == "udp-blocked":
        warnings = [e["message"] for e in conn.events if e["event"] == "warning"]
        assert any("over TCP" in w for w in warnings), conn.events
