"""The gateway's HTTP cache (RFC 9111 subset), response policy and routes file: sans-I/O."""

from __future__ import annotations

import contextlib
import gzip
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.errors import ConfigError
from mesh.http.cache import HttpCache, lifetime, storable
from mesh.http.edge import CacheFill, Chain, EdgePolicy, PolicyFilter, accepts_gzip, preflight
from mesh.node import routes

H = list[tuple[bytes, bytes]]


def resp(cc: str = "max-age=60", **extra: str) -> H:
    out = [(b"content-type", b"text/plain"), (b"cache-control", cc.encode())]
    return out + [(k.replace("_", "-").encode(), v.encode()) for k, v in extra.items()]


def test_explicit_lifetimes_only_and_never_private_material() -> None:
    assert lifetime(resp("public, s-maxage=10, max-age=60")) == 10
    assert lifetime(resp("max-age=60")) == 60
    assert lifetime([(b"date", b"Mon, 30 Nov 2026 12:00:00 GMT"),
                     (b"expires", b"Mon, 30 Nov 2026 12:01:40 GMT")]) == 100
    assert lifetime([(b"content-type", b"text/plain")]) is None
    assert storable([], 200, resp())
    assert not storable([], 200, [(b"content-type", b"text/plain")])  # no lifetime
    assert not storable([(b"authorization", b"Basic eDp5")], 200, resp())
    assert not storable([], 200, resp(set_cookie="a=b"))
    assert not storable([], 200, resp(vary="*"))
    assert not storable([], 200, resp("private, max-age=60"))
    assert not storable([], 200, resp("no-store"))
    assert not storable([(b"cache-control", b"no-store")], 200, resp())
    assert not storable([], 500, resp())
    assert not storable([], 206, resp())


def test_fresh_hits_carry_age_and_go_stale() -> None:
    cache = HttpCache(1 << 20)
    assert cache.store("k", [], 200, resp(age="5"), b"body", 100.0)
    found = cache.lookup("k", b"GET", [], 110.0)
    assert found is not None and found.fresh
    assert (b"age", b"15") in found.entry.answer_headers(110.0, False, "hit")
    assert cache.lookup("k", b"HEAD", [], 110.0) is not None
    assert cache.lookup("k", b"POST", [], 110.0) is None
    stale = cache.lookup("k", b"GET", [], 156.0)
    assert stale is not None and not stale.fresh
    # the client may ask for fresher than the lifetime, or to revalidate
    assert not cache.lookup("k", b"GET", [(b"cache-control", b"max-age=5")], 110.0).fresh
    assert not cache.lookup("k", b"GET", [(b"cache-control", b"no-cache")], 101.0).fresh


def test_vary_keeps_variants_apart() -> None:
    cache = HttpCache(1 << 20)
    gz = [(b"accept-encoding", b"gzip")]
    cache.store("k", gz, 200, resp(vary="Accept-Encoding"), b"zipped", 0.0)
    cache.store("k", [], 200, resp(vary="Accept-Encoding"), b"plain", 0.0)
    assert cache.lookup("k", b"GET", gz, 1.0).entry.body == b"zipped"
    assert cache.lookup("k", b"GET", [], 1.0).entry.body == b"plain"
    assert cache.lookup("k", b"GET", [(b"accept-encoding", b"br")], 1.0) is None
    assert len(cache) == 2


def test_bounded_by_bytes_least_recently_used_first() -> None:
    cache = HttpCache(10_000, max_entry=4_000)
    for i in range(10):
        cache.store(f"k{i}", [], 200, resp(), bytes(3_000), float(i))
        cache.lookup("k0", b"GET", [], float(i))  # k0 stays in use
        assert cache.used <= 10_000
    assert cache.lookup("k0", b"GET", [], 10.0) is not None
    assert cache.lookup("k1", b"GET", [], 10.0) is None and cache.evictions >= 7
    assert not cache.store("huge", [], 200, resp(), bytes(5_000), 0.0)
    cache.invalidate("k0")
    assert cache.lookup("k0", b"GET", [], 10.0) is None


def test_revalidation_turns_a_304_into_the_stored_answer() -> None:
    cache = HttpCache(1 << 20, debug=True)
    headers = resp("no-cache", etag='"v1"', last_modified="Mon, 30 Nov 2026 12:00:00 GMT")
    cache.store("k", [], 200, headers, b"stored body", 0.0)
    found = cache.lookup("k", b"GET", [], 1.0)
    assert found is not None and not found.fresh
    assert dict(found.entry.validators()) == {
        b"if-none-match": b'"v1"', b"if-modified-since": b"Mon, 30 Nov 2026 12:00:00 GMT"}
    fill = CacheFill(cache, "k", [], found, lambda: 2.0)
    status, out = fill.head(304, [(b"etag", b'"v1"'), (b"cache-control", b"max-age=30")])
    assert status == 200 and (b"x-cache", b"REVALIDATED") in out
    assert (b"content-length", b"11") in out
    assert fill.end() == b"stored body" and fill.cache == "revalidated"
    assert cache.used == found.entry.size  # the refreshed headers are accounted for
    assert cache.lookup("k", b"GET", [], 20.0).fresh  # max-age=30 taken from the 304


