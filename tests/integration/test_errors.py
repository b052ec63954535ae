"""Every failure a user can cause: one clear line, a non-zero exit, no traceback.

The command under test runs through the real CLI; the rendezvous and the share
it talks to run in this process where they are not what is tested.
"""

from __future__ import annotations

import base64
import contextlib
import json
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

from mesh.node.home import load_or_create
from mesh.proto import ticket as tk
from tests.conftest import EchoServer, Mesh, free_port
from tests.harness import InProc, Node


def assert_clean_failure(proc_or_result: object, code: int | None = None,
                         match: str | None = None) -> str:
    """One JSON error line on stdout, no traceback, the expected exit code."""
    from subprocess import CompletedProcess
    if isinstance(proc_or_result, CompletedProcess):
        stdout, stderr, rc = proc_or_result.stdout, proc_or_result.stderr, proc_or_result.returncode
    else:
        raise TypeError
    assert "Traceback" not in stderr and "Traceback" not in stdout, stderr
    assert rc != 0
    if code is not None:
        assert rc == code, (rc, stdout, stderr)
    errors = [json.loads(line) for line in stdout.splitlines()
              if line.startswith("{") and json.loads(line).get("event") == "error"]
    assert len(errors) == 1, stdout
    message = str(errors[0]["message"])
    assert "\n" not in message
    if match:
        assert match in message, message
    return message


def test_signaling_unreachable(mesh: Mesh) -> None:
    port = free_port()
    res = mesh.run("share", "8000", "--signal", f"ws://127.0.0.1:{port}/", "--json")
    assert_clean_failure(res, 4, "cannot reach signaling server")


def test_signaling_url_is_not_a_signaling_server(mesh: Mesh, echo: EchoServer) -> None:
    res = mesh.run("share", "8000", "--signal", "http://127.0.0.1:1/", "--json")
    assert_clean_failure(res, 2, "ws://")


def test_no_signaling_configured(mesh: Mesh) -> None:
    res = mesh.run("share", "8000", "--json")
    assert_clean_failure(res, 2, "MESH_SIGNAL")
    # without --json: one line on stderr
    res = mesh.run("share", "8000")
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr


@pytest.mark.parametrize("text,match", [
    ("nonsense", "not a mesh ticket"),
    ("mesh1ae" + "a" * 240, "signature"),
    ("mesh1!!" + "a" * 80, "characters a ticket never has"),
    ("mesh1" + "a" * 81, "truncated"),
])
def test_malformed_ticket(mesh: Mesh, text: str, match: str) -> None:
    assert_clean_failure(mesh.run("connect", text, "--json"), 3, match)


def _forge(home: Path, ticket: str, **changes: object) -> str:
    """Re-sign a ticket with the sharer's own key after changing fields."""
    ident = load_or_create(home)
    t = tk.decode(ticket)
    fields = {**t.__dict__, **changes}
    return tk.Ticket(**fields).encode(ident)  # type: ignore[arg-type]


def sharer(mesh: Mesh, inproc: InProc, port: int, **options: object) -> Node:
    """An in-process share under the node key kept in MESH_HOME=<tmp>/sharer."""
    return inproc.share(port, identity=load_or_create(mesh.tmp / "sharer"), **options)


def test_tampered_ticket_refused_before_any_byte(mesh: Mesh, inproc: InProc,
                                                 echo: EchoServer) -> None:
    ticket = sharer(mesh, inproc, echo.port).obj.ticket
    # flip one character in the middle: the signature no longer verifies
    i = len(ticket) // 2
    bad = ticket[:i] + ("a" if ticket[i] != "a" else "b") + ticket[i + 1:]
    assert_clean_failure(mesh.run("connect", bad, "--json"), 3, "signature")
    # a valid signature but the wrong secret: refused by admission, over the peer link
    wrong = _forge(mesh.tmp / "sharer", ticket, secret=b"\x00" * 16)
    proc = mesh.start("connect", wrong, "--json")
    port = proc.event("listening")["port"]
    with socket.create_connection(("127.0.0.1", port)) as s:  # a client waiting for the path
        s.sendall(b"hello")
        code = proc.wait(30)
        s.settimeout(5)
        assert s.recv(100) == b""
    assert code == 5
    errors = [e for e in proc.events if e["event"] == "error"]
    assert errors and "wrong ticket secret" in errors[0]["message"], proc.events
    assert echo.stats.connections == 0 and echo.stats.bytes == 0


def test_expired_ticket(mesh: Mesh, inproc: InProc, echo: EchoServer) -> None:
    ticket = sharer(mesh, inproc, echo.port).obj.ticket
    old = _forge(mesh.tmp / "sharer", ticket, expires=int(time.time()) - 10)
    assert_clean_failure(mesh.run("connect", old, "--json"), 3, "expired")


