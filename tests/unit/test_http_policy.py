"""httppolicy.py and capture.py: the pure parts of HTTP mode."""

from __future__ import annotations

import base64

import pytest

from mesh.errors import ConfigError
from mesh.http.capture import Store, as_text, har
from mesh.http.inspector import validate_edits
from mesh.http.policy import (
    ShareHttpPolicy,
    basic_auth_ok,
    head_problem,
    host_guard,
    host_is_local,
    is_upgrade,
    strip_hop_by_hop,
)
from mesh.proto.names import check_basic_auth, parse_loopback


def test_head_problem_smuggling_and_size() -> None:
    ok = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
    assert head_problem(ok) is None
    assert head_problem(b"POST / HTTP/1.1\r\nHost: a\r\n") is None  # incomplete: wait
    both = b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert head_problem(both).status == 400  # type: ignore[union-attr]
    dup = b"POST / HTTP/1.1\r\ncontent-length: 3\r\nContent-Length : 3\r\n\r\n"
    assert head_problem(dup).status == 400  # type: ignore[union-attr]
    assert head_problem(b"\r\n\r\nGET / HTTP/1.1\nA: b\n\n") is None
    big = b"GET / HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n"
    assert head_problem(big).status == 431  # type: ignore[union-attr]
    assert head_problem(big[:18000]).status == 431  # type: ignore[union-attr]
    # a body after the head is not part of it
    assert head_problem(b"POST / HTTP/1.1\r\nContent-Length: 40\r\n\r\n"
                        b"Content-Length: 5\r\nTransfer-Encoding: x\r\n\r\n") is None


def test_hop_by_hop_and_upgrade() -> None:
    headers = [(b"host", b"a"), (b"connection", b"keep-alive, X-Secret"), (b"x-secret", b"1"),
               (b"keep-alive", b"5"), (b"te", b"trailers"), (b"trailer", b"x"),
               (b"proxy-authorization", b"p"), (b"content-length", b"3"), (b"x-keep", b"y")]
    assert strip_hop_by_hop(headers) == [(b"host", b"a"), (b"x-keep", b"y")]
    ws = [(b"host", b"a"), (b"connection", b"Upgrade"), (b"upgrade", b"websocket")]
    assert is_upgrade(ws) and not is_upgrade(headers)
    assert strip_hop_by_hop(ws, keep_upgrade=True) == [
        (b"host", b"a"), (b"connection", b"upgrade"), (b"upgrade", b"websocket")]


def test_share_policy_headers() -> None:
    policy = ShareHttpPolicy("127.0.0.1", 8000, ("u", "p"), "rewrite")
    auth = b"Basic " + base64.b64encode(b"u:p")
    headers = [(b"host", b"app.test"), (b"authorization", auth), (b"x-mesh-peer", b"forged"),
               (b"x-forwarded-for", b"198.51.100.1"), (b"transfer-encoding", b"chunked")]
    assert policy.check(headers) is None
    out = policy.upstream_headers(headers, peer="NODE", client="10.0.0.2", upgrade=False)
    assert (b"host", b"127.0.0.1:8000") in out
    # a peer's own X-Forwarded-For is not evidence of anything: only its address is sent
    assert [v for k, v in out if k == b"x-forwarded-for"] == [b"10.0.0.2"]
    assert (b"x-forwarded-host", b"app.test") in out and (b"x-forwarded-proto", b"http") in out
    assert [v for k, v in out if k == b"x-mesh-peer"] == [b"NODE"]
    assert not any(k == b"authorization" for k, _ in out)
    assert out[-1] == (b"transfer-encoding", b"chunked")
    refusal = policy.check([(b"authorization", b"Basic " + base64.b64encode(b"u:x"))])
    assert refusal is not None and refusal.status == 401


def test_the_gateway_names_the_caller_and_the_share_appends_the_gateway() -> None:
    policy = ShareHttpPolicy("127.0.0.1", 8000)
    headers = [(b"host", b"hooks.example.com"), (b"x-forwarded-for", b"203.0.113.9"),
               (b"x-forwarded-proto", b"https"), (b"x-forwarded-host", b"hooks.example.com")]
    out = policy.upstream_headers(headers, peer="GW", client="198.18.0.1", upgrade=False,
                                  trusted=True)
    assert [v for k, v in out if k == b"x-forwarded-for"] == [b"203.0.113.9, 198.18.0.1"]
    assert [v for k, v in out if k == b"x-forwarded-proto"] == [b"https"]


