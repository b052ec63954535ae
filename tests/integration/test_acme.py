"""Automatic HTTPS at the gateway against a real ACME server: pebble (Debian), started
here with its own CA and a DNS stub (dnsmasq answering 127.0.0.1 for *.mesh.test).

The gateway runs in this process (tests/harness.py); the share is a real --public
share. A client that trusts pebble's root completes a TLS request to hooks.mesh.test;
renewal runs with the renewal point moved to the start of the lifetime; with pebble
down, a new name gets a clear warning and the gateway keeps serving HTTP."""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mesh.http.config import HttpConfig
from mesh.node.certs import self_signed
from mesh.proto.identity import Identity
from tests.conftest import free_port, require_tool, wait_port
from tests.harness import InProc


def api_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for pebble's own API on 127.0.0.1 (the gateway trusts it by file)."""
    cert, key = self_signed(["localhost"], ("127.0.0.1",), days=1)
    cert_path, key_path = directory / "pebble.pem", directory / "pebble.key"
    cert_path.write_bytes(cert)
    key_path.write_bytes(key)
    return cert_path, key_path


class Pebble:
    def __init__(self, tmp: Path, http_port: int) -> None:
        binary = require_tool("pebble", "pebble")
        dnsmasq = require_tool("dnsmasq", "dnsmasq-base")
        self.dns_port, self.port, self.admin = free_port(), free_port(), free_port()
        self.dns = subprocess.Popen(
            [dnsmasq, "--keep-in-foreground", "--conf-file=/dev/null", f"--port={self.dns_port}",
             "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv", "--no-hosts",
             "--address=/mesh.test/127.0.0.1", "--user=root", "--pid-file="],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.cert, key = api_certificate(tmp)
        config = tmp / "pebble.json"
        config.write_text(json.dumps({"pebble": {
            "listenAddress": f"127.0.0.1:{self.port}",
            "managementListenAddress": f"127.0.0.1:{self.admin}",
            "certificate": str(self.cert), "privateKey": str(key), "httpPort": http_port,
            "tlsPort": free_port(), "ocspResponderURL": "",
            "externalAccountBindingRequired": False}}))
        self.proc = subprocess.Popen([binary, "-config", str(config), "-dnsserver",
                                      f"127.0.0.1:{self.dns_port}"],
                                     env={**os.environ, "PEBBLE_VA_NOSLEEP": "1"},
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert wait_port(self.port) and wait_port(self.admin)

    @property
    def directory(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    def root(self, tmp: Path) -> Path:
        """Pebble's issuing root, which clients of the gateway are to trust."""
        context = ssl.create_default_context(cafile=str(self.cert))
        with urllib.request.urlopen(f"https://127.0.0.1:{self.admin}/roots/0",
                                    context=context, timeout=10) as resp:
            path = tmp / "pebble-root.pem"
            path.write_bytes(resp.read())
        return path

    def stop(self) -> None:
        for proc in (self.proc, self.dns):
            if proc.poll() is None:
                proc.terminate()
                proc.wait(5)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MESH_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def acme_lab(tmp_path: Path, home: Path) -> Iterator[tuple[InProc, Any, Pebble]]:
    http_port = free_port()
    pebble = Pebble(tmp_path, http_port)
    key = Identity.generate()
    lab = InProc(gateways=frozenset({key.node_id}))
    try:
        gateway = lab.gateway(key, domain="mesh.test", acme_email="ops@mesh.test",
                              acme_directory=pebble.directory, acme_ca_bundle=str(pebble.cert),
                              http_host="127.0.0.1", http_port=http_port,
                              acme_renew_fraction=1e-9)
        gateway.event("ready")
        yield lab, gateway, pebble
    finally:
        lab.close()
        pebble.stop()


def tls_get(port: int, name: str, root: Path) -> tuple[int, bytes, dict[str, Any]]:
    context = ssl.create_default_context(cafile=str(root))
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
    conn.sock = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                                    server_hostname=name)
    conn.request("GET", "/hello.txt", headers={"Host": name})
    resp = conn.getresponse()
    cert = conn.sock.getpeercert()
    body = resp.read()
    conn.close()
    return resp.status, body, cert


def until_trusted(port: int, name: str, root: Path, timeout: float = 60
                  ) -> tuple[int, bytes, dict[str, Any]]:
    """The first handshake for a new name starts its order; retry until it verifies."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return tls_get(port, name, root)
        except ssl.SSLCertVerificationError:
            assert time.monotonic() < deadline, "no certificate from pebble in time"
            time.sleep(0.5)


def test_a_public_share_gets_a_pebble_certificate_renewed_and_cached(
        acme_lab: tuple[InProc, Any, Pebble], tmp_path: Path, home: Path,
        http_root: tuple[Path, int]) -> None:
    lab, gateway, pebble = acme_lab
    root_dir, service = http_root
    (root_dir / "hello.txt").write_text("hello over https\n")
    share = lab.share(service, name="hooks", public=True, http=HttpConfig(inspect=None))
    public = share.event("public")
    assert public["url"].startswith("https://hooks.mesh.test")
    root = pebble.root(tmp_path)
    port = gateway.obj.port
    status, body, cert = until_trusted(port, "hooks.mesh.test", root)
    assert (status, body) == (200, b"hello over https\n")
    assert ("DNS", "hooks.mesh.test") in cert["subjectAltName"]
    issuer = dict(x[0] for x in cert["issuer"])
    assert "Pebble" in issuer.get("commonName", ""), issuer
    first = gateway.event("certificate", timeout=5)
    assert first["name"] == "hooks.mesh.test"
    # cached on disk, the key private
    assert (home / "certs" / "hooks.mesh.test.pem").is_file()
    assert (home / "certs" / "hooks.mesh.test.key").stat().st_mode & 0o077 == 0
    # renewal: the renewal point is at the start of the lifetime here, so it runs now
    renewed = gateway.event("certificate", timeout=60)
    assert renewed["name"] == "hooks.mesh.test"
    assert tls_get(port, "hooks.mesh.test", root)[2]["serialNumber"] != cert["serialNumber"]
    # a made-up name: the handshake gets the fallback, and nothing is ordered for it
    failures = gateway.obj.certs.failures
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_get(port, "nobody.mesh.test", root)
    time.sleep(2)
    assert "nobody.mesh.test" not in gateway.obj.certs.held
    assert gateway.obj.certs.backoff.failures.get("nobody.mesh.test") == 1
    assert gateway.obj.certs.failures == failures  # refused before any order


def test_with_pebble_down_a_new_name_is_a_clear_warning_and_http_keeps_working(
        acme_lab: tuple[InProc, Any, Pebble], tmp_path: Path,
        http_root: tuple[Path, int]) -> None:
    lab, gateway, pebble = acme_lab
    root_dir, service = http_root
    (root_dir / "hello.txt").write_text("plain still works\n")
    pebble.stop()
    share = lab.share(service, name="other", public=True, http=HttpConfig(inspect=None))
    share.event("public")
    with pytest.raises(ssl.SSLCertVerificationError):  # the fallback; the order starts
        tls_get(gateway.obj.port, "other.mesh.test", pebble.cert)
    while True:
        warning = gateway.event("warning", timeout=30)
        if "other.mesh.test" in warning["message"]:
            break
    assert "cannot get a certificate for other.mesh.test" in warning["message"]
    assert "retrying in 30 s" in warning["message"]
    conn = http.client.HTTPConnection("127.0.0.1", gateway.obj.http_port, timeout=10)
    conn.request("GET", "/hello.txt", headers={"Host": "other.mesh.test"})
    resp = conn.getresponse()
    assert (resp.status, resp.read()) == (200, b"plain still works\n")
    assert gateway.obj.certs.metrics()["mesh_acme_failures_total"] >= 1


def test_acme_flags_are_checked(tmp_path: Path) -> None:
    from tests.conftest import MESH

    cases = [(["--acme-email", "not-an-email"], "is not an email address"),
             (["--acme-email", "a@b.example", "--tls-cert", "x", "--tls-key", "y"],
              "cannot go with --tls-cert"),
             (["--acme-ca-bundle", "x.pem"], "--acme-ca-bundle needs --acme-email"),
             (["--acme-email", "a@b.example", "--acme-directory", "http://x/dir"],
              "must be an https:// URL")]
    for extra, message in cases:
        res = subprocess.run([*MESH, "gateway", "--domain", "d.example", "--signal",
                              "ws://127.0.0.1:9/", *extra], capture_output=True, text=True,
                             timeout=30, env={**os.environ, "MESH_HOME": str(tmp_path)})
        assert res.returncode == 2, res
        (line,) = res.stderr.strip().splitlines()
        assert message in line, line
