"""Pools through the real CLI: one public name served by several `mesh share` processes.

`mesh signal` (the gateway's key pinned), `mesh gateway` with the flags under
test, and per member a poolservice.py and `mesh share --public --name web`,
each in its own MESH_HOME; the owner admits the others with `mesh name add`.
Clients are plain http.client connections to the gateway with Host
web.mesh.test. Which member served what is read from the services' own logs.
"""

from __future__ import annotations

import collections
import concurrent.futures
import http.client
import json
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Mesh, Proc

SERVICE = Path(__file__).with_name("poolservice.py")
DOMAIN = "mesh.test"
OPEN = ("--rate-per-client", "100000", "--rate-per-share", "100000", "--burst", "100000",
        "--max-requests-per-client", "1000", "--max-streams-per-share", "1000")


@dataclass
class Member:
    home: str
    node: str
    log: Path
    service: subprocess.Popen[str]
    port: int
    share: Proc | None = None


@dataclass
class Pool:
    mesh: Mesh
    url: str
    gw_host: str
    gw_port: int
    gateway: Proc
    members: dict[str, Member] = field(default_factory=dict)
    metrics_url: str = ""

    def metrics(self) -> dict[str, float]:
        """The gateway's /metrics, parsed: {series: value}."""
        with urllib.request.urlopen(self.metrics_url, timeout=10) as resp:
            text = resp.read().decode()
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                for line in text.splitlines() if line and not line.startswith("#")}

    def node_id(self, home: str) -> str:
        out = self.mesh.run("id", "--json", home=home)
        return str(json.loads(out.stdout)["node_id"])

    def member(self, home: str, name: str = "web", *, admit: bool = True,
               extra: tuple[str, ...] = ()) -> Member:
        """Start HOME's service and `mesh share --public`; the owner (the first) admits
        each later one first."""
        log = self.mesh.tmp / f"{home}.log"
        svc = subprocess.Popen([sys.executable, str(SERVICE), home, str(log)],
                               stdout=subprocess.PIPE, text=True)
        assert svc.stdout is not None
        port = int(svc.stdout.readline())
        node = self.node_id(home)
        m = Member(home, node, log, svc, port)
        if self.members and admit:
            owner = next(iter(self.members.values()))
            added = self.name("add", name, node, home=owner.home)
            assert added.returncode == 0, added.stderr
        self.members[home] = m
        self.start_share(m, name, extra)
        return m

    def start_share(self, m: Member, name: str = "web", extra: tuple[str, ...] = ()) -> None:
        m.share = self.mesh.start("share", str(m.port), "--public", "--name", name,
                                  "--signal", self.url, "--no-inspect", "--json", *extra,
                                  home=m.home)
        m.share.event("public", timeout=30)

    def name(self, *args: str, home: str) -> subprocess.CompletedProcess[str]:
        return self.mesh.run("name", *args, "--signal", self.url, "--json", home=home)

    def call(self, method: str, path: str, headers: dict[str, str] | None = None,
             body: bytes | None = None, conn: http.client.HTTPConnection | None = None,
             host: str = f"web.{DOMAIN}") -> tuple[int, dict[str, str], bytes]:
        own = conn is None
        c = conn or http.client.HTTPConnection(self.gw_host, self.gw_port, timeout=60)
        try:
            c.request(method, path, body=body, headers={"Host": host, **(headers or {})})
            resp = c.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            if own:
                c.close()

    def gateway_requests(self) -> list[dict[str, Any]]:
        """The gateway's `request` events so far."""
        while True:
            try:
                line = self.gateway.lines.get(timeout=0.5)
            except queue.Empty:
                break
            if line is None:
                break
            self.gateway.events.append(json.loads(line))
        return [e for e in self.gateway.events if e.get("event") == "request"]

    def served(self) -> list[dict[str, Any]]:
        rows = []
        for m in self.members.values():
            if m.log.exists():
                rows += [json.loads(line) for line in m.log.read_text().splitlines()]
        return rows

    def close(self) -> None:
        for m in self.members.values():
            m.service.kill()
            m.service.wait()


