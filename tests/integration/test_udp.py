"""UDP shares through the real CLI, proven with UDP software nobody here wrote: dnsmasq
queried with dig and from ten sockets at once, and aiocoap's server and client (GET, PUT,
Observe), on the direct path and through the TURN relay (``--relay-only``). The NAT-lab
run across a symmetric NAT pair and the loss test are in tests/natlab/test_udp.py."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests import udpservices as u
from tests.conftest import Mesh, Proc, free_port
from tests.harness import InProc

PATHS = [pytest.param((), "direct", id="direct"),
         pytest.param(("--relay-only",), "relay", id="relay")]


def status(mesh: Mesh, home: str) -> dict[str, Any]:
    """The one process ``mesh status --json`` reports for ``home``."""
    res = mesh.run("status", "--json", home=home)
    (proc,) = [json.loads(line) for line in res.stdout.splitlines()]
    return dict(proc)


def warned(proc: Proc, text: str) -> str:
    """The message of the first warning (from now on) that contains ``text``."""
    while True:
        message = str(proc.event("warning")["message"])
        if text in message:
            return message


def udp_tunnel(mesh: Mesh, port: int, extra: tuple[str, ...], *share_flags: str
               ) -> tuple[Proc, Proc, int, dict[str, object]]:
    """``mesh share PORT --udp`` and ``mesh connect``: (share, connect, local port, the
    connected event)."""
    _, url = mesh.signal()
    share = mesh.start("share", str(port), "--signal", url, "--udp", "--json", *share_flags,
                       home="sharer")
    ready = share.event("ready")
    assert ready["proto"] == ("udp" if "--tcp" not in share_flags else "tcp+udp")
    conn = mesh.start("connect", str(ready["ticket"]), "--json", *extra, home="connector")
    listening = conn.event("listening")
    connected = conn.event("connected")
    return share, conn, int(listening["port"]), connected


@pytest.mark.parametrize("extra, path", PATHS)
def test_dnsmasq_answers_dig_and_ten_sockets_through_the_tunnel(
        mesh: Mesh, tmp_path: Path, extra: tuple[str, ...], path: str) -> None:
    dns_port = free_port()
    dnsmasq = u.start_dnsmasq(tmp_path, dns_port)
    try:
        _, _, local, connected = udp_tunnel(mesh, dns_port, extra)
        assert connected["path"] == path and connected["proto"] == "udp"
        assert u.dig(local, u.A_NAME, "A") == [u.A_ADDR]
        assert u.dig(local, u.A_NAME, "AAAA") == [u.AAAA_ADDR]
        assert u.dig(local, u.TXT_NAME, "TXT") == [f'"{u.TXT}"']
        stats = u.many_queries("127.0.0.1", local, total=1000, sockets=10)
        assert stats["answered"] == 1000, stats
        assert stats["misdirected"] == stats["wrong"] == 0, stats
        # mesh status on both ends: flows, datagrams and drops each way
        mine = status(mesh, "connector")
        assert mine["kind"] == "connect" and mine["proto"] == "udp"
        udp = mine["udp"]
        assert udp["flows_open"] >= 10 and udp["datagrams_out"] >= 1000 + 3
        assert udp["datagrams_in"] >= 1000 + 3 and udp["drops_out"] == 0
        human = mesh.run("status", home="sharer").stdout
        assert "udp flows" in human and "datagrams in" in human, human
    finally:
        dnsmasq.kill()
        dnsmasq.wait()


@pytest.mark.parametrize("extra, path", PATHS)
def test_coap_get_put_and_observe_through_the_tunnel(mesh: Mesh, extra: tuple[str, ...],
                                                      path: str) -> None:
    coap_port = free_port()
    coap = u.start_coap(coap_port)
    try:
        _, _, local, connected = udp_tunnel(mesh, coap_port, extra)
        assert connected["path"] == path
        got = u.coap_session("127.0.0.1", local)
        assert got["GET1"] == "2.05 Content initial"
        assert got["PUT"] == "2.04 Changed stored set through mesh"
        assert got["GET2"] == "2.05 Content set through mesh"
        ticks = [int(t) for t in got["OBSERVE"].split()]
        assert len(ticks) == 20 and ticks == sorted(ticks) and len(set(ticks)) == 20
    finally:
        coap.kill()
        coap.wait()


def test_one_port_carries_tcp_and_udp(mesh: Mesh, tmp_path: Path) -> None:
    """``--udp --tcp``: dnsmasq answers DNS over UDP and over TCP on one port; the
    connect listens on both, one port number, a ``listening`` event each."""
    dns_port = free_port()
    dnsmasq = u.start_dnsmasq(tmp_path, dns_port)
    try:
        _, conn, local, _ = udp_tunnel(mesh, dns_port, (), "--tcp")
        protos = {e["proto"]: e["port"] for e in conn.events if e.get("event") == "listening"}
        assert protos == {"tcp": local, "udp": local}
        assert u.dig(local, u.A_NAME, "A") == [u.A_ADDR]
        assert u.dig(local, u.TXT_NAME, "TXT", tcp=True) == [f'"{u.TXT}"']
    finally:
        dnsmasq.kill()
        dnsmasq.wait()


def test_flows_over_the_cap_are_refused_and_idle_flows_end(mesh: Mesh) -> None:
    """A flood of new client addresses: the sharer's --max-flows holds, the refused are
    counted and warned about, and flows idle past --udp-idle end on both sides."""
    echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    echo.bind(("127.0.0.1", 0))
    echo.setblocking(False)
    share, conn, local, _ = udp_tunnel(mesh, echo.getsockname()[1], (), "--max-flows", "4",
                                       "--udp-idle", "2")
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(8)]
    try:
        for c in clients:
            c.sendto(b"hello", ("127.0.0.1", local))
        time.sleep(1.0)
        seen = set()
        while True:
            try:
                data, addr = echo.recvfrom(100)
            except BlockingIOError:
                break
            seen.add(addr)
            echo.sendto(data, addr)
        assert len(seen) == 4  # four flows, four distinct sockets at the service
        assert "--max-flows 4" in warned(share, "too many UDP flows")
        assert "too many flows (--max-flows)" in warned(conn, "the sharer ended a UDP flow")
        udp = status(mesh, "sharer")["peers"][0]["udp"]
        assert (udp["flows_open"], udp["flows_refused"]) == (4, 4), udp
        time.sleep(3.5)  # --udp-idle 2: all flows end on both sides
        assert status(mesh, "sharer")["peers"][0]["udp"]["flows_open"] == 0
        mine = status(mesh, "connector")["udp"]
        assert mine["flows_open"] == 0 and mine["flows_total"] == 8
    finally:
        echo.close()
        for c in clients:
            c.close()


def test_udp_with_http_or_public_is_a_one_line_error(mesh: Mesh) -> None:
    for flag in ("--http", "--public"):
        res = mesh.run("share", "53", "--udp", flag, "--signal", "ws://127.0.0.1:9/")
        assert res.returncode == 2, res
        (line,) = res.stderr.strip().splitlines()
        assert f"--udp cannot go with {flag}" in line



def test_a_flood_of_new_client_addresses_keeps_memory_bounded(mesh: Mesh) -> None:
    """20,000 client addresses, each sending one datagram: the connect holds at most its
    --max-flows, the sharer at most its own, and neither grows without bound."""
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    share, conn, local, _ = udp_tunnel(mesh, sink.getsockname()[1], ())
    try:
        before = (share.peak_rss_kb(), conn.peak_rss_kb())
        for i in range(20_000):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
                c.sendto(i.to_bytes(4, "big") * 50, ("127.0.0.1", local))
            if i % 500 == 0:
                time.sleep(0.01)
        time.sleep(1.0)
        mine, theirs = status(mesh, "connector")["udp"], status(mesh, "sharer")["peers"][0]
        assert mine["flows_open"] <= 1024 and theirs["udp"]["flows_open"] <= 256
        assert mine["flows_total"] + mine["drop_reasons"].get("too many flows", 0) >= 19_000
        assert theirs["udp"]["flows_refused"] > 0
        after = (share.peak_rss_kb(), conn.peak_rss_kb())
        grown = [(a - b) // 1024 for a, b in zip(after, before, strict=True)]
        print(f"peak RSS grew by {grown[0]} MiB (share) and {grown[1]} MiB (connect)")
        assert max(grown) < 40, grown
    finally:
        sink.close()


def test_a_udp_ticket_on_a_tcp_only_path_is_a_clear_error(mesh: Mesh) -> None:
    _, url = mesh.signal()
    _, ticket = mesh.share("5683", url, "--udp")
    res = mesh.run("connect", ticket, "--http")
    assert res.returncode == 2, res
    (line,) = res.stderr.strip().splitlines()
    assert "carries UDP only; --http needs a TCP share" in line


def test_the_udp_benchmark_runs(tmp_path: Path) -> None:
    """benchmarks/run.py --udp end to end on small counts (its figures are the closing
    note's; this keeps it from rotting)."""
    root = Path(__file__).resolve().parents[2]
    res = subprocess.run([sys.executable, str(root / "benchmarks/run.py"), "--udp", "--count",
                          "3000", "--pings", "100", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    paths = json.loads((tmp_path / "udp.json").read_text())["paths"]
    for name in ("direct", "mesh", "mesh-relay"):
        assert paths[name]["blast_delivered_per_s"] > 0, paths[name]
        assert paths[name]["rtt_answered"] == "100/100", paths[name]
    assert paths["mesh"]["rtt_added_p50_ms"] > 0
    assert "| mesh-relay |" in (tmp_path / "udp.md").read_text()


def test_the_python_api_shares_udp(inproc: InProc) -> None:
    """``mesh.share(port, udp=True)`` and ``mesh.connect``: the tunnel's UDP port echoes."""
    import asyncio

    import mesh as api
    from mesh.proto.identity import Identity
    from tests.harness import LOOPBACK

    echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    echo.bind(("127.0.0.1", 0))

    def serve_once() -> None:
        data, addr = echo.recvfrom(100)
        echo.sendto(data[::-1], addr)

    def ask(port: int) -> bytes:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(10)
            s.sendto(b"datagram", ("127.0.0.1", port))
            return s.recv(100)

    async def go() -> tuple[str, str, bytes]:
        async with api.share(echo.getsockname()[1], udp=True, signal=inproc.url, lan=False,
                             identity=Identity.generate(), persist_secret=False,
                             ice=LOOPBACK) as share, api.connect(
                share.ticket, identity=Identity.generate(), use_lan_hints=False,
                ice=LOOPBACK) as tunnel:
            server = asyncio.get_running_loop().run_in_executor(None, serve_once)
            answer = await asyncio.to_thread(ask, tunnel.port)
            await server
            return share.config.protos, tunnel.ticket.protos, answer

    try:
        assert inproc.run(go()) == ("udp", "udp", b"margatad")
    finally:
        echo.close()


def test_a_hostile_peer_cannot_open_unbounded_flows_or_crash_the_sharer(
        inproc: InProc) -> None:
    """An admitted peer that speaks the udp channel by hand: 2,000 flow numbers, text,
    short and unknown frames. The sharer holds --max-flows sockets, answers the refused
    with CLOSE, counts the malformed, and still serves a well-formed flow."""
    import asyncio

    from mesh.proto import datagram as dg
    from mesh.transport import udp as udp_glue

    echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    echo.bind(("127.0.0.1", 0))
    echo.setblocking(False)
    share = inproc.share(echo.getsockname()[1], udp=True, max_flows=8)
    conn = inproc.connect(share.obj.ticket)

    async def attack() -> list[bytes | str]:
        link = conn.obj._link
        assert link is not None
        channel = udp_glue.open_channel(link.peer)
        got: list[bytes | str] = []
        channel.on("message", got.append)
        for flow in range(1, 2001):
            channel.send(dg.encode_data(flow, b"x"))
            if flow % 200 == 0:
                await asyncio.sleep(0.01)
        for bad in ("text", b"\0\0", b"\x07\0\0\0\1", dg.encode_data(0, b"zero")):
            channel.send(bad)
        await asyncio.sleep(1.0)
        return got

    try:
        replies = inproc.run(attack())
        refused = [dg.decode(m) for m in replies]
        assert len(refused) >= 1000 and all(isinstance(r, dg.Close) and r.reason == dg.REFUSED
                                             for r in refused)
        (peer,) = share.obj.snapshot()["peers"]
        udp = peer["udp"]
        assert udp["flows_open"] == 8 and udp["flows_refused"] >= 1900, udp
        assert udp["drop_reasons"]["malformed"] == 4, udp
        seen = set()
        while True:
            try:
                seen.add(echo.recvfrom(100)[1])
            except BlockingIOError:
                break
        assert len(seen) == 8  # a socket per admitted flow, no more
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:  # still serving
            c.settimeout(5)
            c.sendto(b"ok?", ("127.0.0.1", conn.obj.port))
            echo.setblocking(True)
            echo.settimeout(5)
            data, _ = echo.recvfrom(100)
            assert data == b"ok?"
    finally:
        echo.close()


def test_a_tcp_stream_to_a_udp_only_share_is_reset_with_the_reason(inproc: InProc) -> None:
    """A connector that opens a `tcp` channel anyway (an old or hand-made one) gets the
    stream reset with why, and no TCP connection is made to the service's port."""
    import asyncio

    from mesh.proto import stream as sp

    share = inproc.share(5683, udp=True)
    conn = inproc.connect(share.obj.ticket)

    async def try_tcp() -> list[object]:
        link = conn.obj._link
        assert link is not None
        channel = link.peer.open_channel("tcp")
        replies: list[object] = []
        channel.on("message", lambda m: replies.append(sp.parse(m)))
        await asyncio.sleep(1.0)
        return replies

    assert inproc.run(try_tcp()) == [sp.Reset("this share carries UDP only")]
    assert share.obj.snapshot()["peers"][0]["streams_total"] == 0


def test_the_gateway_refuses_a_public_name_whose_ticket_is_udp_only() -> None:
    """A share cannot be --public and --udp, but the gateway does not take that on trust:
    a public name answering with a UDP-only ticket gets 502, and no tunnel is built."""
    import http.client

    from mesh.http.config import HttpConfig
    from mesh.proto.identity import Identity
    from mesh.proto.ticket import Ticket, decode

    gateway_key = Identity.generate()
    lab = InProc(gateways=frozenset({gateway_key.node_id}))
    try:
        gateway = lab.gateway(gateway_key, domain="mesh.test")
        port = int(gateway.event("ready")["url"].rsplit(":", 1)[1])
        share = lab.share(9, name="odd", public=True, http=HttpConfig(inspect=None))
        share.event("public")
        real = decode(share.obj.ticket)
        share.obj.ticket = Ticket(real.node_id, real.secret, real.expires, real.name,
                                  real.signal_urls, tcp=False, udp=True
                                  ).encode(share.obj.identity)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        conn.request("GET", "/", headers={"Host": "odd.mesh.test"})
        resp = conn.getresponse()
        assert resp.status == 502 and b"carries UDP only" in resp.read()
        assert not gateway.obj.upstreams.tunnels
    finally:
        lab.close()
