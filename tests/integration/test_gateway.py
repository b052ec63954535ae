"""`mesh gateway`: plain HTTP clients reach `--public` shares.

The rendezvous, the gateway and the shares run in this process
(tests/harness.py); what only the command line shows (exit codes of a taken
name, flag errors, a certificate that does not load) runs through the real
CLI against the same rendezvous, with the same node keys on disk. Clients send
an explicit Host (NAME.mesh.test) to the gateway on 127.0.0.1, or use the
/s/NAME/ form; nothing resolves names through DNS.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import http.client
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from mesh.http.config import HttpConfig
from mesh.node.home import load_or_create
from mesh.proto.identity import Identity
from tests.conftest import MESH, Mesh, listening_tcp_ports
from tests.harness import InProc, Node
from tests.integration.test_http import Service, request_event, service  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
DOMAIN = "mesh.test"


@dataclass
class Env:
    lab: InProc
    mesh: Mesh
    gateway: Node
    host: str
    port: int

    @property
    def signal_url(self) -> str:
        return self.lab.url

    def key(self, home: str) -> Identity:
        """The node key kept in MESH_HOME=<tmp>/<home>: the CLI's, when it runs there."""
        return load_or_create(self.mesh.tmp / home)

    def share(self, port: int, name: str, *, home: str = "sharer", **options: Any) -> Node:
        node = self.lab.share(port, name=name, public=True, http=HttpConfig(inspect=None),
                              identity=self.key(home), **options)
        node.event("public")
        return node

    def call(self, name: str, method: str, path: str, body: Any = None,
             headers: dict[str, str] | None = None,
             timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body,
                         headers={"Host": f"{name}.{DOMAIN}", **(headers or {})})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()


@contextlib.contextmanager
def start_env(mesh: Mesh, **gateway: Any) -> Iterator[Env]:
    key = load_or_create(mesh.tmp / "gw")
    lab = InProc(gateways=frozenset({key.node_id}))
    try:
        node = lab.gateway(key, domain=DOMAIN, **gateway)
        ready = node.event("ready")
        assert ready["node_id"] == key.node_id
        host, port = ready["url"].split("://")[1].rsplit(":", 1)
        yield Env(lab, mesh, node, host, int(port))
    finally:
        lab.close()


@pytest.fixture
def env(mesh: Mesh) -> Iterator[Env]:
    with start_env(mesh) as running:
        yield running


def test_the_gateway_opens_no_listener_per_share(env: Env, service: Service) -> None:  # noqa: F811
    """Requests reach shares through the tunnel's streams directly: a local port per
    share would let any process on the gateway host skip the gateway's checks."""
    before = listening_tcp_ports(os.getpid())  # the rendezvous and the gateway, in here
    assert env.port in before
    for name in ("one", "two", "three"):
        env.share(service.port, name, home=name)
        assert env.call(name, "GET", "/hello")[0] == 200
    assert listening_tcp_ports(os.getpid()) == before


def test_public_share_over_plain_http(env: Env, service: Service) -> None:  # noqa: F811
    share = env.share(service.port, "hooks")
    public = share.events[-1]
    assert public["url"] == f"http://hooks.{DOMAIN}:{env.port}/"
    assert public["path_url"].endswith("/s/hooks/")

    status, _, body = env.call("hooks", "GET", "/hello")
    assert (status, body) == (200, b"hello from the service\n")
    ev = request_event(share, "/hello")
    assert ev["status"] == 200  # in the sharer's own log

    big = os.urandom(5 * 1024 * 1024)
    status, _, body = env.call("hooks", "POST", "/echo", big,
                               headers={"X-Forwarded-For": "203.0.113.66"})
    seen = json.loads(body)
    assert status == 200 and seen["sha256"] == hashlib.sha256(big).hexdigest()
    # the caller's address, set by the gateway (a caller's own copy is not trusted),
    # then the gateway's as the sharer saw it
    assert seen["headers"]["X-Forwarded-For"] == "127.0.0.1, 127.0.0.1"
    assert seen["headers"]["X-Forwarded-Host"] == f"hooks.{DOMAIN}"

    # chunked upload, path form
    chunks = [bytes([i]) * 50_000 for i in range(20)]
    conn = http.client.HTTPConnection(env.host, env.port, timeout=30)
    conn.request("POST", "/s/hooks/upload", body=iter(chunks), encode_chunked=True,
                 headers={"Transfer-Encoding": "chunked"})
    got = json.loads(conn.getresponse().read())
    conn.close()
    whole = b"".join(chunks)
    assert got == {"size": len(whole), "sha256": hashlib.sha256(whole).hexdigest(),
                   "chunked": "chunked"}

    # SSE event by event
    conn = http.client.HTTPConnection(env.host, env.port, timeout=30)
    conn.request("GET", "/sse", headers={"Host": f"hooks.{DOMAIN}"})
    resp = conn.getresponse()
    times = []
    for _ in range(3):
        assert resp.readline().startswith(b"data: event")
        times.append(time.monotonic())
        resp.readline()
    conn.close()
    assert times[1] - times[0] > 0.3 and times[2] - times[1] > 0.3

    # WebSocket echo
    async def ws() -> str:
        async with aiohttp.ClientSession() as session, session.ws_connect(
                f"http://{env.host}:{env.port}/s/hooks/ws") as sock:
            await sock.send_str("through the gateway")
            return await sock.receive_str(timeout=10)

    assert asyncio.run(ws()) == "echo: through the gateway"


