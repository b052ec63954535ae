"""STUN/TURN message codec (RFC 8489, RFC 8656), sans-I/O.

STUN message (RFC 8489 section 5)::

    0                   1                   2                   3
    |0 0|     STUN Message Type     |         Message Length        |
    |                         Magic Cookie (0x2112A442)             |
    |                     Transaction ID (96 bits)                  |
    |  attributes: type u16, length u16, value, padded to 4 bytes   |

The message type interleaves a 12-bit method and a 2-bit class
(``M11..M7 C1 M6..M4 C0 M3..M0``). MESSAGE-INTEGRITY is HMAC-SHA1 over the
message up to the attribute, with the length field covering it (section
14.5); FINGERPRINT is CRC-32 xor 0x5354554E (section 14.7).

ChannelData (RFC 8656 section 12.4): channel number u16 (0x4000-0x4FFF; the
older 0x4000-0x7FFE of RFC 5766 is accepted too),
length u16, data; padded to 4 bytes over TCP (RFC 8656 section 12.5).
``StreamFramer`` splits a TCP byte stream into STUN messages and ChannelData
frames (RFC 8489 section 6.2.2 on framing over TCP).

Everything here raises ``StunError`` on malformed input and never anything else.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import ipaddress
import struct
from dataclasses import dataclass, field

MAGIC = 0x2112A442
HEADER = 20
MAX_MESSAGE = 64 * 1024

# methods
BINDING, ALLOCATE, REFRESH, SEND, DATA, CREATE_PERMISSION, CHANNEL_BIND = (
    0x001, 0x003, 0x004, 0x006, 0x007, 0x008, 0x009)
# classes
REQUEST, INDICATION, SUCCESS, ERROR = 0, 1, 2, 3

# attributes
MAPPED_ADDRESS = 0x0001
USERNAME = 0x0006
MESSAGE_INTEGRITY = 0x0008
ERROR_CODE = 0x0009
UNKNOWN_ATTRIBUTES = 0x000A
CHANNEL_NUMBER = 0x000C
LIFETIME = 0x000D
XOR_PEER_ADDRESS = 0x0012
DATA_ATTR = 0x0013
REALM = 0x0014
NONCE = 0x0015
XOR_RELAYED_ADDRESS = 0x0016
REQUESTED_ADDRESS_FAMILY = 0x0017
EVEN_PORT = 0x0018
REQUESTED_TRANSPORT = 0x0019
DONT_FRAGMENT = 0x001A
XOR_MAPPED_ADDRESS = 0x0020
RESERVATION_TOKEN = 0x0022
SOFTWARE = 0x8022
FINGERPRINT = 0x8028
RESPONSE_ORIGIN = 0x802B
OTHER_ADDRESS = 0x802C

COMPREHENSION_REQUIRED_KNOWN = frozenset({
    MAPPED_ADDRESS, USERNAME, MESSAGE_INTEGRITY, ERROR_CODE, UNKNOWN_ATTRIBUTES,
    CHANNEL_NUMBER, LIFETIME, XOR_PEER_ADDRESS, DATA_ATTR, REALM, NONCE, XOR_RELAYED_ADDRESS,
    REQUESTED_ADDRESS_FAMILY, EVEN_PORT, REQUESTED_TRANSPORT, DONT_FRAGMENT, XOR_MAPPED_ADDRESS,
    RESERVATION_TOKEN, 0x0024, 0x0025,  # PRIORITY, USE-CANDIDATE (ICE)
})

Address = tuple[str, int]


class StunError(Exception):
    """Malformed STUN/TURN input."""


def message_type(method: int, cls: int) -> int:
    return ((method & 0xF80) << 2) | ((method & 0x070) << 1) | (method & 0x00F) | (
        (cls & 2) << 7) | ((cls & 1) << 4)


def split_type(mtype: int) -> tuple[int, int]:
    method = ((mtype & 0x3E00) >> 2) | ((mtype & 0x00E0) >> 1) | (mtype & 0x000F)
    cls = ((mtype & 0x0100) >> 7) | ((mtype & 0x0010) >> 4)
    return method, cls


@dataclass(frozen=True)
class Message:
    method: int
    cls: int
    txid: bytes
    attrs: tuple[tuple[int, bytes], ...] = ()
    integrity_offset: int | None = field(default=None, compare=False)
    """Byte offset of MESSAGE-INTEGRITY in the parsed datagram, if present."""

    def get(self, attr: int) -> bytes | None:
        for atype, value in self.attrs:
            if atype == attr:
                return value
        return None

    def get_all(self, attr: int) -> list[bytes]:
        return [value for atype, value in self.attrs if atype == attr]

    def with_attrs(self, *attrs: tuple[int, bytes]) -> Message:
        return Message(self.method, self.cls, self.txid, self.attrs + attrs)

    def encode(self, key: bytes | None = None, fingerprint: bool = False) -> bytes:
        body = bytearray()
        for atype, value in self.attrs:
            if atype in (MESSAGE_INTEGRITY, FINGERPRINT):
                continue
            body += struct.pack("!HH", atype, len(value)) + value + b"\x00" * (-len(value) % 4)
        mtype = message_type(self.method, self.cls)
        if key is not None:
            header = struct.pack("!HHI", mtype, len(body) + 24, MAGIC) + self.txid
            digest = hmac.new(key, header + body, hashlib.sha1).digest()
            body += struct.pack("!HH", MESSAGE_INTEGRITY, 20) + digest
        if fingerprint:
            header = struct.pack("!HHI", mtype, len(body) + 8, MAGIC) + self.txid
            crc = (binascii.crc32(header + body) ^ 0x5354554E) & 0xFFFFFFFF
            body += struct.pack("!HHI", FINGERPRINT, 4, crc)
        return struct.pack("!HHI", mtype, len(body), MAGIC) + self.txid + bytes(body)


def is_stun(data: bytes) -> bool:
    return len(data) >= HEADER and data[0] & 0xC0 == 0 and (
        struct.unpack_from("!I", data, 4)[0] == MAGIC)


def parse(data: bytes) -> Message:
    """Parse one STUN message (the whole datagram)."""
    if len(data) < HEADER:
        raise StunError("STUN message too short")
    if len(data) > MAX_MESSAGE:
        raise StunError("STUN message too long")
    mtype, length, magic = struct.unpack_from("!HHI", data)
    if mtype & 0xC000 or magic != MAGIC:
        raise StunError("not a STUN message")
    if length % 4 or HEADER + length != len(data):
        raise StunError("STUN length does not match the datagram")
    method, cls = split_type(mtype)
    txid = bytes(data[8:20])
    attrs: list[tuple[int, bytes]] = []
    pos = HEADER
    integrity: int | None = None
    while pos < len(data):
        if pos + 4 > len(data):
            raise StunError("truncated STUN attribute header")
        atype, alen = struct.unpack_from("!HH", data, pos)
        end = pos + 4 + alen
        if end > len(data):
            raise StunError("truncated STUN attribute")
        if integrity is not None and atype != FINGERPRINT:
            pos = end + (-alen % 4)  # attributes after MESSAGE-INTEGRITY are ignored
            continue
        if atype == MESSAGE_INTEGRITY:
            if alen != 20:
                raise StunError("MESSAGE-INTEGRITY must be 20 bytes")
            integrity = pos
        attrs.append((atype, bytes(data[pos + 4:end])))
        pos = end + (-alen % 4)
        if len(attrs) > 64:
            raise StunError("too many STUN attributes")
    return Message(method, cls, txid, tuple(attrs), integrity)


def check_integrity(data: bytes, msg: Message, key: bytes) -> bool:
    """Verify MESSAGE-INTEGRITY of a parsed datagram with the long-term ``key``."""
    off = msg.integrity_offset
    if off is None:
        return False
    header = bytearray(data[:HEADER])
    struct.pack_into("!H", header, 2, off - HEADER + 24)
    digest = hmac.new(key, bytes(header) + data[HEADER:off], hashlib.sha1).digest()
    return hmac.compare_digest(digest, data[off + 4:off + 24])


def check_fingerprint(data: bytes) -> bool:
    if len(data) < HEADER + 8:
        return False
    atype, alen, crc = struct.unpack_from("!HHI", data, len(data) - 8)
    if atype != FINGERPRINT or alen != 4:
        return False
    return bool((binascii.crc32(data[:-8]) ^ 0x5354554E) & 0xFFFFFFFF == crc)


def long_term_key(username: str, realm: str, password: str) -> bytes:
    return hashlib.md5(f"{username}:{realm}:{password}".encode()).digest()


# -- attribute values --------------------------------------------------------------


def xor_address(addr: Address, txid: bytes) -> bytes:
    ip = ipaddress.ip_address(addr[0])
    port = addr[1] ^ (MAGIC >> 16)
    mask = struct.pack("!I", MAGIC) + txid
    raw = ip.packed
    xored = bytes(b ^ mask[i] for i, b in enumerate(raw))
    return struct.pack("!BBH", 0, 1 if ip.version == 4 else 2, port) + xored


def parse_xor_address(value: bytes, txid: bytes) -> Address:
    if len(value) < 4:
        raise StunError("address attribute too short")
    _, family, port = struct.unpack_from("!BBH", value)
    size = {1: 4, 2: 16}.get(family)
    if size is None or len(value) != 4 + size:
        raise StunError("bad address family or length")
    mask = struct.pack("!I", MAGIC) + txid
    raw = bytes(b ^ mask[i] for i, b in enumerate(value[4:]))
    return str(ipaddress.ip_address(raw)), port ^ (MAGIC >> 16)


def plain_address(addr: Address) -> bytes:
    ip = ipaddress.ip_address(addr[0])
    return struct.pack("!BBH", 0, 1 if ip.version == 4 else 2, addr[1]) + ip.packed


def parse_plain_address(value: bytes) -> Address:
    if len(value) < 4:
        raise StunError("address attribute too short")
    _, family, port = struct.unpack_from("!BBH", value)
    size = {1: 4, 2: 16}.get(family)
    if size is None or len(value) != 4 + size:
        raise StunError("bad address family or length")
    return str(ipaddress.ip_address(value[4:])), port


def error_code(code: int, reason: str) -> bytes:
    return struct.pack("!HBB", 0, code // 100, code % 100) + reason.encode()


def parse_error_code(value: bytes) -> tuple[int, str]:
    if len(value) < 4:
        raise StunError("ERROR-CODE too short")
    _, klass, number = struct.unpack_from("!HBB", value)
    return (klass & 7) * 100 + number, value[4:].decode("utf-8", "replace")


def u32(value: int) -> bytes:
    return struct.pack("!I", value)


def parse_u32(value: bytes) -> int:
    if len(value) != 4:
        raise StunError("expected a 32-bit attribute")
    return int(struct.unpack("!I", value)[0])


def text(value: bytes | None, limit: int = 763) -> str | None:
    if value is None:
        return None
    if len(value) > limit:
        raise StunError("text attribute too long")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StunError("text attribute is not UTF-8") from exc


# -- ChannelData and TCP framing ---------------------------------------------------


CHANNEL_MIN, CHANNEL_MAX = 0x4000, 0x7FFE
"""RFC 8656 narrows channels to 0x4000-0x4FFF; the RFC 5766 range is still accepted
for older clients (coturn's turnutils_uclient picks numbers up to 0x7FFE)."""


def is_channel_data(data: bytes) -> bool:
    return len(data) >= 4 and data[0] & 0xC0 == 0x40


def channel_data(channel: int, payload: bytes, pad: bool = False) -> bytes:
    out = struct.pack("!HH", channel, len(payload)) + payload
    return out + b"\x00" * (-len(payload) % 4) if pad else out


def parse_channel_data(data: bytes) -> tuple[int, bytes]:
    if len(data) < 4:
        raise StunError("ChannelData too short")
    channel, length = struct.unpack_from("!HH", data)
    if not CHANNEL_MIN <= channel <= CHANNEL_MAX:
        raise StunError("ChannelData channel out of range")
    if 4 + length > len(data):
        raise StunError("ChannelData length exceeds the datagram")
    return channel, bytes(data[4:4 + length])


class StreamFramer:
    """Splits a TCP byte stream into STUN messages and ChannelData frames."""

    def __init__(self, limit: int = MAX_MESSAGE + 8) -> None:
        self._buf = bytearray()
        self._limit = limit

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        frames = []
        while len(self._buf) >= 4:
            first = self._buf[0]
            length = struct.unpack_from("!H", self._buf, 2)[0]
            if first & 0xC0 == 0:
                size = HEADER + length
            elif first & 0xC0 == 0x40:
                size = 4 + length + (-length % 4)
            else:
                raise StunError("TCP stream is not STUN or ChannelData")
            if size > self._limit:
                raise StunError("frame too large")
            if len(self._buf) < size:
                break
            frames.append(bytes(self._buf[:size]))
            del self._buf[:size]
        if len(self._buf) > self._limit:
            raise StunError("frame too large")
        return frames