def test_a_miss_is_stored_as_it_streams_unless_too_big() -> None:
    cache = HttpCache(1 << 20, max_entry=10)
    fill = CacheFill(cache, "k", [], None, lambda: 0.0)
    fill.head(200, resp())
    fill.data(b"12345")
    fill.data(b"678901")
    fill.end()
    assert cache.lookup("k", b"GET", [], 1.0) is None  # 11 bytes > max_entry
    fill = CacheFill(cache, "k", [], None, lambda: 0.0)
    fill.head(200, resp())
    fill.data(b"12345")
    fill.end()
    assert cache.lookup("k", b"GET", [], 1.0).entry.body == b"12345"


def run_filter(f: PolicyFilter | Chain, status: int, headers: H, chunks: list[bytes]
               ) -> tuple[int, H, bytes]:
    status, out = f.head(status, headers)
    body = b"".join(f.data(c) for c in chunks) + f.end()
    return status, out, body


def test_gzip_only_when_accepted_and_worth_it() -> None:
    html = [(b"content-type", b"text/html; charset=utf-8"), (b"etag", b'"x"')]
    page = [b"<p>hello</p>" * 200, b"<p>more</p>" * 200]
    yes = PolicyFilter(EdgePolicy(compress=True), [(b"accept-encoding", b"gzip, br")], b"GET",
                       False)
    status, out, body = run_filter(yes, 200, html + [(b"content-length", b"4600")], page)
    assert (b"content-encoding", b"gzip") in out and b"content-length" not in dict(out)
    assert (b"etag", b'W/"x"') in out and (b"vary", b"Accept-Encoding") in out
    assert gzip.decompress(body) == b"".join(page) and len(body) < 500
    for request, headers, status in [
            ([], html, 200),  # not accepted
            ([(b"accept-encoding", b"gzip;q=0")], html, 200),
            ([(b"accept-encoding", b"gzip")], [(b"content-type", b"image/png")], 200),
            ([(b"accept-encoding", b"gzip")], html + [(b"content-encoding", b"br")], 200),
            ([(b"accept-encoding", b"gzip")], html + [(b"content-length", b"100")], 200),
            ([(b"accept-encoding", b"gzip")], html + [(b"cache-control", b"no-transform")],
             200),
            ([(b"accept-encoding", b"gzip")], html, 206)]:
        f = PolicyFilter(EdgePolicy(compress=True), request, b"GET", False)
        _, out, body = run_filter(f, status, headers, page)
        assert b"content-encoding" not in dict(out) or dict(out)[b"content-encoding"] == b"br"
        assert body == b"".join(page)


def test_each_chunk_is_flushed_so_streams_keep_flowing() -> None:
    f = PolicyFilter(EdgePolicy(compress=True), [(b"accept-encoding", b"gzip")], b"GET", False)
    f.head(200, [(b"content-type", b"text/event-stream")])
    first = f.data(b"data: one\n\n")
    d = zlib.decompressobj(31)
    assert d.decompress(first) == b"data: one\n\n"


@given(st.text(max_size=80))
def test_accept_encoding_parsing_never_raises(value: str) -> None:
    accepts_gzip([(b"accept-encoding", value.encode("utf-8", "replace"))])


def test_security_headers_hsts_only_over_tls_and_the_services_own_win() -> None:
    policy = EdgePolicy(security=True, headers=((b"x-robots-tag", b"noindex"),))
    _, plain = PolicyFilter(policy, [], b"GET", False).head(200, [])
    _, tls = PolicyFilter(policy, [], b"GET", True).head(
        200, [(b"x-frame-options", b"DENY")])
    assert (b"x-content-type-options", b"nosniff") in plain
    assert b"strict-transport-security" not in dict(plain)
    assert dict(tls)[b"strict-transport-security"] == b"max-age=31536000"
    assert dict(tls)[b"x-frame-options"] == b"DENY" and dict(plain)[b"x-robots-tag"] == b"noindex"


def test_cors_preflights_are_answered_at_the_edge() -> None:
    policy = EdgePolicy(cors=("https://app.example",))
    ask = [(b"origin", b"https://app.example"), (b"access-control-request-method", b"PUT"),
           (b"access-control-request-headers", b"x-token")]
    ok = preflight(policy, b"OPTIONS", ask)
    assert ok is not None and ok.status == 204
    assert dict(ok.headers)[b"access-control-allow-origin"] == b"https://app.example"
    assert dict(ok.headers)[b"access-control-allow-headers"] == b"x-token"
    bad = preflight(policy, b"OPTIONS", [(b"origin", b"https://evil.example"), ask[1]])
    assert bad is not None and bad.status == 403
    assert preflight(policy, b"OPTIONS", [(b"origin", b"https://app.example")]) is None
    assert preflight(EdgePolicy(), b"OPTIONS", ask) is None
    _, out = PolicyFilter(policy, ask[:1], b"GET", False).head(200, [])
    assert dict(out)[b"access-control-allow-origin"] == b"https://app.example"
    _, out = PolicyFilter(policy, [(b"origin", b"https://evil.example")], b"GET", False).head(
        200, [])
    assert b"access-control-allow-origin" not in dict(out)