def test_200_concurrent_requests_from_20_clients(env: Env, service: Service) -> None:  # noqa: F811
    env.share(service.port, "busy")

    def client(c: int) -> list[bool]:
        conn = http.client.HTTPConnection(env.host, env.port, timeout=60)
        results = []
        for r in range(10):
            payload = f"client {c} request {r} ".encode() * 50
            conn.request("POST", f"/echo?c={c}&r={r}", body=payload,
                         headers={"Host": f"busy.{DOMAIN}"})
            resp = conn.getresponse()
            data = json.loads(resp.read())
            results.append(resp.status == 200
                           and data["sha256"] == hashlib.sha256(payload).hexdigest())
        conn.close()
        return results

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        outcome = [ok for batch in pool.map(client, range(20)) for ok in batch]
    assert len(outcome) == 200 and all(outcome), f"{outcome.count(False)} failed"
    assert len([p for p in service.paths() if p.startswith("/echo?c=")]) == 200


def test_unknown_and_non_public_shares_are_404(env: Env, service: Service) -> None:  # noqa: F811
    env.lab.share(service.port, name="private", http=HttpConfig(inspect=None),
                  identity=env.key("private"))
    for name in ("private", "nobody"):
        status, _, body = env.call(name, "GET", "/hello")
        assert status == 404 and b"no share is published" in body
    status, _, _ = env.call("bad_name", "GET", "/hello")
    assert status == 404
    assert service.paths() == []


def test_share_that_stops_gives_502_then_comes_back(env: Env, service: Service) -> None:  # noqa: F811
    share = env.share(service.port, "flaky")
    assert env.call("flaky", "GET", "/hello")[0] == 200
    share.stop()
    deadline = time.monotonic() + 30
    while (status := env.call("flaky", "GET", "/hello?down")[0]) != 502:
        assert time.monotonic() < deadline, status
        time.sleep(0.5)
    env.share(service.port, "flaky")  # same node key, same name
    t0 = time.monotonic()
    deadline = t0 + 45
    while (status := env.call("flaky", "GET", "/hello?up")[0]) != 200:
        assert time.monotonic() < deadline, status
        time.sleep(0.5)
    print(f"share back through the gateway {time.monotonic() - t0:.1f} s after restart")


def test_names_are_first_come_and_released_explicitly(env: Env, service: Service) -> None:  # noqa: F811
    owner = env.share(service.port, "taken")
    thief = env.mesh.run("share", str(service.port), "--signal", env.signal_url, "--name",
                         "taken", "--public", "--no-inspect", "--json", home="thief",
                         timeout=60)
    assert thief.returncode == 7
    lines = [json.loads(line) for line in thief.stdout.splitlines()]
    assert lines[-1]["event"] == "error" and "belongs to another node key" in lines[-1]["message"]
    assert "Traceback" not in thief.stderr
    # still taken while its owner is offline
    owner.stop()
    again = env.mesh.run("share", str(service.port), "--signal", env.signal_url, "--name",
                         "taken", "--public", "--json", home="thief", timeout=60)
    assert again.returncode == 7
    assert env.mesh.run("release", "taken", "--signal", env.signal_url,
                        home="thief").returncode == 7  # not the holder: ownership
    released = env.mesh.run("release", "taken", "--signal", env.signal_url, "--json",
                            home="sharer")
    assert released.returncode == 0 and json.loads(released.stdout)["event"] == "released"
    env.share(service.port, "taken", home="thief")


