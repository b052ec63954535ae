"""HTTP mode: `mesh share --http` and `mesh connect [--http]`.

Shares and connects run in this process (tests/harness.py: real signaling, real
peer connections on loopback); what only the command line shows (the human log
line, flag errors) runs through the real CLI. A recording service
(httpservice.py) logs every request it receives, so the hostile cases can prove
that nothing reached it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import http.client
import json
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from mesh.http.config import HttpConfig
from mesh.proto import ticket as tk
from tests.conftest import MESH, Mesh, Proc, free_port
from tests.harness import InProc, Node

HERE = Path(__file__).parent
AUTH = "Basic " + base64.b64encode(b"alice:s3cret").decode()


@dataclass
class Service:
    port: int
    log: Path
    proc: subprocess.Popen[str]

    def seen(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def paths(self) -> list[str]:
        return [e["path"] for e in self.seen()]


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    log = tmp_path / "service.jsonl"
    proc = subprocess.Popen([sys.executable, str(HERE / "httpservice.py"), str(log)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    yield Service(port, log, proc)
    proc.terminate()
    proc.wait(5)


@dataclass
class HttpShare:
    share: Node | Proc
    connect: Node | Proc
    port: int
    inspector: str
    peer: str
    """The connector's node id, as the sharer saw it."""


def http_share(lab: InProc, service: Service, *, guard: bool = False,
               inspect: bool = True, **http: Any) -> HttpShare:
    """An HTTP share of ``service`` and a connect to it (``guard``: ``--http`` there too;
    without it, ``--no-http-guard``, so the sharer's own checks are what is tested)."""
    config = HttpConfig(inspect="127.0.0.1:0" if inspect else None, inspect_explicit=True,
                        **http)
    share = lab.share(service.port, http=config)
    inspector = str(share.event("inspector")["url"]) if inspect else ""
    conn = lab.connect(share.obj.ticket, http=guard, no_http_guard=not guard)
    peer = str(share.event("connected")["peer"])
    return HttpShare(share, conn, conn.obj.port, inspector, peer)


def cli_http_share(mesh: Mesh, service: Service) -> HttpShare:
    """The same, through the real CLI: `mesh share --http` and `mesh connect` processes."""
    _, url = mesh.signal()
    share, ticket = mesh.share(service.port, url, "--http", "--inspect", "127.0.0.1:0")
    inspector = str(share.event("inspector")["url"])
    conn, port = mesh.connect(ticket)
    peer = str(share.event("connected")["peer"])
    return HttpShare(share, conn, port, inspector, peer)