@pytest.fixture
def pool_lab(mesh: Mesh) -> Iterator[Any]:
    made: list[Pool] = []

    def start(*gateway_flags: str) -> Pool:
        gw_id = json.loads(mesh.run("id", "--json", home="gw").stdout)["node_id"]
        sig = mesh.start("signal", "--port", "0", "--stun-port", "0", "--gateway", gw_id,
                         "--json", home="signal")
        url = str(sig.event("ready")["url"])
        gw = mesh.start("gateway", "--domain", DOMAIN, "--listen", "127.0.0.1:0", "--signal",
                        url, "--json", "--metrics", "127.0.0.1:0", *OPEN, *gateway_flags,
                        home="gw")
        ready = gw.event("ready", timeout=30)
        host, port = ready["url"].split("://")[1].rsplit(":", 1)
        pool = Pool(mesh, url, host, int(port), gw, metrics_url=ready["metrics_url"])
        made.append(pool)
        return pool

    start.tmp = mesh.tmp  # type: ignore[attr-defined]
    yield start
    for pool in made:
        pool.close()


def spread(rows: list[dict[str, Any]], path: str) -> collections.Counter[str]:
    return collections.Counter(r["member"] for r in rows if r["path"].startswith(path))


def test_membership_is_the_owners_and_only_members_publish(pool_lab: Any) -> None:
    pool: Pool = pool_lab()
    a = pool.member("alice")
    b_node = pool.node_id("bob")
    # nobody but the owner may change the pool, and a key outside it cannot publish
    res = pool.name("add", "web", b_node, home="bob")
    assert res.returncode == 7, res
    (line,) = res.stdout.strip().splitlines()
    assert json.loads(line)["event"] == "error"
    assert "does not hold the public name 'web'" in json.loads(line)["message"]
    res = pool.mesh.run("name", "add", "web", b_node, "--signal", pool.url, home="bob")
    (line,) = res.stderr.strip().splitlines()
    assert res.returncode == 7 and "only its holder may change its members" in line
    stranger = pool.mesh.run("share", "1", "--public", "--name", "web", "--signal", pool.url,
                             "--no-inspect", "--json", home="mallory", timeout=60)
    assert stranger.returncode == 7 and "belongs to another node key" in stranger.stdout
    res = pool.name("add", "web", "not-a-node-id", home="alice")
    assert res.returncode == 2 and "is not a node id" in res.stdout
    res = pool.name("show", "nothing-here", home="alice")
    assert res.returncode != 0 and "no key holds the public name" in res.stdout

    b = pool.member("bob")
    shown = json.loads(pool.name("show", "web", home="carol").stdout)
    assert shown["event"] == "members" and shown["owner"] == a.node
    assert shown["members"] == [b.node] and sorted(shown["online"]) == sorted([a.node, b.node])
    whom = {pool.call("GET", "/who")[2] for _ in range(20)}
    assert whom == {b"alice", b"bob"}

    # a member cannot change the pool either (not even take itself out)
    assert pool.name("remove", "web", b.node, home="bob").returncode == 7
    assert pool.name("add", "web", pool.node_id("carol"), home="bob").returncode == 7
    removed = json.loads(pool.name("remove", "web", b.node, home="alice").stdout)
    assert removed["members"] == []
    # bob's share can no longer claim the name: a restart is refused
    assert b.share is not None
    b.share.stop()
    again = pool.mesh.run("share", str(b.port), "--public", "--name", "web", "--signal",
                          pool.url, "--no-inspect", "--json", home="bob", timeout=60)
    assert again.returncode == 7
    human = pool.mesh.run("name", "show", "web", "--signal", pool.url, home="alice").stdout
    assert "owner" in human and a.node in human and "no other members" in human


