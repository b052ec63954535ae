"""`mesh serve`: signaling, STUN/TURN and the gateway in one process; a `--public` share
is reachable through it with no other server command."""

from __future__ import annotations

import http.client
from pathlib import Path

from tests.conftest import Mesh


def test_a_public_share_is_served_by_mesh_serve_alone(mesh: Mesh,
                                                      http_root: tuple[Path, int]) -> None:
    root, port = http_root
    (root / "hook.txt").write_text("delivered through mesh serve\n")
    serve = mesh.start("serve", "--domain", "mesh.test", "--host", "127.0.0.1", "--port", "0",
                       "--stun-port", "0", "--listen", "127.0.0.1:0", "--json", home="server")
    ready = serve.event("ready", timeout=30)
    assert ready["share_command"] == (f"mesh share PORT --public --name NAME --signal "
                                      f"{ready['url']}")
    assert ready["turn"] and ready["stun"] and ready["domain"] == "mesh.test"
    gateway = ready["gateway_url"]
    share = mesh.start("share", str(port), "--public", "--name", "hooks", "--signal",
                       ready["url"], "--json", home="laptop")
    public = share.event("public", timeout=30)
    assert public["url"] == f"{gateway.replace('127.0.0.1', 'hooks.mesh.test')}/"
    host, gw_port = gateway.split("://")[1].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(gw_port), timeout=30)
    conn.request("GET", "/hook.txt", headers={"Host": "hooks.mesh.test"})
    resp = conn.getresponse()
    assert (resp.status, resp.read()) == (200, b"delivered through mesh serve\n")
    # the gateway's key is pinned: the same key, as `mesh id` in the server's home says
    ident = mesh.run("id", "--json", home="server").stdout
    assert ready["node_id"] in ident


def test_mesh_serve_names_a_taken_port(mesh: Mesh) -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        res = mesh.run("serve", "--domain", "mesh.test", "--host", "127.0.0.1", "--port", "0",
                       "--stun-port", str(port), "--listen", "127.0.0.1:0")
    assert res.returncode == 6, res
    (line,) = res.stderr.strip().splitlines()
    assert f"127.0.0.1:{port}/udp is taken" in line and "--stun-port" in line
