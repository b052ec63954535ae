"""Tickets: the one copy-pasteable token ``mesh share`` prints.

A ticket is a capability. It pins the sharer's public key, says where to meet
it (signaling URLs, LAN hints), names the share, carries the admission secret
(>= 128 bits) and an expiry, and is signed by the sharer's key so that nothing
but the key can be swapped without the signature failing.

Text form: ``mesh1`` followed by the lowercase, unpadded RFC 4648 base32 of the
binary form below (base32 survives case changes and double-click selection).

Binary form (all integers big-endian)::

    version   u8   = 1
    pubkey    32   Ed25519 public key of the sharer
    expires   u32  unix seconds
    secret    u8 length (16..32) + bytes
    fields    repeated: type u8, length u16, value
                1 = share name (UTF-8, <= 64 bytes)
                2 = signaling URL (UTF-8, <= 512 bytes, repeatable, <= 8)
                3 = LAN hint "host:port" (UTF-8, <= 64 bytes, repeatable, <= 8)
                4 = mode "http": the share speaks HTTP (a connect then applies its
                    Host guard by itself); other values are ignored
                5 = protocols "udp" or "tcp+udp" (absent: TCP only); other values
                    are ignored
              unknown types are skipped (forward compatible)
    signature 64   Ed25519 over everything before it

Sans-I/O: no sockets, no clock (``now`` is an argument).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
import struct
from dataclasses import dataclass, field

from mesh.errors import TicketError

from .identity import Identity, decode_node_id, encode_node_id, verify

PREFIX = "mesh1"
VERSION = 1
MAX_TEXT = 4096
MAX_NAME = 64
MAX_URL = 512
MAX_HINT = 64
MAX_REPEAT = 8
SECRET_BYTES = 16  # 128 bits

_T_NAME, _T_URL, _T_HINT, _T_MODE, _T_PROTO = 1, 2, 3, 4, 5


@dataclass(frozen=True)
class Ticket:
    """What a connecting peer needs to find and be admitted by a share."""

    node_id: str
    """The sharer's node id (its public key)."""
    secret: bytes
    """Admission secret; proves the holder was given the ticket."""
    expires: int
    """Unix time after which the ticket is refused."""
    name: str = ""
    """Human name of the share."""
    signal_urls: tuple[str, ...] = ()
    """Signaling servers where the sharer is registered, in order of preference."""
    lan_hints: tuple[str, ...] = field(default=())
    """``host:port`` of the sharer's LAN signaling endpoint(s), tried first."""
    http: bool = False
    """The share is in HTTP mode: a connect guards its listener's Host by itself."""
    tcp: bool = True
    """The share carries TCP connections."""
    udp: bool = False
    """The share carries UDP datagrams (``mesh share --udp``)."""

    @property
    def protos(self) -> str:
        """``tcp``, ``udp`` or ``tcp+udp``."""
        return "+".join(p for p, on in (("tcp", self.tcp), ("udp", self.udp)) if on)

    def encode(self, identity: Identity) -> str:
        """Sign with ``identity`` (which must be the sharer) and return the text form."""
        if identity.node_id != self.node_id:
            raise ValueError("a ticket must be signed by the key it names")
        body = _pack(self)
        raw = body + identity.sign(body)
        return PREFIX + base64.b32encode(raw).decode("ascii").rstrip("=").lower()

    def check_fresh(self, now: float) -> None:
        if now > self.expires:
            raise TicketError("ticket has expired; ask the sharer for a new one")


def new_secret() -> bytes:
    return secrets.token_bytes(SECRET_BYTES)


def looks_like_ticket(text: str) -> bool:
    return text.strip().lower().startswith(PREFIX) and len(text.strip()) > 60


_B32 = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")