def test_three_members_share_600_gets_from_20_clients(pool_lab: Any) -> None:
    pool: Pool = pool_lab()
    for home in ("m1", "m2", "m3"):
        pool.member(home)

    def client(c: int) -> list[int]:
        conn = http.client.HTTPConnection(pool.gw_host, pool.gw_port, timeout=60)
        try:
            return [pool.call("GET", f"/who?c={c}&r={r}", conn=conn)[0] for r in range(30)]
        finally:
            conn.close()

    with concurrent.futures.ThreadPoolExecutor(20) as ex:
        statuses = [s for batch in ex.map(client, range(20)) for s in batch]
    assert statuses.count(200) == 600
    counts = spread(pool.served(), "/who?")
    assert sum(counts.values()) == 600
    for member in ("m1", "m2", "m3"):
        assert 0.23 <= counts[member] / 600 <= 0.43, counts
    print(f"spread over 3 members: {dict(counts)}")
    # the gateway's /metrics agree: three members online, each one's share of the 600
    seen = pool.metrics()
    assert seen['mesh_gateway_pool_online{name="web"}'] == 3
    assert seen['mesh_gateway_pool_members{name="web"}'] == 3
    for home, m in pool.members.items():
        key = f'mesh_gateway_member_requests_total{{name="web",member="{m.node}",outcome="ok"}}'
        assert seen[key] == counts[home]
        assert seen[f'mesh_gateway_member_up{{name="web",member="{m.node}"}}'] == 1


def test_a_killed_member_fails_no_get_and_runs_no_post_twice(pool_lab: Any) -> None:
    pool: Pool = pool_lab()
    for home in ("f1", "f2", "f3"):
        pool.member(home)
    stop = threading.Event()
    failures: list[str] = []
    posts: collections.Counter[str] = collections.Counter()

    def client(c: int) -> int:
        conn = http.client.HTTPConnection(pool.gw_host, pool.gw_port, timeout=60)
        done = 0
        try:
            while not stop.is_set() and done < 400:
                if done % 5 == 4:
                    order = f"{c}-{done}"
                    status, _, _ = pool.call("POST", "/order", {"X-Order": order}, b"x" * 100,
                                             conn=conn)
                    posts[order] = status
                else:
                    status, _, body = pool.call("GET", f"/slow?ms=20&c={c}", conn=conn)
                    if status != 200:
                        failures.append(f"GET {status} {body[:80]!r}")
                done += 1
                if status >= 500:  # the gateway closed this connection with the error
                    conn.close()
                    conn = http.client.HTTPConnection(pool.gw_host, pool.gw_port, timeout=60)
        finally:
            conn.close()
        return done

    with concurrent.futures.ThreadPoolExecutor(10) as ex:
        running = [ex.submit(client, c) for c in range(10)]
        time.sleep(3)
        victim = pool.members["f2"]
        assert victim.share is not None
        victim.share.p.send_signal(signal.SIGKILL)
        victim.share.p.wait()
        time.sleep(15)  # past the gateway noticing (8 s of silence) and retrying
        stop.set()
        total = sum(f.result() for f in running)
    assert total > 100 and failures == [], failures[:5]
    # each POST ran at most once across the members, failed or not
    ran = collections.Counter(r["order"] for r in pool.served() if r["method"] == "POST")
    assert ran and max(ran.values()) == 1
    assert all(posts[o] in (201, 502, 504) for o in posts)
    assert all(ran[o] == 1 for o, status in posts.items() if status == 201)
    # the GETs caught on the killed member went to another one: the gateway says so
    logged = pool.gateway_requests()
    retried = [e for e in logged if e["retries"]]
    assert retried and all(e["status"] == 200 and e["path"].startswith("/slow")
                           for e in retried), retried[:3]
    assert {e["member"] for e in logged if e["member"]} == {
        m.node for m in pool.members.values()}
    print(f"failover: {total} requests, {len(retried)} retried on another member, POSTs "
          f"{dict(collections.Counter(posts.values()))}")

    # the member comes back after a restart, and gets requests again
    before = spread(pool.served(), "/slow").get("f2", 0)
    pool.start_share(victim)
    deadline = time.monotonic() + 60
    while spread(pool.served(), "/slow").get("f2", 0) == before:
        assert time.monotonic() < deadline, "the restarted member got no request"
        assert pool.call("GET", "/slow?ms=1")[0] == 200
        time.sleep(0.2)


