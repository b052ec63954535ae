"""The signaling server facing hostile clients: error frames, closes, and it keeps serving."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from mesh.proto import frames as p
from mesh.proto.identity import Identity
from tests.conftest import Mesh, Proc

Client = aiohttp.ClientWebSocketResponse


@pytest.fixture
async def server(mesh: Mesh) -> AsyncIterator[tuple[Proc, str]]:
    proc = mesh.start("signal", "--port", "0", "--stun-port", "0", "--json",
                      "--max-conns-per-ip", "20",
                      "--rate", "20")
    yield proc, str(proc.event("ready")["url"])


async def recv(ws: Client, timeout: float = 5) -> dict[str, Any]:
    msg = await ws.receive(timeout=timeout)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    return dict(json.loads(msg.data))


async def closed(ws: Client, timeout: float = 5) -> bool:
    msg = await ws.receive(timeout=timeout)
    return msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                        aiohttp.WSMsgType.CLOSING)


async def register(http: aiohttp.ClientSession, url: str,
                   ident: Identity | None = None) -> tuple[Client, Identity]:
    ident = ident or Identity.generate()
    ws = await http.ws_connect(url)
    hello = await recv(ws)
    nonce = base64.b64decode(hello["nonce"])
    sig = ident.sign(p.register_message(nonce, ident.node_id))
    await ws.send_str(p.encode(p.Register(ident.node_id, sig)))
    assert (await recv(ws))["type"] == "registered"
    return ws, ident


async def still_serves(http: aiohttp.ClientSession, url: str) -> None:
    a, ia = await register(http, url)
    b, ib = await register(http, url)
    await a.send_str(p.encode(p.Send(ib.node_id, b"hi", 1)))
    got = await recv(b)
    assert got["type"] == "deliver" and got["from"] == ia.node_id
    assert base64.b64decode(got["payload"]) == b"hi"
    await a.close()
    await b.close()


Attack = Callable[[aiohttp.ClientSession, str], Awaitable[None]]


async def test_routing_and_unknown_destination(server: tuple[Proc, str]) -> None:
    _, url = server
    async with aiohttp.ClientSession() as http:
        await still_serves(http, url)
        a, _ = await register(http, url)
        await a.send_str(p.encode(p.Send(Identity.generate().node_id, b"x", 42)))
        err = await recv(a)
        assert (err["type"], err["code"], err["ref"]) == ("error", "unknown-destination", 42)


@pytest.mark.parametrize("frame,code", [
    ("not json", "bad-frame"),
    ('{"type": "register", "node": "x", "sig": "AA=="}', "bad-frame"),
    ("{" * 5000, "bad-frame"),
    ("x" * (70 * 1024), "too-large"),
])
async def test_malformed_frames_get_error_and_close(server: tuple[Proc, str], frame: str,
                                                    code: str) -> None:
    proc, url = server
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(url)
        await recv(ws)  # hello
        await ws.send_str(frame)
        err = await recv(ws)
        assert (err["type"], err["code"]) == ("error", code)
        assert await closed(ws)
        await still_serves(http, url)
    assert proc.p.poll() is None


async def test_binary_and_oversized_binary(server: tuple[Proc, str]) -> None:
    _, url = server
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(url)
        await recv(ws)
        await ws.send_bytes(b"\x00" * 100)
        assert (await recv(ws))["code"] == "bad-frame"
        ws2 = await http.ws_connect(url)
        await recv(ws2)
        await ws2.send_bytes(b"\x00" * (1 << 20))  # beyond even the hard cap
        msg = await ws2.receive(timeout=5)
        assert msg.type != aiohttp.WSMsgType.TEXT or json.loads(msg.data)["type"] == "error"
        await still_serves(http, url)


async def test_cannot_register_someone_elses_id(server: tuple[Proc, str]) -> None:
    _, url = server
    victim, attacker = Identity.generate(), Identity.generate()
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(url)
        hello = await recv(ws)
        nonce = base64.b64decode(hello["nonce"])
        sig = attacker.sign(p.register_message(nonce, victim.node_id))
        await ws.send_str(p.encode(p.Register(victim.node_id, sig)))
        assert (await recv(ws))["code"] == "bad-signature"
        assert await closed(ws)


async def test_replayed_registration_is_refused(server: tuple[Proc, str]) -> None:
    _, url = server
    ident = Identity.generate()
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(url)
        hello = await recv(ws)
        frame = p.encode(p.Register(ident.node_id, ident.sign(
            p.register_message(base64.b64decode(hello["nonce"]), ident.node_id))))
        await ws.send_str(frame)
        assert (await recv(ws))["type"] == "registered"
        ws2 = await http.ws_connect(url)  # an eavesdropper replays the same frame
        await recv(ws2)
        await ws2.send_str(frame)
        assert (await recv(ws2))["code"] == "bad-signature"


async def test_send_before_register(server: tuple[Proc, str]) -> None:
    _, url = server
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(url)
        await recv(ws)
        await ws.send_str(p.encode(p.Send(Identity.generate().node_id, b"x", 1)))
        assert (await recv(ws))["code"] == "not-registered"


async def test_rate_limit(server: tuple[Proc, str]) -> None:
    _, url = server
    async with aiohttp.ClientSession() as http:
        a, _ = await register(http, url)
        for _ in range(400):
            await a.send_str(p.encode(p.Ping()))
        # Pongs within the burst, then rate-limit errors. Not one reply per ping: a
        # client that floods faster than its replies drain has the overflow of its
        # own outbox dropped (the server never queues without bound for it).
        codes: set[str] = set()
        while not {"error", "pong"} <= codes:
            codes.add((await recv(a))["type"])
        await still_serves(http, url)


async def test_connections_per_ip(server: tuple[Proc, str]) -> None:
    _, url = server
    async with aiohttp.ClientSession() as http:
        conns = [await http.ws_connect(url) for _ in range(20)]
        extra = await http.ws_connect(url)
        err = await recv(extra)
        assert err["code"] == "too-many-connections"
        for ws in conns:
            await ws.close()
        await asyncio.sleep(0.3)
        await still_serves(http, url)


async def test_plain_http_and_health(server: tuple[Proc, str]) -> None:
    _, url = server
    base = url.replace("ws://", "http://")
    async with aiohttp.ClientSession() as http:
        async with http.get(base) as resp:
            assert resp.status == 426
        async with http.get(base + "healthz") as resp:
            assert (await resp.json())["ok"] is True


async def test_one_node_several_sessions_and_the_ninth_refused(
        server: tuple[Proc, str]) -> None:
    """Eight processes may share a key; the ninth is refused with a clear error and
    nobody is evicted (eviction made ten processes replace each other forever)."""
    _, url = server
    async with aiohttp.ClientSession() as http:
        first, ident = await register(http, url)
        others = [(await register(http, url, ident))[0] for _ in range(7)]
        b, _ = await register(http, url)
        await b.send_str(p.encode(p.Send(ident.node_id, b"to-all", 1)))
        for ws in [first, *others]:  # every process with that key gets it
            assert base64.b64decode((await recv(ws))["payload"]) == b"to-all"
        ninth = await http.ws_connect(url)
        hello = await recv(ninth)
        sig = ident.sign(p.register_message(base64.b64decode(hello["nonce"]), ident.node_id))
        await ninth.send_str(p.encode(p.Register(ident.node_id, sig)))
        err = await recv(ninth)
        assert err["code"] == "too-many-sessions" and "--max-sessions-per-key" in err["message"]
        assert await closed(ninth)
        await b.send_str(p.encode(p.Send(ident.node_id, b"again", 2)))
        for ws in [first, *others]:  # the eight stay
            assert base64.b64decode((await recv(ws))["payload"]) == b"again"
        await first.close()  # a slot comes free: the next registration is taken
        await asyncio.sleep(0.3)
        await register(http, url, ident)


def test_a_share_beyond_the_session_limit_exits_with_the_reason_and_no_one_flaps(
        mesh: Mesh) -> None:
    _, url = mesh.signal("--max-sessions-per-key", "2")
    procs = [mesh.start("share", "8000", "--signal", url, "--name", f"s{i}", "--json",
                        home="one-key") for i in range(2)]
    for proc in procs:
        proc.event("ready")
    third = mesh.start("share", "8000", "--signal", url, "--name", "s2", "--json",
                       home="one-key")
    assert third.wait(30) == 4  # a signaling error
    errors = [e for e in third.events if e.get("event") == "error"]
    assert errors and "--max-sessions-per-key" in errors[0]["message"], third.events
    assert "Traceback" not in "".join(third.stderr)
    time.sleep(3)
    for proc in procs:  # still registered, never replaced
        assert proc.p.poll() is None
        while not proc.lines.empty():  # every event printed so far
            line = proc.lines.get_nowait()
            if line:
                proc.events.append(json.loads(line))
        states = [e["state"] for e in proc.events if e.get("event") == "signal"]
        assert states == ["registered"], proc.events


async def test_sigterm_with_20_peers_exits_within_2_s_and_the_ports_are_free_at_once(
        mesh: Mesh) -> None:
    from mesh.node.signal_client import SignalClient
    from tests.conftest import free_port

    port, stun_port = free_port(), free_port()
    args = ("signal", "--port", str(port), "--stun-port", str(stun_port), "--json")
    proc = mesh.start(*args)
    url = str(proc.event("ready")["url"])
    states: list[tuple[str, str]] = []
    clients = [SignalClient(Identity.generate(), [url], lambda s, b: None,
                            lambda state, u: states.append((state, u))) for _ in range(20)]
    for client in clients:
        await client.start()
    try:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        proc.p.terminate()
        code = await asyncio.to_thread(proc.p.wait, 10)
        took = loop.time() - t0
        print(f"mesh signal with 20 sessions: exit {code} after {took:.2f} s")
        assert code == 0 and took < 2.0, took
        again = mesh.start(*args)
        assert again.event("ready", timeout=10)["url"] == url  # the same ports, at once
        # every client was told it was going away and is back without a backoff round
        async with asyncio.timeout(5):
            while not all(c.registered.is_set() for c in clients):
                await asyncio.sleep(0.05)
        assert states.count(("disconnected", url)) == 20
    finally:
        for client in clients:
            await client.close()


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_sessions_that_never_read_cannot_make_the_server_hold_their_mail(
        mesh: Mesh) -> None:
    """Eight sessions of one key that never read, and a sender of the largest frames:
    each session's outbox is bounded in bytes and the frame is encoded once for all
    eight, so the server holds at most a few MB (it held ~+339 MB before)."""
    proc = mesh.start("signal", "--port", "0", "--stun-port", "0", "--json",
                      "--rate", "1000")
    url = str(proc.event("ready")["url"])
    async with aiohttp.ClientSession() as http:
        victim = Identity.generate()
        sleepers = [(await register(http, url, victim))[0] for _ in range(8)]
        sender, _ = await register(http, url)
        await asyncio.sleep(0.5)
        base = _rss_kb(proc.p.pid)
        blob = os.urandom(40 * 1024)  # a 64 KiB frame once base64-encoded
        for i in range(600):
            await sender.send_str(p.encode(p.Send(victim.node_id, blob, i)))
        codes: list[str] = []
        while len(codes) < 50:  # only refused sends are answered
            msg = await recv(sender, timeout=20)
            if msg.get("type") == "error":
                codes.append(str(msg["code"]))
        grown_mb = (_rss_kb(proc.p.pid) - base) / 1024
        assert "recipient-busy" in codes  # told, not silently queued
        assert grown_mb < 30, f"the server grew {grown_mb:.0f} MB"
        await still_serves(http, url)  # a legitimate pair still gets through
        for ws in sleepers:
            await ws.close()
