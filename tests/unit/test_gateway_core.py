"""Pure pieces of the public gateway: name frames, routing, URLs, name claims."""

from __future__ import annotations

import asyncio

import pytest

from mesh.node.public import public_urls
from mesh.node.routing import route_name
from mesh.proto import frames as p
from mesh.proto.identity import Identity
from mesh.proto.names import valid_domain
from signaling.broker import MemoryBroker

A = Identity.from_seed(b"\x01" * 32).node_id
B = Identity.from_seed(b"\x02" * 32).node_id


def test_name_frames_round_trip() -> None:
    op = p.NameOp("claim", "hooks", 7)
    assert p.parse_client_frame(p.encode(op)) == op
    ann = p.Announce("mesh.example", "https://mesh.example")
    assert p.parse_client_frame(p.encode(ann)) == ann
    res = p.NameResult("lookup", "hooks", A, {"node": B, "domain": "d.test", "url": "u"}, 3)
    assert p.parse_server_frame(p.encode(res)) == res
    assert p.parse_server_frame(p.encode(p.NameResult("lookup", "x", None, None, 1))).owner is None


@pytest.mark.parametrize("frame", [
    '{"type": "name", "op": "steal", "name": "hooks"}',
    '{"type": "name", "op": "claim", "name": "Hooks"}',
    '{"type": "name", "op": "claim", "name": "-x"}',
    '{"type": "name", "op": "claim", "name": "' + "a" * 64 + '"}',
    '{"type": "name", "op": "claim", "name": 5}',
    '{"type": "gateway", "domain": 1, "url": "u"}',
    '{"type": "gateway", "domain": "d", "url": "' + "u" * 300 + '"}',
])
def test_bad_name_frames(frame: str) -> None:
    with pytest.raises(p.FrameError):
        p.parse_client_frame(frame)


def test_valid_names_and_domains() -> None:
    assert p.valid_name("hooks") and p.valid_name("a") and p.valid_name("my-app-2")
    for bad in ("", "-a", "a-", "A", "a.b", "a_b", "a" * 64):
        assert not p.valid_name(bad), bad
    assert valid_domain("mesh.test") and valid_domain("localhost")
    assert not valid_domain("bad domain") and not valid_domain("a..b")


def test_route_name() -> None:
    assert route_name(b"hooks.mesh.test", b"/x?y=1", "mesh.test") == ("hooks", b"/x?y=1")
    assert route_name(b"HOOKS.Mesh.Test:8080", b"/", "mesh.test") == ("hooks", b"/")
    assert route_name(b"mesh.test", b"/s/hooks/a/b?c", "mesh.test") == ("hooks", b"/a/b?c")
    assert route_name(b"mesh.test", b"/s/hooks", "mesh.test") == ("hooks", b"/")
    assert route_name(b"mesh.test", b"/s/hooks?q=1", "mesh.test") == ("hooks", b"/?q=1")
    assert route_name(b"a.b.mesh.test", b"/", "mesh.test") is None  # one label only
    assert route_name(b"evilmesh.test", b"/", "mesh.test") is None
    assert route_name(b"mesh.test", b"/", "mesh.test") is None
    assert route_name(None, b"/s/Bad_Name/", "mesh.test") is None
    assert route_name(b"[::1]:80", b"/", "mesh.test") is None


def test_public_urls() -> None:
    gw = {"node": B, "domain": "mesh.test", "url": "https://mesh.test"}
    assert public_urls(gw, "hooks") == ("https://hooks.mesh.test/", "https://mesh.test/s/hooks/")
    gw = {"node": B, "domain": "mesh.test", "url": "http://mesh.test:8080/"}
    assert public_urls(gw, "h") == ("http://h.mesh.test:8080/", "http://mesh.test:8080/s/h/")


def test_memory_broker_names() -> None:
    async def run() -> None:
        broker = MemoryBroker()
        assert await broker.claim_name("hooks", A) == A
        assert await broker.claim_name("hooks", B) == A  # first key wins
        assert await broker.claim_name("hooks", A) == A  # idempotent for its holder
        assert not await broker.release_name("hooks", B)
        assert await broker.name_owner("hooks") == A
        assert await broker.release_name("hooks", A)
        assert await broker.name_owner("hooks") is None
        assert await broker.claim_name("hooks", B) == B
        assert await broker.gateway() is None
        await broker.set_gateway({"node": A, "domain": "d", "url": "u"})
        assert (await broker.gateway() or {})["node"] == A

    asyncio.run(run())
