"""Real UDP software for the UDP share tests: dnsmasq queried with dig, raw DNS from many
sockets, and a CoAP client (aiocoap) against tests/integration/coapservice.py.

Every helper takes the command prefix of the network namespace it runs in ([] for
this one), so the loopback tests and the NAT lab use the same checks.
"""

from __future__ import annotations

import select
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import require_tool

HOSTS = {f"host{i}.mesh.test": f"198.18.200.{i + 1}" for i in range(10)}
"""Names dnsmasq serves, one per client socket (addresses are only data here)."""
A_NAME, A_ADDR, AAAA_ADDR = "a.mesh.test", "198.18.100.53", "2001:db8::53"
TXT_NAME, TXT = "info.mesh.test", "served by dnsmasq through mesh"


def start_dnsmasq(tmp: Path, port: int, listen: str = "127.0.0.1",
                  prefix: list[str] | None = None) -> subprocess.Popen[bytes]:
    """dnsmasq answering from a hosts file on ``listen:port``, in the foreground."""
    binary = require_tool("dnsmasq", "dnsmasq-base")
    hosts = tmp / "hosts"
    hosts.write_text("".join(f"{addr} {name}\n" for name, addr in HOSTS.items())
                     + f"{A_ADDR} {A_NAME}\n{AAAA_ADDR} {A_NAME}\n")
    proc = subprocess.Popen(
        [*(prefix or []), binary, "--keep-in-foreground", "--conf-file=/dev/null",
         f"--port={port}", f"--listen-address={listen}", "--bind-interfaces", "--no-resolv",
         "--no-hosts", f"--addn-hosts={hosts}", f"--txt-record={TXT_NAME},{TXT}",
         "--user=root", "--pid-file=", "--cache-size=0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"dnsmasq exited: {proc.stderr.read() if proc.stderr else ''!r}")
        if prefix or _answers(listen, port):
            return proc
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("dnsmasq did not answer within 10 s")


def _answers(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.3)
        try:
            s.sendto(query(A_NAME, 1, 1), (host, port))
            return parse(s.recv(4096))[0] == 1
        except OSError:
            return False


def dig(port: int, name: str, qtype: str, server: str = "127.0.0.1",
        prefix: list[str] | None = None, tcp: bool = False) -> list[str]:
    binary = require_tool("dig", "bind9-dnsutils")
    out = subprocess.run([*(prefix or []), binary, f"@{server}", "-p", str(port), name, qtype,
                          "+short", "+tries=3", "+time=2", "+tcp" if tcp else "+notcp"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout.strip().splitlines()  # TXT answers keep their quotes


def query(name: str, qtype: int, qid: int) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + struct.pack("!HH",
                                                                                 qtype, 1)


def parse(reply: bytes) -> tuple[int, str, list[str]]:
    """(id, the question's name, the A records' addresses) of a reply."""
    qid, _flags, _qd, an = struct.unpack_from("!HHHH", reply)
    pos, labels = 12, []
    while reply[pos]:
        labels.append(reply[pos + 1:pos + 1 + reply[pos]].decode())
        pos += 1 + reply[pos]
    pos += 5
    addrs = []
    for _ in range(an):
        pos += 2 if reply[pos] & 0xC0 == 0xC0 else 0  # a compressed name
        rtype, _cls, _ttl, rdlen = struct.unpack_from("!HHIH", reply, pos)
        pos += 10
        if rtype == 1:
            addrs.append(socket.inet_ntoa(reply[pos:pos + rdlen]))
        pos += rdlen
    return qid, ".".join(labels), addrs


def many_queries(host: str, port: int, total: int = 1000, sockets: int = 10,
                 window: int = 10) -> dict[str, int]:
    """``total`` A queries from ``sockets`` client sockets (socket i asks host<i>),
    ``window`` outstanding per socket; a query unanswered for 2 s is asked again, as a
    resolver would. Returns counts: answered, retried, misdirected (an answer that
    reached a socket which did not ask it), wrong (a wrong address)."""
    names = list(HOSTS)
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(sockets)]
    stats = {"answered": 0, "retried": 0, "misdirected": 0, "wrong": 0}
    per = total // sockets
    try:
        for s in socks:
            s.setblocking(False)
        todo = [list(range(i * per + 1, (i + 1) * per + 1)) for i in range(sockets)]
        waiting: list[dict[int, float]] = [{} for _ in range(sockets)]
        deadline = time.monotonic() + 120
        while any(todo) or any(waiting):
            assert time.monotonic() < deadline, stats
            now = time.monotonic()
            for i, s in enumerate(socks):
                for qid, sent in list(waiting[i].items()):
                    if now - sent > 2:
                        stats["retried"] += 1
                        waiting[i][qid] = now
                        s.sendto(query(names[i], 1, qid), (host, port))
                while todo[i] and len(waiting[i]) < window:
                    qid = todo[i].pop()
                    waiting[i][qid] = now
                    s.sendto(query(names[i], 1, qid), (host, port))
            ready, _, _ = select.select(socks, [], [], 0.2)
            for s in ready:
                i = socks.index(s)
                while True:
                    try:
                        reply = s.recv(4096)
                    except BlockingIOError:
                        break
                    qid, name, addrs = parse(reply)
                    if name != names[i] or not i * per < qid <= (i + 1) * per:
                        stats["misdirected"] += 1
                        continue
                    if waiting[i].pop(qid, None) is None:
                        continue  # the answer to a query asked twice
                    stats["answered"] += 1
                    if addrs != [HOSTS[names[i]]]:
                        stats["wrong"] += 1
    finally:
        for s in socks:
            s.close()
    return stats


COAP_CHECK = r'''
import asyncio, sys
import aiocoap

async def main(uri):
    ctx = await aiocoap.Context.create_client_context()
    def get(path):
        return ctx.request(aiocoap.Message(code=aiocoap.GET, uri=uri + path)).response
    try:
        got = await asyncio.wait_for(get("/thing"), 20)
        print("GET1", got.code, got.payload.decode())
        put = aiocoap.Message(code=aiocoap.PUT, uri=uri + "/thing", payload=b"set through mesh")
        got = await asyncio.wait_for(ctx.request(put).response, 20)
        print("PUT", got.code, got.payload.decode())
        got = await asyncio.wait_for(get("/thing"), 20)
        print("GET2", got.code, got.payload.decode())
        req = ctx.request(aiocoap.Message(code=aiocoap.GET, uri=uri + "/clock", observe=0))
        first = await asyncio.wait_for(req.response, 20)
        ticks = [int(first.payload)]
        async def follow():
            async for note in req.observation:
                ticks.append(int(note.payload))
                if len(ticks) > 20:
                    return
        await asyncio.wait_for(follow(), 30)
        req.observation.cancel()
        print("OBSERVE", " ".join(map(str, ticks[1:])))
    finally:
        await ctx.shutdown()

asyncio.run(main(sys.argv[1]))
'''


def coap_session(host: str, port: int, prefix: list[str] | None = None) -> dict[str, str]:
    """GET, PUT, GET and an Observe of 20 notifications, by aiocoap's client in a process
    of its own; returns the lines it printed by their first word."""
    out = subprocess.run([*(prefix or []), sys.executable, "-c", COAP_CHECK,
                          f"coap://{host}:{port}"], capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stdout + out.stderr
    return {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in out.stdout.splitlines()}


def start_coap(port: int, prefix: list[str] | None = None) -> subprocess.Popen[str]:
    proc = subprocess.Popen([*(prefix or []), sys.executable, "-m",
                             "tests.integration.coapservice", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=str(Path(__file__).resolve().parent.parent))
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "ready", (line, proc.stderr.read() if proc.stderr else "")
    return proc
