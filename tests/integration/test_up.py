"""`mesh up`: the tunnels of one mesh.toml in one process, through the real CLI; reloaded
on SIGHUP without touching the entries that did not change; bad files refused with the
file, the line and the field."""

from __future__ import annotations

import json
import signal
import socket
from pathlib import Path

import pytest

from tests.conftest import EchoServer, Mesh


def echo_ok(port: int, payload: bytes) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
    return got == payload


def connect(mesh: Mesh, ticket: str, home: str) -> int:
    proc = mesh.start("connect", ticket, "--json", home=home)
    port = int(proc.event("listening")["port"])
    proc.event("connected")
    return port


def write(path: Path, url: str, shares: dict[str, int], connects: dict[str, tuple[str, int]]
          ) -> None:
    text = [f'signal = "{url}"', ""]
    for name, port in shares.items():
        text += [f"[share.{name}]", f"target = {port}", "resume_timeout = 30", ""]
    for name, (ticket, port) in connects.items():
        text += [f"[connect.{name}]", f'ticket = "{ticket}"', f"port = {port}", ""]
    path.write_text("\n".join(text))


def test_mesh_up_runs_a_file_and_reloads_only_what_changed(mesh: Mesh, tmp_path: Path
                                                            ) -> None:
    from tests.conftest import free_port

    _, url = mesh.signal()
    services = {name: EchoServer() for name in ("one", "two", "three", "four", "x", "y")}
    try:
        elsewhere = {n: mesh.share(services[n].port, url, "--name", f"far-{n}",
                                   home="elsewhere")[1] for n in ("x", "y")}
        ports = {"x": free_port(), "y": free_port()}
        file = tmp_path / "mesh.toml"
        write(file, url, {n: services[n].port for n in ("one", "two", "three")},
              {n: (elsewhere[n], ports[n]) for n in ("x", "y")})
        assert "5 tunnels" in mesh.run("up", str(file), "--check", home="up").stdout
        up = mesh.start("up", str(file), "--json", home="up")
        ready = up.event("up", timeout=60)
        assert ready["tunnels"] == ["one", "two", "three", "x", "y"]
        tickets = {}
        for event in up.events:
            if event["event"] == "ready":
                tickets[event["tunnel"]] = event["ticket"]
        assert sorted(tickets) == ["one", "three", "two"]
        # each entry works: the shares from another machine's connect, the connects locally
        clients = {n: connect(mesh, tickets[n], f"client-{n}") for n in tickets}
        for n, port in clients.items():
            assert echo_ok(port, n.encode() * 1000)
        for n in ("x", "y"):
            assert echo_ok(ports[n], n.encode() * 1000)
        status = [json.loads(line) for line in
                  mesh.run("status", "--json", home="up").stdout.splitlines()]
        assert [t["tunnel"] for t in status[0]["tunnels"]] == ["one", "two", "three", "x", "y"]
        # connections held open across the reload, through entries that stay
        held = [socket.create_connection(("127.0.0.1", clients["one"]), timeout=20),
                socket.create_connection(("127.0.0.1", ports["x"]), timeout=20)]
        for s in held:
            s.sendall(b"before")
            assert s.recv(6) == b"before"
        write(file, url, {n: services[n].port for n in ("one", "two", "four")},
              {n: (elsewhere[n], ports[n]) for n in ("x", "y")})
        up.p.send_signal(signal.SIGHUP)
        reloaded = up.event("reloaded", timeout=60)
        assert (reloaded["added"], reloaded["removed"], reloaded["changed"]) == (
            ["four"], ["three"], [])
        assert reloaded["kept"] == ["one", "two", "x", "y"] and reloaded["failed"] == []
        for s in held:  # untouched: still the same connections
            s.sendall(b"after")
            assert s.recv(5) == b"after"
            s.close()
        four = [e for e in up.events if e["event"] == "ready" and e.get("tunnel") == "four"]
        if not four:
            four = [up.event("ready", timeout=10)]
        port4 = connect(mesh, four[0]["ticket"], "client-four")
        assert echo_ok(port4, b"four" * 1000)
        status = [json.loads(line) for line in
                  mesh.run("status", "--json", home="up").stdout.splitlines()]
        assert [t["tunnel"] for t in status[0]["tunnels"]] == ["one", "two", "x", "y", "four"]
        assert "[four]" in mesh.run("status", home="up").stdout
    finally:
        for service in services.values():
            service.close()