ROUTES = """
[[route]]
host = "shop.example.com"
path = "/api/"
name = "api"
strip = true

[[route]]
path = "/static/"
name = "assets"
cache = false
compress = true

[[route]]
name = "web"
"""


def test_routes_first_match_wins_with_prefix_strip() -> None:
    rules = routes.parse(ROUTES, "routes.toml")
    assert routes.match(rules, b"shop.example.com", b"/api/orders?x=1")[1] == b"/orders?x=1"
    assert routes.match(rules, b"shop.example.com:8080", b"/api")[1] == b"/"
    rule, target = routes.match(rules, b"other.example.com", b"/api/orders")
    assert rule.name == "web" and target == b"/api/orders"
    rule, target = routes.match(rules, b"x", b"/static/a.css")
    assert rule.name == "assets" and target == b"/static/a.css" and not rule.cache
    assert rule.policy == EdgePolicy(compress=True)
    assert routes.match(rules, b"shop.example.com", b"/apix")[0].name == "web"
    assert routes.match(rules[:2], b"x", b"/") is None


@pytest.mark.parametrize("text,where", [
    ("[[route]]\nname = 'Web'\n", ":2: name must be"),
    ("[[route]]\nname = 'web'\n\n[[route]]\nname = 'x'\npath = 'api'\n", ":6: path 'api'"),
    ("[[route]]\nname = 'web'\nstrip = true\n", ":3: strip needs a path"),
    ("[[route]]\nname = 'web'\nhots = 'a.b'\n", ":3: unknown field 'hots'"),
    ("[[route]]\nname = 'web'\nheaders = { 'Content-Length' = '1' }\n", ":3: header"),
    ("[[route]]\nname = 'web'\ncors = ['ftp://x']\n", ":3: cors must be"),
    ("[[route]\nname = 'web'\n", ":1: not valid TOML"),
    ("title = 'x'\n", ": unknown setting 'title'"),
    ("", ": no [[route]] tables"),
])
def test_a_bad_routes_file_names_the_line(text: str, where: str) -> None:
    with pytest.raises(ConfigError) as err:
        routes.parse(text, "routes.toml")
    message = str(err.value)
    assert message.startswith("routes.toml") and where in message and "\n" not in message


@given(st.text(max_size=200))
def test_routes_parsing_only_raises_config_errors(text: str) -> None:
    with contextlib.suppress(ConfigError):
        routes.parse(text, "r.toml")


HEADER_VALUES = st.binary(max_size=60) | st.sampled_from([
    b"max-age=" + b"9" * 5000, b"s-maxage=-1", b"max-age=\"60\"", b"no-cache, private",
    b"Mon, 30 Nov 9999 12:00:00 GMT", b"Thu, 01 Jan 1970 00:00:00 GMT", b"*", b"accept-encoding"])


@given(st.lists(st.tuples(st.sampled_from([b"cache-control", b"expires", b"date", b"age",
                                           b"vary", b"etag", b"content-type",
                                           b"content-length", b"set-cookie"]),
                          HEADER_VALUES), max_size=6))
def test_a_members_caching_headers_never_break_the_gateway(headers: H) -> None:
    """What a member answers is remote input: any header values are stored or not,
    never an exception."""
    cache = HttpCache(1 << 16)
    lifetime(headers)
    storable([], 200, headers)
    cache.store("k", [(b"accept-encoding", b"gzip")], 200, headers, b"x", 0.0)
    found = cache.lookup("k", b"GET", [(b"accept-encoding", b"gzip")], 1.0)
    if found is not None:
        found.entry.answer_headers(2.0, True, "hit")
        cache.refresh(found.entry, headers, 3.0)
    digits = [(k, v) for k, v in headers if k != b"content-length"]
    PolicyFilter(EdgePolicy(compress=True), [(b"accept-encoding", b"gzip")], b"GET",
                 False).head(200, [*digits, (b"content-type", b"text/html"),
                                   (b"content-length", b"9" * 5000)])


def test_the_readme_routes_example_parses_and_routes_as_it_says() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("**Routing rules**", 1)[1]
    example = section.split("```toml\n", 1)[1].split("```", 1)[0]
    rules = routes.parse(example, "README.md")
    assert routes.match(rules, b"shop.example.com", b"/api/orders") == (rules[0], b"/orders")
    rule, target = routes.match(rules, b"shop.example.com", b"/cart")
    assert rule.name == "web" and target == b"/cart" and not rule.cache
    assert rule.policy is not None and rule.policy.compress and rule.policy.security
    assert routes.match(rules, b"other.example.com", b"/") is None