def test_limits_answer_with_their_codes(mesh: Mesh, service: Service) -> None:  # noqa: F811
    with start_env(mesh, max_body=100_000, rate_per_client=2, burst_per_client=6,
                   burst_per_share=6, share_timeout=1) as env:
        limited(env, service)


def limited(env: Env, service: Service) -> None:  # noqa: F811
    env.share(service.port, "limited", public_auth=("hook", "s3cret"))
    auth = {"Authorization": "Basic aG9vazpzM2NyZXQ="}  # hook:s3cret

    assert env.call("limited", "GET", "/hello?noauth")[0] == 401
    assert env.call("limited", "GET", "/hello?ok", headers=auth)[0] == 200
    status, _, _ = env.call("limited", "POST", "/echo?big", b"x" * 200_000, headers=auth)
    assert status == 413
    with socket.create_connection((env.host, env.port), timeout=20) as s:
        s.sendall(b"GET /hello?huge HTTP/1.1\r\nHost: limited." + DOMAIN.encode()
                  + b"\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 431")
    status, _, body = env.call("limited", "GET", "/sleep?s=3", headers=auth)
    assert status == 504 and b"did not answer" in body
    codes = [env.call("limited", "GET", f"/hello?burst={i}", headers=auth)[0]
             for i in range(12)]
    assert 503 in codes, codes
    seen = service.paths()
    for refused in ("/hello?noauth", "/echo?big", "/hello?huge"):
        assert refused not in seen
    assert len([p for p in seen if p.startswith("/hello?burst=")]) == codes.count(200)


def test_signed_webhook_example_through_the_gateway(env: Env, tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        from webhook_receiver import sign
    finally:
        sys.path.pop(0)
    receiver = subprocess.Popen([sys.executable, str(ROOT / "examples" / "webhook_receiver.py"),
                                 "--port", "0", "--secret", "whsec_test"],
                                stdout=subprocess.PIPE, text=True)
    try:
        assert receiver.stdout is not None
        port = json.loads(receiver.stdout.readline())["port"]
        env.share(port, "payments")
        body = json.dumps({"type": "payment.succeeded", "amount": 4200}).encode()
        status, _, _ = env.call("payments", "POST", "/webhooks/pay", body,
                                headers={"X-Signature": sign("whsec_test", body),
                                         "Content-Type": "application/json"})
        assert status == 204
        assert json.loads(receiver.stdout.readline()) == {
            "event": "webhook", "path": "/webhooks/pay",
            "payload": {"type": "payment.succeeded", "amount": 4200}}
        forged = sign("wrong-secret", body)
        assert env.call("payments", "POST", "/webhooks/pay", body,
                        headers={"X-Signature": forged})[0] == 401
        assert json.loads(receiver.stdout.readline())["event"] == "rejected"
    finally:
        receiver.terminate()
        receiver.wait(5)


def test_gateway_flags_are_checked(mesh: Mesh) -> None:
    for args, text in (
        (["gateway", "--domain", "bad domain", "--signal", "ws://127.0.0.1:9/"], "domain"),
        (["gateway", "--domain", "x.test"], "--signal"),
        (["gateway", "--domain", "x.test", "--signal", "ws://127.0.0.1:9/",
          "--listen", "nope"], "--listen"),
        (["share", "80", "--public-auth", "u:p", "--signal", "ws://127.0.0.1:9/"],
         "--public-auth needs --public"),
        (["share", "80", "--public", "--name", "Bad_Name", "--signal", "ws://127.0.0.1:9/"],
         "DNS label"),
        (["share", "80", "--name", "bad name!", "--signal", "ws://127.0.0.1:9/"], "DNS label"),
        (["release", "Bad_Name", "--signal", "ws://127.0.0.1:9/"], "DNS label"),
    ):
        res = subprocess.run(MESH + args, capture_output=True, text=True, timeout=30,
                             env=mesh.env())
        assert res.returncode == 2 and text in res.stderr, (args, res.stderr)
        assert "Traceback" not in res.stderr


def self_signed(tmp: Path) -> tuple[Path, Path]:
    """A throwaway certificate for mesh.test and *.mesh.test."""
    from mesh.node.certs import self_signed as make

    cert, key = make([DOMAIN, f"*.{DOMAIN}"], days=1)
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert)
    key_path.write_bytes(key)
    return cert_path, key_path


