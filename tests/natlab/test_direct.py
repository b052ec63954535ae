"""Direct more often: the cells the first matrix (test_matrix.py) lacks.

- ``symmetric-portmap``: a symmetric NAT whose router runs miniupnpd; mesh asks it for
  a mapping (PCP) and offers the mapping as a candidate, so a symmetric x symmetric
  pair goes direct when either side's router maps.
- ``open-input`` and ``open-input-random`` have rows of their own in the matrix
  (test_matrix.py): without priming an open-input pair ends on the relay (the peer's
  first probe claims the tuple and the router moves our flow to another port); with
  the sharer's small-TTL first checks (transport/ice.py) it goes direct.
- dual-stack: routed IPv6 behind stateful firewalls on both sides, IPv4 symmetric x
  symmetric: the pair goes direct over IPv6.

Each cell moves 1 MB byte-exact and lands in the NAT lab table with its connect time.
"""

from __future__ import annotations

import os
import subprocess
import time
from typing import Any

import pytest

from tests.natlab.conftest import RESULTS
from tests.natlab.lab import portmap_available

SIZE = 1024 * 1024


def run_pair(run: Any, nat_a: str, nat_b: str, label: str = "",
             *share_args: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Share on side a, connect from side b; (the connector's and the sharer's
    ``connected`` events) after a byte-exact echo."""
    url = run.signal()
    a, b = run.lab.sides["a"], run.lab.sides["b"]
    run.echo(a.host_ns, 7000)
    share = run.mesh(a.host_ns, "a", "share", "7000", "--signal", url, "--json", *share_args)
    ticket = share.event("ready", timeout=30)["ticket"]
    conn = run.mesh(b.host_ns, "b", "connect", ticket, "--port", "9000", "--json")
    connected = conn.event("connected", timeout=40)
    result = run.client(b.host_ns, 9000, SIZE)
    shared = share.event("connected", timeout=10)
    RESULTS.append({"a": nat_a + label, "b": nat_b + label, "path": connected["path"],
                    "cands": f"{connected['local_candidate']}/{connected['remote_candidate']}",
                    "connect_ms": connected["connect_ms"], "seconds": result["seconds"],
                    "mb": 1})
    assert result["ok"], result
    assert shared["path"] == connected["path"], (shared, connected)
    return connected, shared


needs_portmap = pytest.mark.skipif(portmap_available() is not None and not os.environ.get("CI"),
                                   reason=str(portmap_available()))
"""Outside CI a machine without miniupnpd skips these cells; CI installs it (.ci/run)."""


def router_redirects(run: Any) -> str:
    """The port mappings miniupnpd holds on side a's router (its DNAT rules)."""
    res = subprocess.run(run.lab.exec_prefix(run.lab.sides["a"].router_ns) + [
        "nft", "list", "chain", "inet", "mupnp", "pre_mupnp"], capture_output=True, text=True)
    return "\n".join(line for line in res.stdout.splitlines() if "dnat" in line)


@needs_portmap
def test_symmetric_pair_goes_direct_through_the_sharers_router_mapping(lab_run: Any) -> None:
    run = lab_run("symmetric-portmap", "symmetric")
    connected, shared = run_pair(run, "symmetric-portmap", "symmetric")
    assert shared["portmap"] is not None and shared["portmap"].startswith("198.18.1.1:"), shared
    assert connected["path"] == "direct", connected
    assert connected["remote_addr"] == shared["portmap"], (connected, shared)
    port = shared["portmap"].rsplit(":", 1)[1]
    assert f"dport {port} dnat" in router_redirects(run)
    share = next(p for p in run.procs if getattr(p, "args", [None])[:1] == ["share"])
    share.stop()  # released on exit: the router holds no mapping for it any more
    deadline = time.monotonic() + 5
    while router_redirects(run) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert router_redirects(run) == ""


@needs_portmap
def test_symmetric_pair_goes_direct_through_the_connectors_router_mapping(lab_run: Any) -> None:
    run = lab_run("symmetric", "symmetric-portmap")
    connected, shared = run_pair(run, "symmetric", "symmetric-portmap")
    assert connected["portmap"] is not None, connected
    assert connected["path"] == "direct", connected
    assert shared["remote_addr"] == connected["portmap"], (connected, shared)


@needs_portmap
def test_a_router_with_upnp_only_maps_through_upnp(lab_run: Any) -> None:
    run = lab_run("symmetric-upnp", "symmetric")
    connected, shared = run_pair(run, "symmetric-upnp", "symmetric")
    assert shared["portmap"] is not None and connected["path"] == "direct", (connected, shared)
    assert connected["remote_addr"] == shared["portmap"], (connected, shared)


@pytest.mark.parametrize("router", ["symmetric-deadupnp", "symmetric-garbageupnp"])
def test_a_broken_router_costs_nothing_and_the_pair_still_connects(lab_run: Any,
                                                                   router: str) -> None:
    """The connect time of these cells against plain symmetric is in the table (and
    measured repeatedly by benchmarks/portmap.py)."""
    connected, shared = run_pair(lab_run(router, "symmetric"), router, "symmetric")
    assert shared["portmap"] is None and connected["path"] == "relay", (connected, shared)


@needs_portmap
def test_no_portmap_keeps_the_symmetric_pair_on_the_relay(lab_run: Any) -> None:
    run = lab_run("symmetric-portmap", "symmetric")
    connected, shared = run_pair(run, "symmetric-portmap", "symmetric", " (off)",
                                 "--no-portmap")
    assert shared["portmap"] is None and connected["path"] == "relay", (connected, shared)


@pytest.mark.parametrize(("nat_a", "nat_b"), [("symmetric", "symmetric"),
                                              ("port-restricted", "symmetric")])
def test_dual_stack_goes_direct_over_ipv6(lab_run: Any, nat_a: str, nat_b: str) -> None:
    connected, shared = run_pair(lab_run(nat_a, nat_b, ipv6=True), nat_a, nat_b, "+v6")
    assert connected["path"] == "direct", connected
    assert connected["remote_addr"].startswith("2001:db8:1::2"), connected
    assert shared["remote_addr"].startswith("2001:db8:2::2"), shared


def test_ipv6_only_pair_goes_direct(lab_run: Any) -> None:
    run = lab_run("symmetric", "symmetric", ipv6=True, ipv4_hosts=False)
    connected, shared = run_pair(run, "symmetric", "symmetric", "+v6only")
    assert connected["path"] == "direct", connected
    assert connected["remote_addr"].startswith("2001:db8:1::2"), connected
    assert shared["remote_addr"].startswith("2001:db8:2::2"), shared
