"""coturn's own client, turnutils_uclient, against the embedded TURN server (loopback)."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.conftest import Mesh, free_port, require_tool


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_turnutils_uclient_loses_nothing(mesh: Mesh, transport: str) -> None:
    uclient = require_tool("turnutils_uclient", "coturn")
    peer_bin = require_tool("turnutils_peer", "coturn")
    stun_port, peer_port = free_port(), free_port()
    proc = mesh.start("signal", "--port", "0", "--stun-port", str(stun_port), "--relay-allow",
                      "127.0.0.0/8", "--turn-secret", "uclient-secret", "--json")
    proc.event("ready")
    peer = subprocess.Popen([peer_bin, "-L", "127.0.0.1", "-p", str(peer_port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        args = [uclient, "-p", str(stun_port), "-e", "127.0.0.1", "-r", str(peer_port),
                "-n", "200", "-u", "tester", "-W", "uclient-secret", "-m", "1", "-l", "100",
                "-z", "5"]
        if transport == "tcp":
            args.append("-t")
        res = subprocess.run([*args, "127.0.0.1"], capture_output=True, text=True, timeout=120)
    finally:
        peer.terminate()
        peer.wait(5)
    out = res.stdout + res.stderr
    sent = re.search(r"tot_send_msgs=(\d+), tot_recv_msgs=(\d+)\s*$", out, re.MULTILINE)
    lost = re.search(r"Total lost packets (\d+)", out)
    assert sent and lost, out[-2000:]
    assert int(sent.group(1)) >= 200
    assert int(sent.group(1)) == int(sent.group(2)), out[-1000:]
    assert int(lost.group(1)) == 0
