"""`mesh netcheck` tells each NAT type apart, from inside the lab."""

from __future__ import annotations

import os
from typing import Any

import pytest

from tests.natlab.lab import SERVER_IP, portmap_available


@pytest.mark.parametrize(("nat", "udp", "mapping", "turn_udp"), [
    ("none", True, "endpoint-independent", True),
    ("port-restricted", True, "endpoint-independent", True),
    ("symmetric", True, "endpoint-dependent", True),
    ("udp-blocked", False, "unknown", False),
])
def test_netcheck_reports_the_nat(lab_run: Any, nat: str, udp: bool, mapping: str,
                                  turn_udp: bool) -> None:
    run = lab_run(nat, "none")
    url = run.signal()
    proc = run.mesh(run.lab.sides["a"].host_ns, "a", "netcheck", "--signal", url, "--json")
    report = proc.event("netcheck", timeout=30)
    assert proc.wait(10) == 0
    assert report["udp"] is udp
    assert report["mapping"] == mapping
    assert report["turn_udp"] is turn_udp
    assert report["turn_tcp"] is True, report
    assert report["signal_rtt_ms"] is not None
    if udp:
        public = "198.18.1.2" if nat == "none" else "198.18.1.1"
        assert report["public_addr"].startswith(public + ":")
    assert report["signal_url"] == f"ws://{SERVER_IP}:8765/"


@pytest.mark.parametrize(("nat", "offers"), [
    ("symmetric-portmap", {"pcp": True, "nat_pmp": True, "upnp": True, "protocol": "pcp"}),
    ("symmetric-upnp", {"pcp": False, "nat_pmp": False, "upnp": True, "protocol": "upnp"}),
    ("symmetric-deadupnp", {"pcp": False, "nat_pmp": False, "upnp": False,
                            "protocol": None}),
    ("symmetric-garbageupnp", {"pcp": False, "nat_pmp": False, "upnp": False,
                               "protocol": None}),
    ("port-restricted", {"pcp": False, "nat_pmp": False, "upnp": False, "protocol": None}),
])
def test_netcheck_reports_what_the_router_maps(lab_run: Any, nat: str,
                                               offers: dict[str, Any]) -> None:
    if nat in ("symmetric-portmap", "symmetric-upnp") and portmap_available() \
            and not os.environ.get("CI"):
        pytest.skip(str(portmap_available()))
    run = lab_run(nat, "none")
    url = run.signal()
    proc = run.mesh(run.lab.sides["a"].host_ns, "a", "netcheck", "--signal", url, "--json")
    report = proc.event("netcheck", timeout=30)["portmap"]
    assert proc.wait(10) == 0
    assert report["gateway"] == "10.1.0.1"
    assert {k: report[k] for k in offers} == offers, report
    if offers["protocol"]:
        assert report["mapped"].startswith("198.18.1.1:"), report
    else:
        assert report["mapped"] is None, report
    off = run.mesh(run.lab.sides["a"].host_ns, "a2", "netcheck", "--signal", url,
                   "--no-portmap", "--json")
    assert off.event("netcheck", timeout=30)["portmap"] is None
