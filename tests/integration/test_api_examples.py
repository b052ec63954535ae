"""The Python API, the pytest fixtures, and every example, exercised for real."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import mesh
from mesh.errors import TicketError
from tests.conftest import EchoServer, Mesh, Proc, free_port
from tests.integration.test_tunnel import echo_roundtrip

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


@pytest.fixture(autouse=True)
def loopback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MESH_ICE_ADDRESSES", "127.0.0.1")
    monkeypatch.setenv("MESH_HOME", str(tmp_path / "api-home"))
    monkeypatch.setenv("MESH_LAN", "off")


async def test_share_and_connect_api(mesh_signal: str, echo: EchoServer) -> None:
    seen: list[str] = []
    async with mesh.share(echo.port, signal=mesh_signal, lan=False, name="api",
                          on_event=lambda e: seen.append(e.event)) as share:
        assert share.ticket.startswith("mesh1")
        async with mesh.connect(share.ticket) as tunnel:
            assert tunnel.path == "direct" and tunnel.port > 0
            ok = await asyncio.to_thread(echo_roundtrip, tunnel.port, 300_000, 1)
            assert ok
            assert tunnel.snapshot()["bytes_in"] == 300_000
    assert "ready" in seen and "connected" in seen


async def test_api_errors_are_mesh_errors(mesh_signal: str) -> None:
    with pytest.raises(TicketError):
        async with mesh.connect("mesh1garbage"):
            pass


async def test_mesh_tunnel_fixture(mesh_tunnel: Callable[..., Awaitable[Any]],
                                   echo: EchoServer) -> None:
    tunnel = await mesh_tunnel(echo.port)
    assert await asyncio.to_thread(echo_roundtrip, tunnel.port, 100_000, 2)


def test_example_pytest_file_passes(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          str(EXAMPLES / "test_device.py")], capture_output=True, text=True,
                         timeout=180, cwd=ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 passed" in res.stdout


def _get(url: str, data: bytes | None = None, headers: dict[str, str] | None = None
         ) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_iot_sensor_example(mesh: Mesh) -> None:
    _, url = mesh.signal()
    device = mesh.start("--name", "sensor-7", "--signal", url,
                        cmd=[sys.executable, str(EXAMPLES / "iot_sensor.py")])
    ticket = device.event("ready")["ticket"]
    _, local = mesh.connect(ticket)
    status, body = _get(f"http://127.0.0.1:{local}/reading")
    reading = json.loads(body)
    assert status == 200 and reading["sensor"] == "sensor-7" and reading["seq"] == 1
    status, body = _get(f"http://127.0.0.1:{local}/led", b'{"on": true}',
                        {"Content-Type": "application/json"})
    assert status == 200 and json.loads(body) == {"led": True}
    assert _get(f"http://127.0.0.1:{local}/led", b"nonsense")[0] == 400


def test_webhook_receiver_example(mesh: Mesh) -> None:
    sys.path.insert(0, str(EXAMPLES))
    from webhook_receiver import sign

    port = free_port()
    receiver = Proc(["--port", str(port), "--secret", "whsec_test"], mesh.env(),
                    cmd=[sys.executable, str(EXAMPLES / "webhook_receiver.py")])
    mesh.procs.append(receiver)
    receiver.event("listening")
    _, url = mesh.signal()
    _, ticket = mesh.share(port, url)
    _, local = mesh.connect(ticket)
    body = json.dumps({"type": "payment.succeeded", "amount": 4200}).encode()
    status, _ = _get(f"http://127.0.0.1:{local}/hooks", body,
                     {"X-Signature": sign("whsec_test", body)})
    assert status == 204
    event = receiver.event("webhook")
    assert event["payload"] == {"type": "payment.succeeded", "amount": 4200}
    status, _ = _get(f"http://127.0.0.1:{local}/hooks", body,
                     {"X-Signature": sign("wrong-secret", body)})
    assert status == 401
    assert receiver.event("rejected")["path"] == "/hooks"
