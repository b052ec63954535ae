"""HTTP mode policy: the pure decisions the HTTP proxy makes about a request.

No I/O here. Parsing is h11's job (httpproxy.py); this module owns what h11
leaves to the application:

* ``head_problem``: request-smuggling checks on the raw head bytes that h11
  normalises away (it folds duplicate equal ``Content-Length`` lines into one
  and lets ``Transfer-Encoding`` win over ``Content-Length``); both are a 400
  here, before anything reaches the service;
* hop-by-hop header removal (RFC 9110 section 7.6.1): ``Connection`` and every
  header it names, ``Keep-Alive``, ``Proxy-Connection``, ``TE``, ``Trailer``,
  ``Transfer-Encoding``, ``Upgrade``, ``Proxy-Authenticate``,
  ``Proxy-Authorization``; message framing is re-derived by h11 on each hop;
* ``forwarded``: ``X-Forwarded-For/-Proto/-Host`` and ``X-Mesh-Peer`` (the admitted
  peer's node id: the one header the service can trust), set by mesh; every client
  copy of them, ``Forwarded`` and ``X-Real-IP`` is dropped under any spelling
  (``X_Mesh_Peer`` reaches a WSGI service as ``HTTP_X_MESH_PEER``, so names are
  compared with ``_`` and ``-`` folded);
* Basic auth (``--basic-auth``) and the Host guard of ``mesh connect --http``
  (421 for a Host that is not the local listener: DNS rebinding).

Headers are lists of ``(name, value)`` byte pairs, names lower-case as h11
delivers them.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import re
from dataclasses import dataclass

Headers = list[tuple[bytes, bytes]]

HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
    b"transfer-encoding", b"upgrade", b"proxy-authenticate", b"proxy-authorization",
})
FRAMING = frozenset({b"content-length", b"transfer-encoding"})
MESH_PEER = b"x-mesh-peer"

_HEAD_END = re.compile(rb"\r?\n\r?\n")
_REASONS = {
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    408: "Request Timeout", 421: "Misdirected Request", 431: "Request Header Fields Too Large",
    501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable",
    504: "Gateway Timeout",
}


def reason(status: int) -> str:
    return _REASONS.get(status, "")


@dataclass(frozen=True)
class Refusal:
    """A response the proxy gives itself instead of forwarding."""

    status: int
    message: str
    headers: tuple[tuple[str, str], ...] = ()


def head_problem(raw: bytes, max_head: int = 16 * 1024) -> Refusal | None:
    """Size and smuggling checks on the raw bytes of a request head (``None`` if the
    head is incomplete but not yet too large, or fine). h11 only bounds a head that
    is still incomplete, so a large head arriving whole is caught here."""
    raw = raw.lstrip(b"\r\n")
    end = _HEAD_END.search(raw, 0, max_head + 4)
    if end is None:
        if len(raw) > max_head:
            return Refusal(431, f"request head over {max_head // 1024} KiB")
        return None
    if end.start() > max_head:
        return Refusal(431, f"request head over {max_head // 1024} KiB")
    lengths = 0
    chunked = False
    for line in re.split(rb"\r?\n", raw[:end.start()])[1:]:
        name, sep, _value = line.partition(b":")
        if not sep:
            continue
        name = name.strip().lower()
        if name == b"content-length":
            lengths += 1
        elif name == b"transfer-encoding":
            chunked = True
    if lengths > 1:
        return Refusal(400, "duplicate Content-Length")
    if lengths and chunked:
        return Refusal(400, "both Content-Length and Transfer-Encoding")
    return None


_REQUEST_LINE = re.compile(rb"([A-Za-z]{1,20}) (\S{1,2048})")


def request_line(raw: bytes) -> tuple[bytes, bytes]:
    """Method and target of a request head that was refused before h11 parsed it, for the
    log: best effort, anything unreadable shown as ``-``."""
    match = _REQUEST_LINE.match(raw.lstrip(b"\r\n"))
    if match is None:
        return b"-", b"-"
    return match.group(1).upper(), match.group(2)


def header(headers: Headers, name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


def connection_tokens(headers: Headers) -> set[bytes]:
    tokens: set[bytes] = set()
    for key, value in headers:
        if key == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return tokens


def is_upgrade(headers: Headers) -> bool:
    """A protocol switch to pass on (WebSocket and the like). Never ``h2c``: after a 101
    to it the connection would be a byte splice the header policy no longer sees, so
    the request goes on as HTTP/1.1 with ``Upgrade`` and ``HTTP2-Settings`` dropped
    as the hop-by-hop headers they are (RFC 9113 3.1 lets a server ignore it)."""
    upgrade = header(headers, b"upgrade")
    if upgrade is None or b"upgrade" not in connection_tokens(headers):
        return False
    protocols = {p.strip().lower().split(b"/")[0] for p in upgrade.split(b",")}
    return b"h2c" not in protocols


def strip_hop_by_hop(headers: Headers, *, keep_upgrade: bool = False) -> Headers:
    """Drop hop-by-hop headers and framing; keep ``Connection: upgrade`` + ``Upgrade``
    when the message is a protocol switch (``keep_upgrade``)."""
    named = connection_tokens(headers)
    upgrade = header(headers, b"upgrade")
    out = [(k, v) for k, v in headers
           if k not in HOP_BY_HOP and k not in named and k not in FRAMING]
    if keep_upgrade and upgrade is not None:
        out += [(b"connection", b"upgrade"), (b"upgrade", upgrade)]
    return out


def framing(headers: Headers) -> Headers:
    """The framing header to re-send on the next hop (h11 validated the original)."""
    length = header(headers, b"content-length")
    if length is not None:
        return [(b"content-length", length)]
    if header(headers, b"transfer-encoding") is not None:
        return [(b"transfer-encoding", b"chunked")]
    return []


@dataclass(frozen=True)
class ShareHttpPolicy:
    """What the sharing side does to each request before the service sees it."""

    service_host: str
    service_port: int
    basic_auth: tuple[str, str] | None = None
    host_header: str | None = None
    """``None``: pass the client's Host; ``"rewrite"``: the service's host:port;
    anything else: that value."""

    def check(self, headers: Headers) -> Refusal | None:
        if self.basic_auth is None:
            return None
        if basic_auth_ok(header(headers, b"authorization"), self.basic_auth):
            return None
        return Refusal(401, "authentication required",
                       (("www-authenticate", 'Basic realm="mesh", charset="UTF-8"'),))

    def upstream_headers(self, headers: Headers, *, peer: str, client: str, upgrade: bool,
                         trusted: bool = False) -> Headers:
        """What the service receives. ``trusted``: the request comes from the tier's
        gateway, whose X-Forwarded-* describe the internet caller."""
        host = header(headers, b"host") or b""
        out = strip_hop_by_hop(headers, keep_upgrade=upgrade)
        if self.basic_auth is not None:
            out = [(k, v) for k, v in out if k != b"authorization"]
        if self.host_header == "rewrite":
            new_host = f"{self.service_host}:{self.service_port}".encode()
        elif self.host_header:
            new_host = self.host_header.encode()
        else:
            new_host = host
        out = [(k, new_host if k == b"host" else v) for k, v in out]
        if header(out, b"host") is None and new_host:
            out.insert(0, (b"host", new_host))
        chain = header(headers, b"x-forwarded-for") if trusted else None
        proto = (header(headers, b"x-forwarded-proto") if trusted else None) or b"http"
        original = (header(headers, b"x-forwarded-host") if trusted else None) or host
        return forwarded(out, client=client, proto=proto, host=original, peer=peer,
                         chain=chain) + framing(headers)


FORWARDED = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
                       b"forwarded", b"x-real-ip", MESH_PEER})
"""Headers mesh sets itself: a client's copies never pass, under any spelling."""