def decode(text: str, now: float | None = None) -> Ticket:
    """Parse and verify a ticket; with ``now``, also refuse an expired one."""
    text = "".join(text.split()).lower()
    if len(text) > MAX_TEXT:
        raise TicketError("ticket is too long")
    if not text.startswith(PREFIX):
        raise TicketError(f"not a mesh ticket (tickets start with {PREFIX!r})")
    data = text[len(PREFIX) :].upper()
    bad = sorted({c for c in data if c not in _B32})
    if bad:
        raise TicketError(f"ticket has characters a ticket never has ({''.join(bad)[:10]!r}); "
                          "copy it again")
    try:
        raw = base64.b32decode(data + "=" * (-len(data) % 8))
    except (binascii.Error, ValueError) as exc:  # a length base32 cannot end on
        raise TicketError("ticket is truncated; copy the whole line") from exc
    ticket = _unpack(raw)
    if now is not None:
        ticket.check_fresh(now)
    return ticket


def _pack(t: Ticket) -> bytes:
    if not 16 <= len(t.secret) <= 32:
        raise ValueError("secret must be 16..32 bytes")
    out = bytearray(struct.pack("!B32sI", VERSION, decode_node_id(t.node_id), t.expires))
    out += struct.pack("!B", len(t.secret)) + t.secret
    fields: list[tuple[int, str, int]] = []
    if t.name:
        fields.append((_T_NAME, t.name, MAX_NAME))
    if len(t.signal_urls) > MAX_REPEAT or len(t.lan_hints) > MAX_REPEAT:
        raise ValueError("too many signaling URLs or LAN hints")
    fields += [(_T_URL, u, MAX_URL) for u in t.signal_urls]
    fields += [(_T_HINT, h, MAX_HINT) for h in t.lan_hints]
    if t.http:
        fields.append((_T_MODE, "http", 16))
    if t.udp:
        fields.append((_T_PROTO, t.protos, 16))
    for ftype, value, limit in fields:
        enc = value.encode("utf-8")
        if len(enc) > limit:
            raise ValueError(f"ticket field too long: {value[:40]!r}")
        out += struct.pack("!BH", ftype, len(enc)) + enc
    return bytes(out)


def _unpack(raw: bytes) -> Ticket:
    if len(raw) < 1 + 32 + 4 + 1 + 16 + 64:
        raise TicketError("ticket is truncated; copy the whole line")
    if raw[0] != VERSION:
        raise TicketError(f"ticket version {raw[0]} is not supported by this mesh")
    body, sig = raw[:-64], raw[-64:]
    pub = body[1:33]
    node_id = encode_node_id(pub)
    if not verify(node_id, body, sig):
        raise TicketError("ticket signature does not verify (tampered or mistyped)")
    (expires,) = struct.unpack_from("!I", body, 33)
    pos = 37
    slen = body[pos]
    pos += 1
    if not 16 <= slen <= 32 or pos + slen > len(body):
        raise TicketError("ticket secret is malformed")
    secret = body[pos : pos + slen]
    pos += slen
    name = ""
    urls: list[str] = []
    hints: list[str] = []
    http = False
    protos = "tcp"
    while pos < len(body):
        if pos + 3 > len(body):
            raise TicketError("ticket field is truncated")
        ftype, flen = struct.unpack_from("!BH", body, pos)
        pos += 3
        value_b = body[pos : pos + flen]
        if len(value_b) != flen:
            raise TicketError("ticket field is truncated")
        pos += flen
        try:
            value = value_b.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TicketError("ticket field is not UTF-8") from exc
        if ftype == _T_NAME and flen <= MAX_NAME:
            name = value
        elif ftype == _T_URL and flen <= MAX_URL and len(urls) < MAX_REPEAT:
            urls.append(value)
        elif ftype == _T_HINT and flen <= MAX_HINT and len(hints) < MAX_REPEAT:
            hints.append(value)
        elif ftype == _T_MODE:
            http = http or value == "http"
        elif ftype == _T_PROTO and value in ("udp", "tcp+udp"):
            protos = value
        elif ftype in (_T_NAME, _T_URL, _T_HINT):
            raise TicketError("ticket field is out of bounds")
    return Ticket(node_id, bytes(secret), expires, name, tuple(urls), tuple(hints), http,
                  tcp="tcp" in protos, udp="udp" in protos)


def share_tag(name: str) -> str:
    """Names one share among the processes that use one node key (sent to signaling)."""
    return hashlib.sha256(b"mesh-share-tag\n" + name.encode()).hexdigest()[:16]
