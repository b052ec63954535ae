"""Several signaling instances on a real Redis (Debian redis-server, started per test)."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from mesh.node.home import load_or_create
from tests.conftest import EchoServer, Mesh, free_port, require_tool, wait_port
from tests.integration.test_recovery import wait_state
from tests.integration.test_tunnel import echo_roundtrip


@pytest.fixture
def redis_url(tmp_path: object) -> Iterator[str]:
    server = require_tool("redis-server", "redis-server")
    port = free_port()
    proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--protected-mode", "yes"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(5)


def instance(mesh: Mesh, redis_url: str, port: int = 0) -> tuple[object, str]:
    return mesh.signal("--redis", redis_url, "--presence-ttl", "3",
                       *(["--port", str(port)] if port else []))


def test_peers_on_different_instances_connect(mesh: Mesh, echo: EchoServer,
                                               redis_url: str) -> None:
    _, url_a = instance(mesh, redis_url)
    _, url_b = instance(mesh, redis_url)
    _, ticket = mesh.share(echo.port, url_a)  # registered on A
    _, local = mesh.connect(ticket, "--signal", url_b)  # registers on B
    assert echo_roundtrip(local, 2 * 1024 * 1024, 1)


def test_instance_killed_peers_reachable_through_the_other(mesh: Mesh, echo: EchoServer,
                                                           redis_url: str) -> None:
    sig_a, url_a = instance(mesh, redis_url)
    _, url_b = instance(mesh, redis_url)
    share = mesh.start("share", str(echo.port), "--signal", url_a, "--signal", url_b,
                       "--json", home="sharer")
    ticket = share.event("ready")["ticket"]
    wait_state(share, "registered", 10)
    node = load_or_create(mesh.tmp / "sharer").node_id
    r = redis.Redis.from_url(redis_url)
    assert r.zcard(f"mesh:node:{node}") == 1
    t0 = time.monotonic()
    sig_a.p.send_signal(signal.SIGTERM)  # type: ignore[attr-defined]
    back = wait_state(share, "registered", 10)
    assert back["url"] == url_b
    took = time.monotonic() - t0
    print(f"re-registered on the other instance {took:.2f} s after SIGTERM")
    assert took < 2, "reachable through the other instance within 2 s of SIGTERM"
    sig_a.stop()  # type: ignore[attr-defined]
    _, local = mesh.connect(ticket)  # the ticket lists both URLs; A is dead
    assert echo_roundtrip(local, 500_000, 2)
    # presence: only B holds the node now, the dead instance's entry is gone
    instances = {m.decode() for m in r.zrange(f"mesh:node:{node}", 0, -1)}
    assert len(instances) == 1


def test_dead_instance_presence_expires(mesh: Mesh, redis_url: str) -> None:
    sig, url = instance(mesh, redis_url)
    res = mesh.run("netcheck", "--signal", url, "--json", home="probe")
    assert res.returncode == 0
    share = mesh.start("share", "9", "--signal", url, "--json", home="gone")
    share.event("ready")
    node = load_or_create(mesh.tmp / "gone").node_id
    r = redis.Redis.from_url(redis_url)
    assert r.exists(f"mesh:node:{node}")
    sig.p.kill()  # type: ignore[attr-defined]  # no goodbye: presence must expire by itself
    share.stop()
    deadline = time.monotonic() + 10
    while r.zcount(f"mesh:node:{node}", time.time(), "+inf") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert r.zcount(f"mesh:node:{node}", time.time(), "+inf") == 0
    deadline = time.monotonic() + 10
    while r.exists(f"mesh:node:{node}") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not r.exists(f"mesh:node:{node}")  # the key itself is gone after 2 x ttl + 1


def test_bad_redis_url_is_a_clear_error(mesh: Mesh) -> None:
    port = free_port()
    res = mesh.run("signal", "--port", "0", "--stun-port", "0", "--redis",
                   f"redis://127.0.0.1:{port}/0", "--json")
    assert res.returncode == 2 and "cannot reach Redis" in res.stdout
    assert "Traceback" not in res.stderr



def test_public_names_and_gateway_across_instances(
        mesh: Mesh, redis_url: str, http_root: tuple[Path, int]) -> None:
    root, service_port = http_root
    (root / "hello.txt").write_text("across instances\n")
    gw_id = node_id(mesh, "gw")
    _, url_a = mesh.signal("--redis", redis_url, "--gateway", gw_id)
    _, url_b = mesh.signal("--redis", redis_url, "--gateway", gw_id)
    gateway = mesh.start("gateway", "--domain", "mesh.test", "--listen", "127.0.0.1:0",
                         "--signal", url_b, "--json", home="gw")
    port = int(gateway.event("ready")["url"].rsplit(":", 1)[1])
    share = mesh.start("share", str(service_port), "--signal", url_a, "--name", "hooks",
                       "--public", "--no-inspect", "--json", home="owner")
    # the gateway announced itself on B; the share registered on A sees it
    assert share.event("public")["url"] == f"http://hooks.mesh.test:{port}/"
    # the name is held tier-wide: a node on the other instance cannot take it
    thief = mesh.run("share", str(service_port), "--signal", url_b, "--name", "hooks",
                     "--public", "--json", home="thief")
    assert thief.returncode == 7
    owner = redis.Redis.from_url(redis_url).hget("mesh:names", "hooks")
    assert owner is not None and owner.decode() == node_id(mesh, "owner")
    # the gateway (on B) reaches the share (on A)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/hello.txt", headers={"Host": "hooks.mesh.test"})
    resp = conn.getresponse()
    assert (resp.status, resp.read()) == (200, b"across instances\n")
    conn.close()


def node_id(mesh: Mesh, home: str) -> str:
    return str(json.loads(mesh.run("id", "--json", home=home).stdout)["node_id"])


def test_a_burst_of_envelopes_is_routed_not_dropped(redis_url: str) -> None:
    """400 envelopes routed at once between two brokers. With a Redis round trip per
    envelope the burst exhausted redis-py's pool, and the broker read the error as
    "nobody holds this node" (unknown-destination) for most of them."""
    import asyncio

    from mesh.proto.identity import Identity
    from signaling.redis_broker import RedisBroker

    class Box:
        def __init__(self) -> None:
            self.got = 0

        def deliver_frame(self, frame: str) -> bool:
            self.got += 1
            return True

        def replaced(self) -> None:
            pass

    async def run() -> tuple[dict[str, int], int]:
        a, b = RedisBroker(redis_url, "a"), RedisBroker(redis_url, "b")
        await a.start()
        await b.start()
        nodes = [Identity.generate().node_id for _ in range(400)]
        boxes = [Box() for _ in nodes]
        for node, box in zip(nodes, boxes, strict=True):
            await b.attach(node, box)
        results = await asyncio.gather(*(a.route(nodes[0], n, b"x" * 1000) for n in nodes))
        await asyncio.sleep(0.5)
        counts: dict[str, int] = {}
        for r in results:
            counts[r] = counts.get(r, 0) + 1
        await a.close()
        await b.close()
        return counts, sum(box.got for box in boxes)

    counts, delivered = asyncio.run(run())
    assert counts == {"ok": 400} and delivered == 400, counts


def test_pools_are_held_tier_wide(redis_url: str) -> None:
    """The pool rules of tests/unit/test_roster.py on two instances of one Redis tier:
    a roster stored through one is what the other enforces (the Lua scripts)."""
    import asyncio

    from signaling.redis_broker import RedisBroker
    from tests.unit.test_roster import pool_rules

    async def run() -> None:
        a, b = RedisBroker(redis_url, "a"), RedisBroker(redis_url, "b")
        await a.start()
        await b.start()
        try:
            await pool_rules(a, b)
        finally:
            await a.close()
            await b.close()

    asyncio.run(run())
    assert redis.Redis.from_url(redis_url).hget("mesh:rosters:seq", "web") == b"1"