def test_sticky_cookie_and_header_hash(pool_lab: Any) -> None:
    pool: Pool = pool_lab("--balance", "cookie")
    for home in ("s1", "s2", "s3"):
        pool.member(home)
    status, headers, first = pool.call("GET", "/who")
    cookie = headers["set-cookie"].split(";")[0]
    assert status == 200 and cookie.startswith("mesh-member=") and "HttpOnly" in headers[
        "set-cookie"]
    assert {pool.call("GET", "/who", {"Cookie": cookie})[2] for _ in range(30)} == {first}
    # without the cookie the requests spread
    assert len({pool.call("GET", "/who")[2] for _ in range(30)}) > 1
    pool.gateway.stop()

    hashed: Pool = pool_lab_restart(pool, "--balance", "hash:X-User")
    for user in ("ann", "ben", "cy", "dee"):
        got = {hashed.call("GET", "/who", {"X-User": user})[2] for _ in range(10)}
        assert len(got) == 1, (user, got)
    users = {hashed.call("GET", "/who", {"X-User": f"user{i}"})[2] for i in range(40)}
    assert len(users) == 3  # different values land on different members


def pool_lab_restart(pool: Pool, *flags: str) -> Pool:
    """Another gateway (same key, same signaling) in front of the same pool."""
    gw = pool.mesh.start("gateway", "--domain", DOMAIN, "--listen", "127.0.0.1:0", "--signal",
                         pool.url, "--json", *OPEN, *flags, home="gw")
    ready = gw.event("ready", timeout=30)
    host, port = ready["url"].split("://")[1].rsplit(":", 1)
    return Pool(pool.mesh, pool.url, host, int(port), gw, pool.members)


def test_health_probes_eject_a_sick_member_and_take_it_back(pool_lab: Any) -> None:
    pool: Pool = pool_lab("--health-path", "/healthz", "--health-interval", "0.5")
    for home in ("h1", "h2"):
        pool.member(home)
    assert {pool.call("GET", "/who")[2] for _ in range(20)} == {b"h1", b"h2"}
    sick = pool.members["h2"]
    Path(str(sick.log) + ".sick").write_text("")
    time.sleep(2)
    assert {pool.call("GET", "/who")[2] for _ in range(20)} == {b"h1"}
    Path(str(sick.log) + ".sick").unlink()
    deadline = time.monotonic() + 40
    while b"h2" not in {pool.call("GET", "/who")[2] for _ in range(10)}:
        assert time.monotonic() < deadline, "the healed member never came back"
        time.sleep(0.5)


def test_routes_send_paths_and_hosts_to_names_with_prefix_strip(pool_lab: Any) -> None:
    text = """
[[route]]
host = "shop.example.com"
path = "/api/"
name = "api"
strip = true

[[route]]
host = "shop.example.com"
name = "web"
"""
    file = Path(pool_lab_tmp(pool_lab)) / "routes.toml"
    file.write_text(text)
    pool = pool_lab("--routes", str(file))
    pool.member("webby", "web")
    pool.member("apiary", "api", admit=False)
    status, _, body = pool.call("GET", "/api/orders?id=7", host="shop.example.com")
    assert (status, body) == (200, b"apiary /orders?id=7")
    assert pool.call("GET", "/api", host="shop.example.com")[2] == b"apiary /"
    assert pool.call("GET", "/apix", host="shop.example.com")[2] == b"webby /apix"
    assert pool.call("GET", "/who", host="shop.example.com")[2] == b"webby"
    # no rule for this host: the usual NAME.DOMAIN routing
    assert pool.call("GET", "/api/x", host=f"api.{DOMAIN}")[2] == b"apiary /api/x"
    bad = Path(pool_lab_tmp(pool_lab)) / "bad.toml"
    bad.write_text('[[route]]\nname = "web"\n\n[[route]]\npath = "api/"\nname = "api"\n')
    res = pool.mesh.run("gateway", "--domain", DOMAIN, "--listen", "127.0.0.1:0", "--signal",
                        pool.url, "--routes", str(bad), home="gw2")
    assert res.returncode == 2
    (line,) = res.stderr.strip().splitlines()
    assert f"{bad}:5: path 'api/' must be a prefix starting with /" in line


def pool_lab_tmp(pool_lab: Any) -> Path:
    return Path(pool_lab.tmp)


