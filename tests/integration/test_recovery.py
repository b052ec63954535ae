"""Keeps working: signaling restarts, status, limits, metrics.

Shares, connects and the rendezvous run in this process where the command line
is not the point (tests/harness.py); exit codes, `mesh status` and the kept
secrets of a restarted `mesh share` go through the real CLI.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
import urllib.request

from tests.conftest import EchoServer, Mesh
from tests.harness import InProc
from tests.integration.test_tunnel import echo_roundtrip


def wait_state(proc: object, state: str, timeout: float) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        ev = proc.event("signal", timeout=max(0.1, deadline - time.monotonic()))  # type: ignore[attr-defined]
        if ev["state"] == state:
            return dict(ev)


def test_share_reregisters_after_server_restart_and_ticket_keeps_working(
        inproc: InProc, echo: EchoServer) -> None:
    share = inproc.share(echo.port)
    ticket = share.obj.ticket
    local = inproc.connect(ticket).obj.port
    inproc.run(inproc.harness.stop_server())
    wait_state(share, "disconnected", 30)
    assert echo_roundtrip(local, 200_000, 1)  # the tunnel does not need the server
    inproc.run(inproc.harness.restart_server())
    t0 = time.monotonic()
    wait_state(share, "registered", 10)
    assert time.monotonic() - t0 < 5, "share must re-register within 5 s"
    local2 = inproc.connect(ticket).obj.port  # the same ticket, a new peer
    assert echo_roundtrip(local2, 300_000, 2)


def test_status_shows_shares_and_connects(mesh: Mesh, echo: EchoServer) -> None:
    _, url = mesh.signal()
    # one MESH_HOME (one node key) for the share and the connect, as on one laptop
    share = mesh.start("share", str(echo.port), "--signal", url, "--json", home="laptop")
    ticket = share.event("ready")["ticket"]
    conn = mesh.start("connect", ticket, "--json", home="laptop")
    local = conn.event("listening")["port"]
    conn.event("connected")
    assert echo_roundtrip(local, 100_000, 3)
    time.sleep(0.5)
    res = mesh.run("status", "--json", home="laptop")
    assert res.returncode == 0, res.stderr
    procs = [json.loads(line) for line in res.stdout.splitlines()]
    by_kind = {p["kind"]: p for p in procs}
    assert set(by_kind) == {"share", "connect"}
    c = by_kind["connect"]
    assert c["path"] == "direct" and c["port"] == local and c["rtt_ms"] is not None
    assert c["bytes_out"] == 100_000 and c["bytes_in"] == 100_000 and c["streams_open"] == 0
    (peer,) = by_kind["share"]["peers"]
    assert peer["path"] == "direct" and peer["bytes_in"] == 100_000
    assert c["fds"] > 0 and c["tasks"] > 0
    human = mesh.run("status", home="laptop")
    assert "share" in human.stdout and "connect" in human.stdout
    share.stop()
    conn.stop()
    assert "no mesh share or connect" in mesh.run("status", home="laptop").stdout


def test_limits_streams_peers_idle(mesh: Mesh, inproc: InProc, echo: EchoServer) -> None:
    ticket = inproc.share(echo.port, max_streams=2, max_peers=1, idle_timeout=1.5).obj.ticket
    conn = inproc.connect(ticket)
    local = conn.obj.port
    held = [socket.create_connection(("127.0.0.1", local)) for _ in range(2)]
    for s in held:
        s.sendall(b"x")
        assert s.recv(1) == b"x"
    third = socket.create_connection(("127.0.0.1", local))
    third.settimeout(5)
    third.sendall(b"y")
    with contextlib.suppress(ConnectionResetError):
        assert third.recv(1) == b""
    warning = conn.event("warning", timeout=5)
    assert "too many streams" in warning["message"]
    # idle connections are closed by the share after 1.5 s
    time.sleep(3)
    for s in held:
        s.settimeout(2)
        with contextlib.suppress(ConnectionResetError):
            assert s.recv(1) == b""
    # a second peer is refused with a clear error
    res = mesh.run("connect", ticket, "--json")
    assert res.returncode == 5 and "too many peers" in res.stdout


def test_metrics_and_health(mesh: Mesh, inproc: InProc, echo: EchoServer) -> None:
    url = inproc.url
    base = url.replace("ws://", "http://")
    local = inproc.connect(inproc.share(echo.port).obj.ticket).obj.port
    res = mesh.run("connect", "mesh1" + "a" * 10, "--json")  # never reaches the server
    assert res.returncode == 3
    with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1].strip("/")))) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  b"Sec-WebSocket-Version: 13\r\n\r\n")
        s.recv(4096)
        s.sendall(b"\x81\x85\x00\x00\x00\x00hello")  # a masked text frame that is not JSON
        time.sleep(0.5)
    with urllib.request.urlopen(base + "metrics", timeout=5) as resp:
        text = resp.read().decode()
    metrics = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
               if line and not line.startswith("#")}
    assert metrics["mesh_signal_nodes"] == 2
    assert metrics["mesh_signal_messages_routed_total"] >= 2
    assert metrics['mesh_signal_rejections_total{reason="bad-frame"}'] >= 1
    assert "mesh_turn_allocations" in metrics and "mesh_turn_relayed_bytes_total" in metrics
    with urllib.request.urlopen(base + "healthz", timeout=5) as resp:
        assert json.loads(resp.read())["ok"] is True
    assert echo_roundtrip(local, 10_000, 4)


def test_ticket_survives_share_restart_until_rotated(mesh: Mesh, echo: EchoServer) -> None:
    _, url = mesh.signal()
    share, ticket = mesh.share(echo.port, url, "--name", "bench-board", home="board")
    share.stop()
    share2, ticket2 = mesh.share(echo.port, url, "--name", "bench-board", home="board")
    _, local = mesh.connect(ticket)  # the ticket printed before the restart
    assert echo_roundtrip(local, 100_000, 5)
    share2.stop()
    _, ticket3 = mesh.share(echo.port, url, "--name", "bench-board", "--new-ticket",
                            home="board")
    res = mesh.run("connect", ticket, "--json")  # revoked
    assert res.returncode == 5 and "wrong ticket secret" in res.stdout
    _, local3 = mesh.connect(ticket3)
    assert echo_roundtrip(local3, 100_000, 6)
    del ticket2


def test_relay_only_hides_the_connector_and_moves_bytes(mesh: Mesh, inproc: InProc,
                                                       echo: EchoServer) -> None:
    share = inproc.share(echo.port)
    conn = mesh.start("connect", share.obj.ticket, "--relay-only", "--json")
    local = int(conn.event("listening")["port"])
    connected = conn.event("connected")
    assert connected["path"] == "relay" and connected["local_candidate"] == "relay"
    # what the sharer sees of the connector is the relay's address, not a host candidate
    seen = share.event("connected")
    assert seen["remote_candidate"] == "relay"
    assert echo_roundtrip(local, 2 * 1024 * 1024, 7)
    # without a relay on the server, --relay-only is a clear configuration error
    _sig2, bare = mesh.signal("--no-turn")
    _, ticket2 = mesh.share(echo.port, bare)
    res = mesh.run("connect", ticket2, "--relay-only")
    assert res.returncode == 2 and "no TURN relay" in res.stderr


def test_an_expired_ticket_is_replaced_with_a_warning_and_the_new_one_works(
        inproc: InProc, echo: EchoServer) -> None:
    """The share says its ticket expired and prints a new one (issue 21 #9); the new
    ticket connects. (The renewal is what the share's timer calls at expiry.)"""
    share = inproc.share(echo.port)
    first = share.obj.ticket

    async def expire() -> None:
        await asyncio.sleep(1.1)  # a new second: a new expiry, so a new ticket
        share.obj.renew_ticket()

    inproc.run(expire())
    warning = share.event("warning")
    renewed = share.event("ticket")
    assert "expired" in warning["message"] and renewed["ticket"] != first
    assert renewed["expires"] > time.time() + 3600
    conn = inproc.connect(renewed["ticket"])
    assert echo_roundtrip(int(conn.obj.port), 50_000, 11)


def test_relay_only_on_one_machine_meets_relay_to_relay_without_relay_allow(
        mesh: Mesh, echo: EchoServer) -> None:
    """The relay refuses loopback peers (no --relay-allow here), but the sharer's own
    relayed address is another allocation on the same server, which it allows: a
    --relay-only connect on one machine meets there instead of waiting out 20 s."""
    _, url = mesh.signal()
    _, ticket = mesh.share(echo.port, url)
    started = time.monotonic()
    conn, local = mesh.connect(ticket, "--relay-only")
    took = time.monotonic() - started
    assert took < 15, took
    (connected,) = [e for e in conn.events if e.get("event") == "connected"]
    assert (connected["path"], connected["remote_candidate"]) == ("relay", "relay")
    assert echo_roundtrip(local, 200_000, 12)