def test_basic_auth_parsing() -> None:
    assert check_basic_auth("a:b:c", "--basic-auth") == ("a", "b:c")
    for bad in ("nocolon", ":p", "u:"):
        with pytest.raises(ConfigError):
            check_basic_auth(bad, "--basic-auth")
    assert not basic_auth_ok(b"Basic !!!", ("u", "p"))
    assert not basic_auth_ok(b"Bearer x", ("u", "p"))
    assert basic_auth_ok(b"basic " + base64.b64encode(b"u:p"), ("u", "p"))


def test_host_guard() -> None:
    assert host_guard([(b"host", b"localhost:8080")], 8080) is None
    assert host_guard([(b"host", b"[::1]:8080")], 8080) is None
    assert host_guard([(b"host", b"192.168.1.9:8080")], 8080) is None
    for bad in (b"evil.test:8080", b"localhost:8081", b"localhost", b"127.0.0.1:8080.evil",
                b"\xff:8080"):
        refusal = host_guard([(b"host", bad)], 8080)
        assert refusal is not None and refusal.status == 421, bad
    assert host_guard([], 8080) is not None
    assert host_is_local(b"localhost", 80) and host_is_local(b"127.0.0.1:80", 80)


def test_capture_store_bounds_and_har() -> None:
    store = Store(limit=3, body_cap=10)
    seen: list[tuple[str, int]] = []
    store.subscribe(lambda kind, ex: seen.append((kind, ex.id)))
    exes = []
    for i in range(5):
        ex = store.begin(b"POST", f"/p?i={i}".encode(), b"1.1", [(b"host", b"h")],
                         peer="p", client="c", now=1000.0 + i, mono=float(i))
        ex.request_body.feed(b"0123456789abcdef")
        store.respond(ex, 200, b"OK", [(b"content-type", b"application/octet-stream")])
        ex.response_body.feed(b"\x00\x01\x02")
        store.finish(ex, mono=i + 0.25)
        exes.append(ex)
    assert [e.id for e in store.all()] == [3, 4, 5]
    assert seen[:2] == [("begin", 1), ("end", 1)]
    body = exes[-1].request_body.to_json()
    assert body == {"size": 16, "captured": 10, "truncated": True, "binary": False,
                    "text": "0123456789"}
    assert exes[-1].response_body.to_json()["binary"] is True
    assert exes[-1].duration_ms == 250.0
    doc = har(store.all(), "1")
    entry = doc["log"]["entries"][0]
    assert entry["request"]["url"] == "http://h/p?i=2"
    assert entry["request"]["queryString"] == [{"name": "i", "value": "2"}]
    assert entry["response"]["content"]["encoding"] == "base64"
    assert "truncated" in entry["comment"]


def test_as_text_cut_inside_a_character() -> None:
    assert as_text("héllo".encode()[:2]) == "h"
    assert as_text(b"\xff\xfe") is None and as_text(b"a\x00") is None


def test_inspector_addr_and_edits() -> None:
    assert parse_loopback("127.0.0.1:4040", "--inspect") == ("127.0.0.1", 4040)
    assert parse_loopback("4041", "--inspect") == ("127.0.0.1", 4041)
    assert parse_loopback("[::1]:0", "--inspect") == ("::1", 0)
    for bad in ("0.0.0.0:4040", "192.168.1.2:1", "example.com:80", "x:y"):
        with pytest.raises(ConfigError):
            parse_loopback(bad, "--inspect")
    assert validate_edits({"method": "put", "path": "/x", "body": "b"}) == {
        "method": "PUT", "target": "/x", "body": b"b"}
    for bad in ({"method": "G T"}, {"path": "x"}, {"path": "/a b"},
                {"headers": [["a:b", "c"]]}, {"headers": [["a", "b\r\nX: y"]]},
                {"body_base64": "!"}, {"body": 3}, []):
        with pytest.raises(ValueError):
            validate_edits(bad)


@pytest.mark.parametrize("edits", [
    {"method": "GÉT"}, {"method": "G\u0112T"}, {"method": "GET\x00"}, {"method": "(GET)"},
    {"path": "/caf\u00e9"}, {"path": "/a\x7f"}, {"path": "/\u2028"},
    {"headers": [["X-\u0100", "v"]]}, {"headers": [["X", "\u0100"]]},
    {"headers": [["X", "a\x00b"]]}, {"headers": [["", "v"]]}, {"headers": [["X(", "v"]]},
])
def test_an_edit_outside_the_characters_http_allows_is_refused_before_sending(
        edits: dict[str, object]) -> None:
    """The inspector answers 400 for these (a 500 from h11 or a Latin-1 encode before)."""
    with pytest.raises(ValueError):
        validate_edits(edits)