def test_compression_headers_and_cors_at_the_gateway(pool_lab: Any) -> None:
    pool: Pool = pool_lab("--compress", "--security-headers", "--header", "X-Served-By: mesh",
                          "--cors", "https://app.example")
    pool.member("zip")
    got = subprocess.run(["curl", "-sS", "--compressed", "-D", "-", "-H",
                          f"Host: web.{DOMAIN}", f"http://{pool.gw_host}:{pool.gw_port}/page"],
                         capture_output=True, timeout=30)
    head, _, body = got.stdout.partition(b"\r\n\r\n")
    assert got.returncode == 0 and b"content-encoding: gzip" in head.lower()
    plain = pool.call("GET", "/page")[2]  # no Accept-Encoding: as the service sent it
    assert body == plain and b"row 599" in body
    raw = pool.call("GET", "/page", {"Accept-Encoding": "gzip"})
    assert raw[1]["content-encoding"] == "gzip" and len(raw[2]) < len(plain) / 5
    assert raw[1]["x-content-type-options"] == "nosniff" and raw[1]["x-served-by"] == "mesh"
    assert "strict-transport-security" not in raw[1]  # plain HTTP: no HSTS
    binary = pool.call("GET", "/plain.bin", {"Accept-Encoding": "gzip"})
    assert "content-encoding" not in binary[1] and len(binary[2]) == 4096
    # CORS: the preflight never reaches the service
    before = len(pool.served())
    status, headers, _ = pool.call("OPTIONS", "/api", {
        "Origin": "https://app.example", "Access-Control-Request-Method": "PUT"})
    assert status == 204 and headers["access-control-allow-origin"] == "https://app.example"
    assert pool.call("OPTIONS", "/api", {"Origin": "https://evil.example",
                                         "Access-Control-Request-Method": "PUT"})[0] == 403
    assert len(pool.served()) == before
    status, headers, _ = pool.call("GET", "/who", {"Origin": "https://app.example"})
    assert headers["access-control-allow-origin"] == "https://app.example"


def test_the_cache_serves_hits_keeps_variants_apart_and_stays_bounded(pool_lab: Any) -> None:
    pool: Pool = pool_lab("--cache-size", "2", "--cache-header")
    pool.member("cache")
    conn = http.client.HTTPConnection(pool.gw_host, pool.gw_port, timeout=30)
    answers = [pool.call("GET", "/cached", conn=conn) for _ in range(100)]
    conn.close()
    assert {a[2] for a in answers} == {b"hit 1"}
    assert answers[0][1]["x-cache"] == "MISS" and answers[1][1]["x-cache"] == "HIT"
    assert int(answers[-1][1]["age"]) >= 0
    assert len([r for r in pool.served() if r["path"] == "/cached"]) == 1
    # Vary: Accept-Encoding keeps the gzip and identity variants apart
    zipped = pool.call("GET", "/vary", {"Accept-Encoding": "gzip"})
    ident = pool.call("GET", "/vary")
    assert zipped[1]["content-encoding"] == "gzip" and "content-encoding" not in ident[1]
    assert pool.call("GET", "/vary", {"Accept-Encoding": "gzip"})[1]["x-cache"] == "HIT"
    assert pool.call("GET", "/vary")[2] == ident[2]
    assert len([r for r in pool.served() if r["path"] == "/vary"]) == 2
    # Authorization and Set-Cookie answers are never stored
    for path, headers in (("/auth", {"Authorization": "Bearer one"}), ("/cookie", {})):
        for _ in range(3):
            assert pool.call("GET", path, headers)[1]["x-cache"] == "MISS"
        assert len([r for r in pool.served() if r["path"] == path]) == 3
    # revalidation: no-cache + ETag asks the service, which answers 304
    first = pool.call("GET", "/etag")
    second = pool.call("GET", "/etag")
    assert (first[2], second[2]) == (b"validated body", b"validated body")
    assert second[1]["x-cache"] == "REVALIDATED"
    # 200 distinct 64 KiB answers (12.5 MiB) through a 2 MiB cache: the gateway's memory
    # stays bounded and the newest answers are hits
    rss = []
    for i in range(200):
        pool.call("GET", f"/big?kb=64&i={i}")
        if i % 50 == 49:
            rss.append(pool.gateway.peak_rss_kb())
    assert pool.call("GET", "/big?kb=64&i=199")[1]["x-cache"] == "HIT"
    assert pool.call("GET", "/big?kb=64&i=0")[1]["x-cache"] == "MISS"
    assert rss[-1] - rss[0] < 8 * 1024, rss  # under 8 MiB of growth after warm-up
    # a HEAD is answered from a stored GET and never stored itself
    assert pool.call("HEAD", "/big?kb=1&i=0")[1]["x-cache"] == "MISS"
    assert pool.call("HEAD", "/big?kb=1&i=head")[1]["x-cache"] == "MISS"
    got = pool.call("GET", "/big?kb=1&i=head")
    assert got[1]["x-cache"] == "MISS" and len(got[2]) == 1024
    head = pool.call("HEAD", "/big?kb=1&i=head")
    assert head[1]["x-cache"] == "HIT" and head[1]["content-length"] == "1024"
    # an unsafe request to a target drops what is stored for it
    pool.call("POST", "/cached", {"X-Order": "x"}, b"")
    assert pool.call("GET", "/cached")[1]["x-cache"] == "MISS"
    seen = pool.metrics()
    assert seen['mesh_gateway_cache_requests_total{result="hit"}'] >= 100
    assert seen['mesh_gateway_cache_requests_total{result="revalidated"}'] == 1
    assert 0 < seen["mesh_gateway_cache_bytes"] <= 2 * 1024 * 1024
    assert seen["mesh_gateway_cache_evictions_total"] > 100
    logged = [e for e in pool.gateway_requests() if e["path"] == "/cached"]
    assert [e["cache"] for e in logged[:3]] == ["miss", "hit", "hit"]
    assert all(e["member"] for e in logged if e["cache"] != "hit")


