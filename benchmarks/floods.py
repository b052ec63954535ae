"""What a hostile client can make each server hold, and whether others still get through.

    python benchmarks/floods.py [--out DIR]

Each flood runs against the real process (started through the CLI on
127.0.0.1); the attacker connects from 127.0.0.1, the legitimate user from
127.0.0.2, since per-address limits are part of the defence. For each: the
process's RSS before and at its highest during the flood, the growth, the
attacker bytes the server holds per connection (growth over connections
made), and whether the legitimate check succeeded during the flood.

- ``signaling outbox``: eight sessions of one key that never read, and a
  sender of 600 of the largest frames (64 KiB) to that key;
- ``TURN over TCP``: 1,500 connections, each parking a partial 64 KB frame;
  the legitimate user allocates a relay over TCP with the credentials the
  server handed it;
- ``gateway``: 64 POSTs that announce a body and never send it, then 1,100
  idle connections; the legitimate user GETs the share through the gateway.

JSON and a markdown table go to ``benchmarks/results/floods.{json,md}``.
To measure another commit's servers with the same attacks, put its tree
first on the path: ``git archive COMMIT | tar -x -C DIR`` then
``PYTHONPATH=DIR python benchmarks/floods.py`` (the processes run DIR's mesh).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import resource
import secrets
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

from mesh.proto import frames as p  # noqa: E402
from mesh.proto import stun as s  # noqa: E402
from mesh.proto.identity import Identity  # noqa: E402
from tests.conftest import Mesh  # noqa: E402
from tests.integration.test_signal_server import recv, register  # noqa: E402

ATTACKER, LEGIT = "127.0.0.1", "127.0.0.2"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Peak:
    """The highest RSS of ``pid`` while the block runs (sampled every 50 ms)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, rss_mb(pid), threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb(self.pid))
            time.sleep(0.05)

    def stop(self) -> float:
        self._stop.set()
        return max(self.peak, rss_mb(self.pid))


def result(name: str, pid: int, before: float, peak: float, connections: int, ok: bool,
           note: str) -> dict[str, Any]:
    grown = max(0.0, peak - before)
    return {"flood": name, "rss_before_mb": round(before, 1), "rss_peak_mb": round(peak, 1),
            "growth_mb": round(grown, 1), "attacker_connections": connections,
            "held_per_connection_kb": round(grown * 1024 / max(1, connections), 1),
            "legitimate_ok": ok, "note": note}


# -- signaling ---------------------------------------------------------------------------
async def signaling_flood(mesh: Mesh) -> dict[str, Any]:
    proc = mesh.start("signal", "--port", "0", "--stun-port", "0", "--json", "--rate", "1000")
    url = str(proc.event("ready")["url"])
    pid = proc.p.pid
    async with aiohttp.ClientSession() as http:
        victim = Identity.generate()
        sleepers = [(await register(http, url, victim))[0] for _ in range(8)]
        sender, _ = await register(http, url)
        await asyncio.sleep(0.5)
        before, peak = rss_mb(pid), Peak(pid)
        blob = os.urandom(40 * 1024)  # 64 KiB once base64-encoded in the frame
        for i in range(600):
            await sender.send_str(p.encode(p.Send(victim.node_id, blob, i)))
        await asyncio.sleep(1.0)
        a, _ = await register(http, url)
        b, ib = await register(http, url)
        await a.send_str(p.encode(p.Send(ib.node_id, b"hello", 1)))
        got = await recv(b)
        ok = got.get("type") == "deliver"
        top = peak.stop()
        for ws in [*sleepers, sender, a, b]:
            await ws.close()
    proc.stop()
    return result("signaling outbox", pid, before, top, 9, ok,
                  "8 sessions that never read + 600 x 64 KiB frames to them")


# -- TURN over TCP ------------------------------------------------------------------------
def turn_allocate(host: str, port: int, user: str, password: str, source: str) -> bool:
    """A legitimate TCP allocation (401 round, then authenticated)."""
    with socket.create_connection((host, port), timeout=10, source_address=(source, 0)) as c:
        framer = s.StreamFramer()

        def ask(msg: s.Message, key: bytes | None = None) -> s.Message:
            c.sendall(msg.encode(key=key, fingerprint=True))
            while True:
                frames = framer.feed(c.recv(65536))
                if frames:
                    return s.parse(frames[0])

        transport = (s.REQUESTED_TRANSPORT, b"\x11\x00\x00\x00")
        first = ask(s.Message(s.ALLOCATE, s.REQUEST, secrets.token_bytes(12), (transport,)))
        nonce, realm = first.get(s.NONCE), first.get(s.REALM)
        if nonce is None or realm is None:
            return False
        key = s.long_term_key(user, realm.decode(), password)
        reply = ask(s.Message(s.ALLOCATE, s.REQUEST, secrets.token_bytes(12), (
            transport, (s.USERNAME, user.encode()), (s.REALM, realm), (s.NONCE, nonce))), key)
        return reply.cls == s.SUCCESS