BAD = [
    ("signal = 3\n[share.a]\ntarget = 80\n", 1, "signal: must be a URL"),
    ("[share.a]\ntarget = 80\ncolour = 1\n", 3, "[share.a] colour: unknown field"),
    ("[share.a]\nport = 80\n", 2, "[share.a] port: unknown field"),
    ("[share.a]\nname = 'x'\n", 1, "target = PORT"),
    ("[share.a]\ntarget = 70000\n", 1, "ports are 1-65535"),
    ("[share.a]\ntarget = 80\nmax_flows = 0\n", 3, "max_flows: --max-flows must be"),
    ("[share.a]\ntarget = 80\nudp = 'yes'\n", 3, "udp: must be true or false"),
    ("[share.a]\ntarget = 80\nudp = true\nhttp = true\n", 3, "--udp cannot go with --http"),
    ("[share.Bad_Name]\ntarget = 80\n", 1, "[share.Bad_Name]"),
    ("[share.a]\ntarget = 80\n[connect.a]\nticket = 'web'\n", 3, "used twice"),
    ("[connect.b]\nticket = 'mesh1abc'\n", 2, "ticket:"),
    ("[connect.b]\nticket = 'web'\nport = -1\n", 3, "port"),
    ("[connect.b]\nport = 9000\n", 1, "ticket = \"mesh1...\""),
    ("[share.a]\ntarget = 80\nhttp = {colour = 1}\n", 3, "unknown field"),
    ("[share.a\ntarget = 80\n", 1, "Expected ']'"),
    ("shares = 1\n", 1, "unknown setting 'shares'"),
    ("[share.a]\ntarget = 80\nno_portmap = 'yes'\n", 3, "true or false"),
    ("", None, "no [share.NAME] or [connect.NAME] entry"),
]


@pytest.mark.parametrize("text, line, message", BAD)
def test_a_bad_file_is_one_line_naming_file_line_and_field(mesh: Mesh, tmp_path: Path,
                                                           text: str, line: int | None,
                                                           message: str) -> None:
    file = tmp_path / "mesh.toml"
    if text.startswith("["):  # a server to name, so that the error is the one meant
        text, line = 'signal = "ws://127.0.0.1:9/"\n' + text, line and line + 1
    file.write_text(text)
    res = mesh.run("up", str(file), "--check")
    assert res.returncode == 2, res
    (out,) = res.stderr.strip().splitlines()
    where = f"{file}:{line}:" if line else f"{file}:"
    assert where in out and message in out, out


def test_the_readme_mesh_toml_example_checks(mesh: Mesh, tmp_path: Path) -> None:
    """The README's example file, as written (its placeholder ticket replaced by a real
    one), passes `mesh up --check`."""
    from mesh.proto.identity import Identity
    from mesh.proto.ticket import Ticket

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## One file for all tunnels", 1)[1]
    example = section.split("```toml\n", 1)[1].split("```", 1)[0]
    key = Identity.generate()
    ticket = Ticket(key.node_id, b"s" * 16, 2_000_000_000, "db").encode(key)
    file = tmp_path / "mesh.toml"
    file.write_text(example.replace("mesh1...", ticket))
    res = mesh.run("up", str(file), "--check")
    assert res.returncode == 0, res.stderr
    assert "3 tunnels (share web, share dns, connect db)" in res.stdout