def request(port: int, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def raw(port: int, data: bytes, timeout: float = 20) -> bytes:
    """Send raw bytes, return everything the server sends until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = bytearray()
        while chunk := s.recv(65536):
            out += chunk
        return bytes(out)


def request_event(proc: Proc | Node, path: str, timeout: float = 15) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        ev = proc.event("request", timeout=max(0.1, deadline - time.monotonic()))
        if ev["path"] == path:
            return ev


# -- the request log ----------------------------------------------------------------

def test_get_post_and_chunked_upload_are_logged(inproc: InProc, service: Service) -> None:
    hs = http_share(inproc, service)
    status, _, body = request(hs.port, "GET", "/hello")
    assert (status, body) == (200, b"hello from the service\n")
    ev = request_event(hs.share, "/hello")
    assert (ev["method"], ev["status"], ev["bytes_out"], ev["state"]) == ("GET", 200, 23,
                                                                          "complete")
    assert ev["duration_ms"] > 0 and ev["peer"] == hs.peer and ev["client"] == "127.0.0.1"

    payload = b"x=1&y=" + b"z" * 5000
    status, _, body = request(hs.port, "POST", "/echo", payload)
    assert status == 200
    assert json.loads(body)["sha256"] == hashlib.sha256(payload).hexdigest()
    ev = request_event(hs.share, "/echo")
    assert (ev["method"], ev["status"], ev["bytes_in"]) == ("POST", 200, len(payload))

    # chunked upload: http.client sends Transfer-Encoding: chunked for an iterable body
    chunks = [bytes([i]) * 70_000 for i in range(40)]
    conn = http.client.HTTPConnection("127.0.0.1", hs.port, timeout=60)
    conn.request("POST", "/upload", body=iter(chunks), encode_chunked=True,
                 headers={"Transfer-Encoding": "chunked"})
    resp = json.loads(conn.getresponse().read())
    conn.close()
    whole = b"".join(chunks)
    assert resp == {"size": len(whole), "sha256": hashlib.sha256(whole).hexdigest(),
                    "chunked": "chunked"}
    ev = request_event(hs.share, "/upload")
    assert ev["bytes_in"] == len(whole) and ev["status"] == 200


def test_human_log_line(mesh: Mesh, service: Service) -> None:
    _, url = mesh.signal()
    share = subprocess.Popen(
        [*MESH, "share", str(service.port), "--signal", url, "--http", "--no-inspect"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=mesh.env())
    try:
        assert share.stdout is not None and share.stderr is not None
        ticket = ""
        while not ticket:
            line = share.stdout.readline()
            assert line, "share exited"
            found = re.search(r"mesh connect (\S+)", line)
            ticket = found.group(1) if found else ""
        _, port = mesh.connect(ticket)
        assert request(port, "GET", "/hello?q=1")[0] == 200
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(
            share.stderr.readline() for _ in range(40)), daemon=True)  # type: ignore[union-attr]
        reader.start()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not any("/hello?q=1" in ln for ln in lines):
            time.sleep(0.1)
        line = next(ln for ln in lines if "/hello?q=1" in ln)
        assert re.match(r"GET /hello\?q=1 200 \d+\.\d ms 0 B in 23 B out$", line.strip()), line
    finally:
        share.terminate()
        share.wait(10)


def test_sse_arrives_event_by_event(inproc: InProc, service: Service) -> None:
    hs = http_share(inproc, service)
    conn = http.client.HTTPConnection("127.0.0.1", hs.port, timeout=30)
    conn.request("GET", "/sse")
    resp = conn.getresponse()
    arrivals = []
    for _ in range(3):
        line = resp.readline()  # "data: event N" (chunked framing decoded)
        arrivals.append((time.monotonic(), line.strip()))
        resp.readline()  # blank line
    conn.close()
    assert [a[1] for a in arrivals] == [b"data: event 0", b"data: event 1", b"data: event 2"]
    # the service spaces the events 0.6 s apart: had anything buffered the stream,
    # they would have arrived together at the end
    assert arrivals[1][0] - arrivals[0][0] > 0.3 and arrivals[2][0] - arrivals[1][0] > 0.3
    ev = request_event(hs.share, "/sse")
    assert ev["status"] == 200 and ev["bytes_out"] == 3 * len(b"data: event 0\n\n")


def test_websocket_echo(inproc: InProc, service: Service) -> None:
    hs = http_share(inproc, service, guard=True)

    async def talk() -> list[Any]:
        async with aiohttp.ClientSession() as session, session.ws_connect(
                f"http://127.0.0.1:{hs.port}/ws") as ws:
            await ws.send_str("ping")
            text = await ws.receive_str(timeout=10)
            await ws.send_bytes(b"\x00\xff" * 1000)
            data = await ws.receive_bytes(timeout=10)
            return [text, data]

    assert asyncio.run(talk()) == ["echo: ping", b"\x00\xff" * 1000]
    ev = request_event(hs.share, "/ws")
    assert (ev["status"], ev["state"]) == (101, "upgraded")


def test_an_h2c_upgrade_goes_on_as_http11_under_the_header_policy(
        inproc: InProc, service: Service) -> None:
    """A 101 to h2c would turn the connection into a splice the policy no longer
    sees; the service never gets the offer (and any mix with h2c is refused too)."""
    hs = http_share(inproc, service)
    for upgrade in ("h2c", "H2C", "websocket, h2c", "h2c/1"):
        status, _, body = request(hs.port, "GET", "/echo?h2c", headers={
            "Connection": "Upgrade, HTTP2-Settings", "Upgrade": upgrade,
            "HTTP2-Settings": "AAMAAABkAARAAAAAAAIAAAAA"})
        assert status == 200, upgrade
        seen = {k.lower() for k in json.loads(body)["headers"]}
        assert not seen & {"upgrade", "http2-settings"}, (upgrade, seen)


# -- access and headers ---------------------------------------------------------------

def test_basic_auth(inproc: InProc, service: Service) -> None:
    hs = http_share(inproc, service, basic_auth=("alice", "s3cret"))
    status, headers, _ = request(hs.port, "GET", "/hello?noauth")
    assert status == 401 and headers["www-authenticate"].startswith("Basic")
    wrong = "Basic " + base64.b64encode(b"alice:nope").decode()
    assert request(hs.port, "GET", "/hello?wrong", headers={"Authorization": wrong})[0] == 401
    status, _, body = request(hs.port, "POST", "/echo?auth", b"hi",
                              headers={"Authorization": AUTH})
    assert status == 200
    assert "Authorization" not in json.loads(body)["headers"]  # never forwarded
    assert service.paths() == ["/echo?auth"]
    assert request_event(hs.share, "/hello?noauth")["status"] == 401


def test_forwarded_headers_and_hop_by_hop(inproc: InProc, service: Service) -> None:
    hs = http_share(inproc, service)
    status, _, body = request(hs.port, "POST", "/echo", b"{}", headers={
        "Connection": "keep-alive, X-Drop-Me", "X-Drop-Me": "secret", "Keep-Alive": "5",
        "Proxy-Authorization": "Basic Zm9v", "TE": "trailers", "X-Mesh-Peer": "forged",
        "X-Forwarded-For": "203.0.113.9", "Host": f"127.0.0.1:{hs.port}",
        # spellings a WSGI/CGI service folds into the same variables as mesh's own
        "X_Mesh_Peer": "aaaa", "X_Forwarded_For": "198.51.100.7", "X-Real-IP": "192.0.2.1",
        "Forwarded": "for=192.0.2.2", "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "bank.example"})
    assert status == 200
    raw = json.loads(body)["headers"]
    seen = {k.lower(): v for k, v in raw.items()}
    for hop in ("x-drop-me", "keep-alive", "proxy-authorization", "te"):
        assert hop not in seen, hop
    # only mesh's own copies, under mesh's spelling, whatever the client sent
    folded = [k.lower().replace("_", "-") for k in raw]
    for name in ("x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-mesh-peer"):
        assert folded.count(name) == 1, (name, raw)
    assert "x-real-ip" not in folded and "forwarded" not in folded
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == f"127.0.0.1:{hs.port}"
    assert seen["x-mesh-peer"] == hs.peer  # the client's forged copy is dropped
    assert seen["host"] == f"127.0.0.1:{hs.port}"


def test_host_header_rewrite(inproc: InProc, service: Service) -> None:
    hs = http_share(inproc, service, host_header="rewrite")
    _, _, body = request(hs.port, "GET", "/echo", headers={"Host": "myapp.test"})
    seen = json.loads(body)["headers"]
    assert seen["Host"] == f"127.0.0.1:{service.port}"
    assert seen["X-Forwarded-Host"] == "myapp.test"


def test_connect_http_refuses_foreign_host(inproc: InProc, service: Service) -> None:
    hs = http_share(inproc, service, guard=True)
    status, _, body = request(hs.port, "GET", "/hello?rebind",
                              headers={"Host": f"attacker.example:{hs.port}"})
    assert status == 421 and b"DNS rebinding" in body
    for host in (f"localhost:{hs.port}", f"127.0.0.1:{hs.port}"):
        assert request(hs.port, "GET", "/hello", headers={"Host": host})[0] == 200
    assert "/hello?rebind" not in service.paths()
    # keep-alive through the guard: several requests on one connection
    conn = http.client.HTTPConnection("127.0.0.1", hs.port, timeout=30)
    for i in range(5):
        conn.request("GET", f"/hello?k={i}")
        assert conn.getresponse().read() == b"hello from the service\n"
    conn.close()


# -- defences at the parser ---------------------------------------------------------

def test_a_plain_connect_to_an_http_share_guards_by_itself(
        inproc: InProc, service: Service) -> None:
    """The share's ticket says HTTP mode, so `mesh connect` without --http applies the
    Host guard anyway (a rebinding page cannot reach the share); --no-http-guard is
    the way out for the rare client that needs another Host."""
    share = inproc.share(service.port, http=HttpConfig(inspect=None))
    assert tk.decode(share.obj.ticket).http
    plain = inproc.connect(share.obj.ticket)
    port = int(plain.obj.port)
    status, _, body = request(port, "GET", "/hello?rebind",
                              headers={"Host": f"attacker.example:{port}"})
    assert status == 421 and b"DNS rebinding" in body
    assert request(port, "GET", "/hello", headers={"Host": f"127.0.0.1:{port}"})[0] == 200
    opted_out = inproc.connect(share.obj.ticket, no_http_guard=True)
    port2 = int(opted_out.obj.port)
    assert request(port2, "GET", "/hello?other", headers={"Host": "myapp.test"})[0] == 200
    assert "/hello?rebind" not in service.paths()


def test_smuggling_oversize_and_slow_heads_never_reach_the_service(
        inproc: InProc, service: Service) -> None:
    # a plain `mesh connect` (no guard): the sharer's own parser must stop these
    hs = http_share(inproc, service, header_timeout=2.0)
    slow_result: list[tuple[float, bytes]] = []

    def slow() -> None:
        t0 = time.monotonic()
        with socket.create_connection(("127.0.0.1", hs.port), timeout=30) as s:
            s.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n")
            out = bytearray()
            while chunk := s.recv(4096):
                out += chunk
        slow_result.append((time.monotonic() - t0, bytes(out)))

    slow_thread = threading.Thread(target=slow)
    slow_thread.start()
    cases = {
        b"POST /smuggle-cl-te HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n": b"400",
        b"POST /smuggle-te-cl HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Length: 4\r\n\r\n0\r\n\r\n": b"400",
        b"POST /smuggle-dup-cl HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
        b"Content-Length: 3\r\n\r\nabc": b"400",
        b"POST /smuggle-cl-conflict HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
        b"Content-Length: 30\r\n\r\nabc": b"400",
        b"GET /huge HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 17 * 1024 + b"\r\n\r\n": b"431",
        b"GET /huge-many HTTP/1.1\r\nHost: x\r\n" + b"X-A: bbbbbbbbbb\r\n" * 1200 + b"\r\n":
            b"431",
        b"POST /gzip-te HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n": b"501",
        b"GARBAGE\r\n\r\n": b"400",
    }
    for data, code in cases.items():
        try:
            answer = raw(hs.port, data)
        except TimeoutError:
            raise AssertionError(f"no answer to {data[:40]!r}") from None
        assert answer.startswith(b"HTTP/1.1 " + code), (data[:40], answer[:80])
    # a smuggled request hidden after a valid one on the same connection
    answer = raw(hs.port, b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"
                          b"POST /smuggle-2nd HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
                          b"Content-Length: 1\r\n\r\nx")
    assert answer.startswith(b"HTTP/1.1 200") and b"HTTP/1.1 400" in answer
    slow_thread.join(40)
    elapsed, answer = slow_result[0]
    assert answer.startswith(b"HTTP/1.1 408") and 1.5 < elapsed < 15, (elapsed, answer[:60])
    seen = service.paths()
    assert seen == ["/hello"], seen
    assert request(hs.port, "GET", "/hello")[0] == 200  # and the share still serves


def test_service_down_gives_502(inproc: InProc) -> None:
    share = inproc.share(free_port(), http=HttpConfig(inspect=None))
    port = inproc.connect(share.obj.ticket).obj.port
    status, _, body = request(port, "GET", "/")
    assert status == 502 and b"refused" in body
    assert "refused" in share.event("warning")["message"]


def test_http_flags_are_checked(mesh: Mesh) -> None:
    res = mesh.run("share", "8000", "--signal", "ws://127.0.0.1:9/", "--basic-auth", "x:y")
    assert res.returncode != 0 and res.stderr.strip().endswith("--basic-auth needs --http")
    res = mesh.run("share", "8000", "--signal", "ws://127.0.0.1:9/", "--http",
                   "--inspect", "0.0.0.0:4040")
    assert res.returncode != 0 and "loopback only" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    res = mesh.run("share", "8000", "--signal", "ws://127.0.0.1:9/", "--http",
                   "--basic-auth", "nocolon")
    assert res.returncode != 0 and "USER:PASS" in res.stderr


# -- the inspector API ------------------------------------------------------------------

def api(base: str, path: str, method: str = "GET", body: Any = None,
        headers: dict[str, str] | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    hdrs = {"Content-Type": "application/json"} if body is not None else {}
    hdrs.update(headers or {})
    req = urllib.request.Request(base.rstrip("/") + path, data=data, method=method,
                                 headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_inspector_records_replays_and_exports(inproc: InProc, service: Service) -> None:
    hs = http_share(inproc, service)
    request(hs.port, "POST", "/echo?first", b'{"order": 42}',
            headers={"Content-Type": "application/json"})
    request(hs.port, "GET", "/bin")
    request_event(hs.share, "/bin")
    status, listing = api(hs.inspector, "/api/requests")
    assert status == 200
    by_path = {r["path"]: r for r in listing["requests"]}
    first = by_path["/echo?first"]
    _, detail = api(hs.inspector, f"/api/requests/{first['id']}")
    assert detail["request_body"] == {"size": 13, "captured": 13, "truncated": False,
                                      "binary": False, "text": '{"order": 42}'}
    assert ["x-mesh-peer", hs.peer] in detail["request_headers"]
    assert detail["status"] == 200 and '"size": 13' in detail["response_body"]["text"]
    _, binary = api(hs.inspector, f"/api/requests/{by_path['/bin']['id']}")
    assert binary["response_body"]["binary"] is True
    assert base64.b64decode(binary["response_body"]["base64"]) == bytes(range(256)) * 4

    # replay: the service receives the same request again
    status, replayed = api(hs.inspector, f"/api/requests/{first['id']}/replay", "POST", {})
    assert status == 200 and replayed["replay_of"] == first["id"] and replayed["status"] == 200
    assert service.paths().count("/echo?first") == 2
    assert request_event(hs.share, "/echo?first")["replay_of"] == first["id"]

    # edit and replay
    status, edited = api(hs.inspector, f"/api/requests/{first['id']}/replay", "POST", {
        "method": "PUT", "path": "/echo?edited", "body": "changed",
        "headers": [["host", "x"], ["x-edit", "yes"]]})
    assert status == 200 and edited["status"] == 200
    last = service.seen()[-1]
    assert (last["method"], last["path"], last["body"]) == ("PUT", "/echo?edited", 7)
    assert ["X-Edit", "yes"] in last["headers"] or ["x-edit", "yes"] in last["headers"]
    assert api(hs.inspector, "/api/requests/1/replay", "POST", {"headers": "nope"})[0] == 400
    for bad in ({"method": "G\u00c9T"}, {"method": "G\u0112T"}, {"headers": [["X", "\u0100"]]},
                {"path": "/caf\u00e9"}):
        assert api(hs.inspector, "/api/requests/1/replay", "POST", bad)[0] == 400, bad
    assert api(hs.inspector, "/api/requests/9999/replay", "POST", {})[0] == 404

    # HAR export
    _, har = api(hs.inspector, "/api/har")
    entries = har["log"]["entries"]
    assert har["log"]["version"] == "1.2" and len(entries) == len(
        api(hs.inspector, "/api/requests")[1]["requests"])
    post = next(e for e in entries if e["request"]["url"].endswith("/echo?first"))
    assert post["request"]["postData"]["text"] == '{"order": 42}'
    assert post["response"]["status"] == 200

    # what a hostile web page could send
    assert api(hs.inspector, "/api/requests", headers={"Host": "evil.example:4040"})[0] == 421
    assert api(hs.inspector, f"/api/requests/{first['id']}/replay", "POST", {},
               headers={"Origin": "http://evil.example"})[0] == 403
    req = urllib.request.Request(hs.inspector + f"api/requests/{first['id']}/replay",
                                 data=b"x=1", method="POST")
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(req, timeout=10)
    assert exc.value.code == 415
    assert service.paths().count("/echo?first") == 2  # none of those replayed anything


def test_inspector_live_feed(inproc: InProc, service: Service) -> None:
    hs = http_share(inproc, service)
    got: list[dict[str, Any]] = []

    def listen() -> None:
        with urllib.request.urlopen(hs.inspector + "api/live", timeout=30) as resp:
            for line in resp:
                if line.startswith(b"data: "):
                    got.append(json.loads(line[6:]))
                    if len(got) == 2:
                        return

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    time.sleep(0.5)
    request(hs.port, "GET", "/hello?live")
    thread.join(20)
    assert [g["type"] for g in got] == ["begin", "end"]
    assert got[1]["request"]["path"] == "/hello?live" and got[1]["request"]["status"] == 200