def normalise(name: bytes) -> bytes:
    """A header name as CGI/WSGI servers see it: case and ``-``/``_`` folded."""
    return name.lower().replace(b"_", b"-")


def forwarded(headers: Headers, *, client: str, proto: bytes, host: bytes | None,
              peer: str | None = None, chain: bytes | None = None) -> Headers:
    """``headers`` without any client copy of a header in ``FORWARDED`` (compared after
    ``normalise``, so ``X_Forwarded_For`` goes too), then mesh's own: X-Forwarded-For
    (``chain``, the previous trusted hop's list, then ``client``), -Proto, -Host and,
    with ``peer``, X-Mesh-Peer (the admitted peer's node id)."""
    out = [(k, v) for k, v in headers if normalise(k) not in FORWARDED]
    out.append((b"x-forwarded-for", (chain + b", " if chain else b"") + client.encode()))
    out.append((b"x-forwarded-proto", proto))
    if host:
        out.append((b"x-forwarded-host", host))
    if peer is not None:
        out.append((MESH_PEER, peer.encode()))
    return out


def basic_auth_ok(value: bytes | None, expected: tuple[str, str]) -> bool:
    if value is None:
        return False
    scheme, _, token = value.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return False
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    want = f"{expected[0]}:{expected[1]}".encode()
    return hmac.compare_digest(decoded, want)


def host_guard(headers: Headers, port: int) -> Refusal | None:
    """The Host guard of ``mesh connect --http`` against DNS rebinding: a browser tab
    on an attacker's domain that resolves to 127.0.0.1 still sends that domain as
    Host. Only ``localhost`` and IP literals (a rebinding needs a name) with the
    listener's port pass; a phone on the LAN using the laptop's IP passes too."""
    host = header(headers, b"host")
    if host is not None and host_is_local(host.strip().lower(), port):
        return None
    return Refusal(421, f"this tunnel answers only Host localhost:{port} or an IP address "
                        f"with port {port} (DNS rebinding guard)")


def host_is_local(host: bytes, port: int) -> bool:
    try:
        text = host.decode("ascii")
    except UnicodeDecodeError:
        return False
    if text.startswith("["):
        name, sep, rest = text[1:].partition("]")
        if not sep:
            return False
        given = rest[1:] if rest.startswith(":") else ("" if not rest else None)
    else:
        name, _, given = text.partition(":")
    if given is None or given != (str(port) if port != 80 or given else ""):
        return False
    if name == "localhost":
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
