"""Configuration is checked once, in the config classes: the API and the CLI refuse the same
things with the same one-line messages, before any I/O."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
from click.testing import CliRunner

import mesh
from mesh.cli import main
from mesh.errors import ConfigError
from mesh.proto import names
from mesh.proto.identity import Identity
from mesh.proto.ticket import Ticket

URL = "ws://127.0.0.1:9/"  # never dialled: every case fails before any I/O
KEY = Identity.from_seed(b"\x05" * 32)
TICKET = Ticket(KEY.node_id, b"s" * 16, int(time.time()) + 30 * 86400, "x", (URL,)).encode(KEY)
"""Valid for 30 days: made at import, it must outlive a suite run of any length."""


@pytest.fixture(autouse=True)
def quiet_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setenv("MESH_LAN", "off")
    monkeypatch.setenv("MESH_HOME", str(tmp_path))
    monkeypatch.delenv("MESH_SIGNAL", raising=False)


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, [*args, "--json"])
    lines = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    errors = [e["message"] for e in lines if e.get("event") == "error"]
    assert len(errors) == 1, result.output
    return result.exit_code, errors[0]


def api(call: Callable[[], Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        call()  # raises at once: nothing awaited, nothing dialled
    return str(caught.value)


@pytest.mark.parametrize("case", [
    ("name", ["share", "8000", "--name", "not a dns label!", "--signal", URL],
     lambda: mesh.share(8000, name="not a dns label!", signal=URL)),
    ("public name", ["share", "8000", "--public", "--name", "Bad_Name", "--signal", URL],
     lambda: mesh.share(8000, public=True, name="Bad_Name", signal=URL)),
    ("port", ["share", "99999", "--signal", URL], lambda: mesh.share(99999, signal=URL)),
    ("port 0", ["share", "0", "--signal", URL], lambda: mesh.share(0, signal=URL)),
    ("node id", ["share", "8000", "--allow", "nope", "--signal", URL],
     lambda: mesh.share(8000, allow=["nope"], signal=URL)),
    ("signal URL", ["share", "8000", "--signal", "http://x/"],
     lambda: mesh.share(8000, signal="http://x/")),
    ("ttl", ["share", "8000", "--signal", URL, "--ttl", "99999999999"],
     lambda: mesh.share(8000, signal=URL, ttl=99999999999)),
    ("connect port", ["connect", TICKET, "--port", "70000"],
     lambda: mesh.connect(TICKET, port=70000)),
    ("bind", ["connect", TICKET, "--bind", "not a host"],
     lambda: mesh.connect(TICKET, host="not a host")),
], ids=lambda c: c[0])
def test_cli_and_api_refuse_the_same_way(case: tuple[str, list[str], Callable[[], Any]]) -> None:
    _, args, call = case
    code, message = cli(*args)
    assert code == 2
    assert api(call) == message
    assert "\n" not in message


def test_public_share_through_the_api_gets_the_cli_default_name() -> None:
    running = mesh.share(8000, public=True, signal=URL)
    assert running.config is not None
    name = running.config.name
    assert names.valid_name(name)
    assert name == names.default_share_name(socket.gethostname(), 8000)


@pytest.mark.parametrize(("hostname", "expected"), [
    ("MacBook-Pro.local", "macbook-pro-8000"), ("box_1", "box-1-8000"),
    ("---", "share-8000"), ("a" * 80, "a" * 58 + "-8000"), ("ÜBER.lan", "ber-8000")])
def test_default_names_are_valid_labels(hostname: str, expected: str) -> None:
    name = names.default_share_name(hostname, 8000)
    assert name == expected and names.valid_name(name)


@pytest.mark.parametrize("text", ["", "x:", ":80", "[::1", "a:b:c", "80:x", "-1"])
def test_one_host_port_parser(text: str) -> None:
    if text == ":80":
        assert names.parse_hostport(text, "t", default_host="h") == ("h", 80)
        return
    with pytest.raises(ConfigError, match="give PORT or HOST:PORT"):
        names.parse_hostport(text, "t", default_host="h")


def test_config_dataclasses_check_every_field() -> None:
    from mesh.http.config import HttpConfig
    from signaling.rendezvous import RendezvousConfig
    from signaling.server import ServerConfig

    for build, text in [
        (lambda: HttpConfig(host_header="a b"), "--host-header"),
        (lambda: HttpConfig(inspect="10.0.0.1:4040"), "loopback only"),
        (lambda: ServerConfig(gateways=frozenset({"x"})), "--gateway"),
        (lambda: ServerConfig(port=-1), "--port"),
        (lambda: RendezvousConfig(ServerConfig(), relay_allow=("nope",)), "--relay-allow"),
        (lambda: RendezvousConfig(ServerConfig(), turn_urls=("turn:x",)), "--turn-secret"),
        (lambda: RendezvousConfig(ServerConfig(), public_ip="x"), "--public-ip"),
    ]:
        with pytest.raises(ConfigError, match=text):
            build()


def test_relay_only_never_signals_through_the_shares_lan_endpoint() -> None:
    """A share's LAN endpoint has no TURN relay (issue 21 #2): --relay-only uses the
    ticket's servers or --signal, never the LAN hints."""
    from mesh.node.config import ConnectConfig
    from mesh.node.connect import signaling_urls

    ticket = Ticket(KEY.node_id, b"s" * 16, int(time.time()) + 600, "x", (URL,),
                    ("10.0.0.5:4000",))
    assert signaling_urls(ticket, ConnectConfig(ticket=ticket)) == (
        ["ws://10.0.0.5:4000/"], ["ws://10.0.0.5:4000/", URL])
    assert signaling_urls(ticket, ConnectConfig(ticket=ticket, relay_only=True)) == (
        [], [URL])
    other = "ws://127.0.0.1:9/"
    assert signaling_urls(ticket, ConnectConfig(ticket=ticket, signal_urls=(other,))) == (
        [], [other])


def test_no_portmap_in_mesh_toml_turns_port_mapping_off_for_that_tunnel_only() -> None:
    from mesh.node.config import ShareConfig, ice_from_env
    from mesh.node.configfile import ConnectEntry, parse

    plan = parse('signal = "ws://127.0.0.1:9/"\n[share.a]\ntarget = 80\nno_portmap = true\n'
                 '[share.b]\ntarget = 81\n[connect.c]\nticket = "web"\nno_portmap = true\n',
                 "mesh.toml")
    a, b, c = plan.entries["a"], plan.entries["b"], plan.entries["c"]
    assert isinstance(a, ShareConfig) and isinstance(b, ShareConfig)
    assert isinstance(c, ConnectEntry)
    assert a.ice.portmap is False and c.config.ice.portmap is False
    assert b.ice == ice_from_env()  # the environment's default (off under the tests)