@pytest.mark.parametrize("mode", ["flip", "forge"])
def test_signaling_server_rewriting_answer_fails_connect(mesh: Mesh, inproc: InProc,
                                                         echo: EchoServer, mode: str) -> None:
    here = Path(__file__).parent / "tamper_signal.py"
    evil = mesh.start(mode, cmd=[sys.executable, str(here)])
    url = evil.event("ready")["url"]
    ticket = inproc.share(echo.port, signal_urls=(url,)).obj.ticket
    proc = mesh.start("connect", ticket, "--json")
    code = proc.wait(30)
    assert code == 5, proc.events
    errors = [e for e in proc.events if e["event"] == "error"]
    assert len(errors) == 1 and "tampered" in errors[0]["message"], proc.events
    assert not any(e["event"] == "connected" for e in proc.events)
    assert "Traceback" not in "".join(proc.stderr)
    assert echo.stats.connections == 0


def test_port_in_use(mesh: Mesh, inproc: InProc, echo: EchoServer) -> None:
    ticket = inproc.share(echo.port).obj.ticket
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert_clean_failure(mesh.run("connect", ticket, "--port", str(port), "--json"), 6,
                             "already in use")


def test_share_offline(mesh: Mesh, inproc: InProc, echo: EchoServer) -> None:
    share = inproc.share(echo.port)
    ticket = share.obj.ticket
    share.stop()
    assert_clean_failure(mesh.run("connect", ticket, "--json"), 4, "not connected")


def test_shared_service_down_closes_client_promptly(mesh: Mesh, inproc: InProc) -> None:
    share = inproc.share(free_port())
    _, local = mesh.connect(share.obj.ticket)
    with socket.create_connection(("127.0.0.1", local)) as s:
        s.settimeout(5)
        t0 = time.monotonic()
        s.sendall(b"hi")
        with contextlib.suppress(ConnectionResetError):
            assert s.recv(10) == b""
        assert time.monotonic() - t0 < 3
    warning = share.event("warning", timeout=5)
    assert "refused" in warning["message"]


def test_ctrl_c_is_one_line_and_non_zero(mesh: Mesh, echo: EchoServer) -> None:
    _, url = mesh.signal()
    share, ticket = mesh.share(echo.port, url)
    conn, _ = mesh.connect(ticket)
    conn.p.send_signal(signal.SIGINT)
    assert conn.wait(10) == 130
    assert [e["message"] for e in conn.events if e["event"] == "error"] == ["interrupted"]
    assert "Traceback" not in "".join(conn.stderr)
    share.p.send_signal(signal.SIGTERM)
    assert share.wait(10) == 0


def test_bad_share_target(mesh: Mesh) -> None:
    assert_clean_failure(mesh.run("share", "99999", "--signal", "ws://127.0.0.1:1/", "--json"),
                         2, "ports are 1-65535")
    assert_clean_failure(mesh.run("share", "web", "--signal", "ws://127.0.0.1:1/", "--json"),
                         2, "give PORT or HOST:PORT")


def test_allow_list_refuses_other_keys(mesh: Mesh, inproc: InProc, echo: EchoServer) -> None:
    friend = load_or_create(mesh.tmp / "friend").node_id
    ticket = inproc.share(echo.port, allow=frozenset({friend})).obj.ticket
    res = mesh.run("connect", ticket, "--json")  # a different, fresh key
    assert_clean_failure(res, 5, "does not admit your key")
    proc = mesh.start("connect", ticket, "--json", home="friend")
    proc.event("connected")
    assert echo.stats.connections == 0


def test_b64_garbage_is_not_mistaken(mesh: Mesh) -> None:
    junk = "mesh1" + base64.b32encode(b"\x01" * 200).decode().lower()
    assert_clean_failure(mesh.run("connect", junk, "--json"), 3)


def test_netcheck_on_loopback(mesh: Mesh) -> None:
    _, url = mesh.signal()
    res = mesh.run("netcheck", "--signal", url, "--json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["event"] == "netcheck" and report["udp"] is True
    assert report["mapping"] == "endpoint-independent"
    assert report["turn_udp"] is True and report["turn_tcp"] is True
    # the relay's policy, as the server tells it: what it refuses, what --relay-allow opened
    assert "loopback" in report["relay_policy"]["refuses"]
    assert report["relay_policy"]["allows"] == []
    _, opened = mesh.signal("--relay-allow", "127.0.0.0/8")
    human = mesh.run("netcheck", "--signal", opened)
    assert human.returncode == 0 and "--relay-allow opens: 127.0.0.0/8" in human.stdout
    port = free_port()
    assert_clean_failure(mesh.run("netcheck", "--signal", f"ws://127.0.0.1:{port}/", "--json"),
                         4, "cannot reach")


def test_stopping_a_connect_with_a_pending_local_connection_is_quiet(
        mesh: Mesh, echo: EchoServer) -> None:
    """A local connection waiting for a path when the connect is stopped: exit 0 and no
    asyncio traceback (issue 21 #10)."""
    _, url = mesh.signal()
    share, ticket = mesh.share(echo.port, url)
    conn, local = mesh.connect(ticket)
    share.stop()
    conn.event("disconnected", timeout=30)
    with socket.create_connection(("127.0.0.1", local), timeout=5) as waiting:
        waiting.sendall(b"hello")  # waits for a path that will not come back
        time.sleep(0.5)
        conn.p.send_signal(signal.SIGTERM)
        assert conn.wait(15) == 0
    assert "Traceback" not in "".join(conn.stderr), conn.stderr