async def turn_flood(mesh: Mesh) -> dict[str, Any]:
    proc = mesh.start("signal", "--port", "0", "--stun-port", "0", "--json")
    ready = proc.event("ready")
    url, turn = str(ready["url"]), str(ready["turn"][1])
    host, port = turn.split(":", 1)[1].split("?")[0].rsplit(":", 1)
    pid = proc.p.pid
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(url)
        hello = await recv(ws)
        ident = Identity.generate()
        sig = ident.sign(p.register_message(base64.b64decode(hello["nonce"]), ident.node_id))
        await ws.send_str(p.encode(p.Register(ident.node_id, sig)))
        registered = await recv(ws)
        creds = next(e for e in registered["ice_servers"] if "username" in e)
        before, peak = rss_mb(pid), Peak(pid)
        parked: list[socket.socket] = []
        for _ in range(1500):
            try:
                c = socket.create_connection((host, int(port)), timeout=5,
                                             source_address=(ATTACKER, 0))
                c.setblocking(False)
                with contextlib.suppress(OSError):
                    c.send(b"\x00\x03\xff\xf0" + secrets.token_bytes(12) + b"x" * 60_000)
                parked.append(c)
            except OSError:
                break
        await asyncio.sleep(1.0)
        ok = await asyncio.to_thread(turn_allocate, host, int(port), creds["username"],
                                     creds["credential"], LEGIT)
        top = peak.stop()
        for c in parked:
            c.close()
        await ws.close()
    proc.stop()
    return result("TURN over TCP", pid, before, top, len(parked), ok,
                  f"{len(parked)} connections each parking a partial 64 KB frame")


# -- gateway -----------------------------------------------------------------------------
def gateway_flood(mesh: Mesh) -> dict[str, Any]:
    gw_home = "gw"
    gw_id = json.loads(mesh.run("id", "--json", home=gw_home).stdout)["node_id"]
    _, url = mesh.signal("--gateway", gw_id)
    gateway = mesh.start("gateway", "--domain", "mesh.test", "--listen", "127.0.0.1:0",
                         "--signal", url, "--json", home=gw_home)
    gport = int(gateway.event("ready")["url"].rsplit(":", 1)[1])
    service = _service()
    share = mesh.start("share", str(service), "--signal", url, "--name", "victim", "--public",
                       "--http", "--no-inspect", "--json")
    share.event("public", timeout=60)
    pid = gateway.p.pid

    def get(source: str) -> bool:
        with socket.create_connection(("127.0.0.1", gport), timeout=30,
                                      source_address=(source, 0)) as c:
            c.sendall(b"GET / HTTP/1.1\r\nHost: victim.mesh.test\r\nConnection: close\r\n\r\n")
            return c.recv(64).startswith(b"HTTP/1.1 200")

    assert get(LEGIT)  # warm: the gateway's tunnel to the share is up
    before, peak = rss_mb(pid), Peak(pid)
    held: list[socket.socket] = []
    for _ in range(64):
        c = socket.create_connection(("127.0.0.1", gport), timeout=10,
                                     source_address=(ATTACKER, 0))
        c.sendall(b"POST / HTTP/1.1\r\nHost: victim.mesh.test\r\nContent-Length: 100000\r\n\r\n")
        held.append(c)
    for _ in range(1100):
        try:
            held.append(socket.create_connection(("127.0.0.1", gport), timeout=10,
                                                 source_address=(ATTACKER, 0)))
        except OSError:
            break
    time.sleep(1.0)
    ok = get(LEGIT)
    top = peak.stop()
    for c in held:
        c.close()
    return result("gateway", pid, before, top, len(held), ok,
                  "64 bodiless POSTs + 1,100 idle connections from one address")


def _service() -> int:
    """A tiny HTTP service on 127.0.0.1 that answers 200."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return int(server.server_address[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    mesh = Mesh(Path(tempfile.mkdtemp(prefix="mesh-floods-")))
    runs: list[Callable[[], dict[str, Any]]] = [
        lambda: asyncio.run(signaling_flood(mesh)),
        lambda: asyncio.run(turn_flood(mesh)),
        lambda: gateway_flood(mesh),
    ]
    results = []
    try:
        for run in runs:
            results.append(run())
            print(json.dumps(results[-1]), flush=True)
    finally:
        mesh.close()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "floods.json").write_text(json.dumps(results, indent=2) + "\n")
    cols = ["flood", "note", "rss_before_mb", "rss_peak_mb", "growth_mb",
            "attacker_connections", "held_per_connection_kb", "legitimate_ok"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in results]
    (out / "floods.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