def test_mesh_connect_by_name_gets_an_online_member(pool_lab: Any) -> None:
    pool: Pool = pool_lab()
    laptop = pool.node_id("laptop")
    for home in ("c1", "c2"):
        pool.member(home, extra=("--allow", laptop))

    def connect(home: str) -> tuple[Proc, int]:
        proc = pool.mesh.start("connect", "web", "--signal", pool.url, "--json", home=home)
        return proc, int(proc.event("listening", timeout=60)["port"])

    # --allow names who may connect directly; the gateway still serves the name
    assert {pool.call("GET", "/who")[2] for _ in range(10)} == {b"c1", b"c2"}
    first, port = connect("laptop")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/who")
    who = conn.getresponse().read().decode()
    conn.close()
    assert who in ("c1", "c2")
    first.stop()
    # that member goes away: the next connect gets the other one
    gone = pool.members[who]
    assert gone.share is not None
    gone.share.stop()
    second, port = connect("laptop")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/who")
    assert conn.getresponse().read().decode() == ({"c1", "c2"} - {who}).pop()
    conn.close()
    second.stop()
    # a key no member admits gets one line and exit 5, naming what to do
    res = pool.mesh.run("connect", "web", "--signal", pool.url, home="stranger", timeout=60)
    assert res.returncode == 5, res
    (line,) = res.stderr.strip().splitlines()
    assert "gave this key a ticket" in line and "--allow" in line
    res = pool.mesh.run("connect", "nobody-holds-this", "--signal", pool.url, home="laptop",
                        timeout=60)
    assert res.returncode != 0 and "\n" not in res.stderr.strip()


def test_a_member_that_hangs_delays_no_request(pool_lab: Any) -> None:
    """A member stopped (SIGSTOP) stays registered, so the tier lists it online, but it
    answers nothing: the gateway keeps trying it in the background while every request
    goes to the member that works."""
    pool: Pool = pool_lab()
    for home in ("w1", "w2"):
        pool.member(home)
    assert {pool.call("GET", "/who")[2] for _ in range(20)} == {b"w1", b"w2"}
    frozen = pool.members["w2"].share
    assert frozen is not None
    frozen.p.send_signal(signal.SIGSTOP)
    try:
        # past the tunnel's liveness check (8 s); requests caught on w2 meanwhile retry
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert pool.call("GET", "/who")[0] == 200
            time.sleep(0.2)
        slowest, whom = 0.0, set()
        for _ in range(60):  # 12 s: several of the gateway's retries of w2 (every 2 s)
            t0 = time.monotonic()
            status, _, body = pool.call("GET", "/who")
            slowest = max(slowest, time.monotonic() - t0)
            whom.add(body)
            assert status == 200
            time.sleep(0.2)
        # a request waiting on w2's retry would take its 5 s answer timeout
        assert whom == {b"w1"} and slowest < 3.0, slowest
    finally:
        frozen.p.send_signal(signal.SIGCONT)
