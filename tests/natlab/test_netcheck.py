"""`mesh netcheck` tells each NAT type apart, from inside the lab."""

from __future__ import annotations

from typing import Any

import pytest

from tests.natlab.lab import SERVER_IP


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