def test_tls_gateway(mesh: Mesh, service: Service, tmp_path: Path) -> None:  # noqa: F811
    import ssl

    cert, key = self_signed(tmp_path)
    with start_env(mesh, tls_cert=str(cert), tls_key=str(key)) as env:
        base = next(e["url"] for e in env.gateway.events if e["event"] == "ready")
        assert base.startswith("https://")
        share = env.share(service.port, "secure")
        assert share.events[-1]["url"] == f"https://secure.{DOMAIN}:{env.port}/"
        context = ssl.create_default_context(cafile=str(cert))
        with socket.create_connection(("127.0.0.1", env.port), timeout=30) as raw, \
                context.wrap_socket(raw, server_hostname=f"secure.{DOMAIN}") as tls:
            tls.sendall(f"GET /echo HTTP/1.1\r\nHost: secure.{DOMAIN}\r\n"
                        "Connection: close\r\n\r\n".encode())
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert json.loads(body)["headers"]["X-Forwarded-Proto"] == "https"
        url = env.signal_url
        # a certificate that does not load is one clear line
        bad = mesh.run("gateway", "--domain", DOMAIN, "--listen", "127.0.0.1:0", "--tls-cert",
                       str(tmp_path / "missing.pem"), "--tls-key", str(key), "--signal", url,
                       home="gw2")
        assert bad.returncode == 2 and "TLS certificate" in bad.stderr


def _stalled_post(env: Env, name: str, source: str) -> socket.socket:
    """A POST that announces a body and never sends it, from ``source``."""
    s = socket.create_connection((env.host, env.port), timeout=20, source_address=(source, 0))
    s.sendall(f"POST /echo?stalled HTTP/1.1\r\nHost: {name}.{DOMAIN}\r\n"
              "Content-Length: 1000\r\n\r\n".encode())
    return s


def _get_from(env: Env, name: str, source: str) -> bytes:
    with socket.create_connection((env.host, env.port), timeout=20,
                                  source_address=(source, 0)) as s:
        s.sendall(f"GET /hello?from={source} HTTP/1.1\r\nHost: {name}.{DOMAIN}\r\n"
                  "Connection: close\r\n\r\n".encode())
        return s.recv(200)


def test_one_client_cannot_hold_a_shares_streams_or_the_gateways_sockets(
        mesh: Mesh, service: Service) -> None:  # noqa: F811
    """Bodiless POSTs from one address are capped per client and abandoned when their
    body stays silent; idle connections from one address are capped too. Another
    client (another loopback address) is served throughout."""
    with start_env(mesh, max_requests_per_client=4, body_timeout=1.5,
                   max_conns_per_client=20) as env:
        env.share(service.port, "victim")
        stalled = [_stalled_post(env, "victim", "127.0.0.1") for _ in range(10)]
        time.sleep(0.5)
        answers = []
        for s in stalled[4:]:  # beyond the cap: refused at once
            s.settimeout(5)
            answers.append(s.recv(100))
        assert all(a.startswith(b"HTTP/1.1 503") for a in answers), answers
        assert _get_from(env, "victim", "127.0.0.2").startswith(b"HTTP/1.1 200")
        time.sleep(2.5)  # the silent bodies are abandoned: the first client is served again
        for s in stalled[:4]:
            s.settimeout(5)
            assert s.recv(100).startswith(b"HTTP/1.1 408")
        assert _get_from(env, "victim", "127.0.0.1").startswith(b"HTTP/1.1 200")
        for s in stalled:
            s.close()
        idle = [socket.create_connection((env.host, env.port), timeout=20)
                for _ in range(25)]
        time.sleep(0.5)
        refused = 0
        for s in idle[20:]:
            s.settimeout(5)
            refused += s.recv(100).startswith(b"HTTP/1.1 503")
        assert refused == 5
        assert _get_from(env, "victim", "127.0.0.2").startswith(b"HTTP/1.1 200")
        for s in idle:
            s.close()
