"""Symmetric NAT on both sides with coturn (not the embedded relay) as the TURN server."""

from __future__ import annotations

import subprocess
import time
from typing import Any

from tests.conftest import require_tool
from tests.natlab.lab import SERVER_IP

SECRET = "coturn-lab-secret"
DENIED = ["0.0.0.0-0.255.255.255", "10.0.0.0-10.255.255.255", "100.64.0.0-100.127.255.255",
          "127.0.0.0-127.255.255.255", "169.254.0.0-169.254.255.255",
          "172.16.0.0-172.31.255.255", "192.168.0.0-192.168.255.255"]


def test_symmetric_pair_relays_through_coturn(lab_run: Any, tmp_path: Any) -> None:
    turnserver = require_tool("turnserver", "coturn")
    run = lab_run("symmetric", "symmetric")
    coturn = subprocess.Popen(
        [*run.lab.exec_prefix(run.lab.wan), turnserver, "-n", "--no-tls", "--no-dtls",
         "--no-cli", "--listening-ip", SERVER_IP, "--relay-ip", SERVER_IP,
         "--listening-port", "3478", "--use-auth-secret", "--static-auth-secret", SECRET,
         "--realm", "mesh", "--allowed-peer-ip", "198.18.0.0-198.19.255.255",
         # the secure defaults of examples/coturn/turnserver.conf: no private peers
         *[f"--denied-peer-ip={r}" for r in DENIED],
         "--no-multicast-peers", "--user-quota", "10", "--total-quota", "100",
         "--pidfile", str(tmp_path / "turn.pid"), "--log-file", "stdout", "--simple-log",
         "--db", str(tmp_path / "turndb")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run.procs.append(coturn)
    time.sleep(1.0)
    assert coturn.poll() is None, coturn.stdout.read() if coturn.stdout else ""
    url = run.signal("--turn", f"turn:{SERVER_IP}:3478?transport=udp",
                     "--turn", f"turn:{SERVER_IP}:3478?transport=tcp", "--turn-secret", SECRET)
    a, b = run.lab.sides["a"], run.lab.sides["b"]
    run.echo(a.host_ns, 7000)
    share = run.mesh(a.host_ns, "a", "share", "7000", "--signal", url, "--json")
    ticket = share.event("ready", timeout=30)["ticket"]
    conn = run.mesh(b.host_ns, "b", "connect", ticket, "--port", "9000", "--json")
    connected = conn.event("connected", timeout=40)
    assert connected["path"] == "relay", connected
    result = run.client(b.host_ns, 9000, 5 * 1024 * 1024)
    assert result["ok"], result
