"""SCTP packets and chunks (RFC 9260 section 3), the parts WebRTC uses: codec only.

Packet: common header (source port u16, destination port u16, verification tag
u32, CRC32c u32 little-endian over the packet with the field zeroed), then
chunks: type u8, flags u8, length u16 (header included, padding not), value,
padded to 4 bytes. Chunks known here are parsed into the classes below; an
unknown chunk type is kept as ``Unknown`` so the association can apply the
rule of its two high bits (section 3.2). RE-CONFIG (RFC 6525), FORWARD-TSN
(RFC 3758) and PAD (RFC 4820) are included.

``parse_packet`` raises ``ParseError`` for anything malformed (truncated,
lengths that do not add up, a bad checksum) and never anything else; the
association answers a malformed packet from an established peer with ABORT.
Sans-I/O; written for mypyc (mesh/proto/sctp is compiled when a compiler is
there, see setup.py).
"""

from __future__ import annotations

from struct import pack, unpack_from

from google_crc32c import value as crc32c

DATA = 0
INIT = 1
INIT_ACK = 2
SACK = 3
HEARTBEAT = 4
HEARTBEAT_ACK = 5
ABORT = 6
SHUTDOWN = 7
SHUTDOWN_ACK = 8
ERROR = 9
COOKIE_ECHO = 10
COOKIE_ACK = 11
SHUTDOWN_COMPLETE = 14
RECONFIG = 130
PAD = 132
FORWARD_TSN = 192

# DATA flags
FLAG_END = 0x01
FLAG_BEGIN = 0x02
FLAG_UNORDERED = 0x04
FLAG_IMMEDIATE = 0x08

# INIT parameters
PARAM_STATE_COOKIE = 7
PARAM_SUPPORTED_EXTENSIONS = 0x8008
PARAM_FORWARD_TSN_SUPPORTED = 0xC000
# RE-CONFIG parameters (RFC 6525)
PARAM_OUTGOING_RESET = 13
PARAM_INCOMING_RESET = 14
PARAM_RECONFIG_RESPONSE = 16
PARAM_ADD_OUTGOING = 17

# error causes
CAUSE_INVALID_STREAM = 1
CAUSE_MISSING_PARAMETER = 2
CAUSE_NO_USER_DATA = 9
CAUSE_UNRECOGNIZED_CHUNK = 6
CAUSE_PROTOCOL_VIOLATION = 13
CAUSE_USER_ABORT = 12

HEADER = 12
DATA_HEADER = 16
MAX_PACKET = 65535


class ParseError(Exception):
    """A packet or chunk that breaks RFC 9260's format."""


class Chunk:
    kind = -1

    def encode(self) -> bytes:
        raise NotImplementedError


def _chunk(kind: int, flags: int, value: bytes) -> bytes:
    length = 4 + len(value)
    return pack("!BBH", kind, flags, length) + value + b"\x00" * (-length % 4)


def _params(params: list[tuple[int, bytes]]) -> bytes:
    out = bytearray()
    for kind, value in params:
        length = 4 + len(value)
        out += pack("!HH", kind, length) + value + b"\x00" * (-length % 4)
    return bytes(out)


def parse_params(body: bytes, start: int) -> list[tuple[int, bytes]]:
    """TLV parameters from ``start`` to the end of ``body``."""
    params: list[tuple[int, bytes]] = []
    pos = start
    end = len(body)
    while pos + 4 <= end:
        kind, length = unpack_from("!HH", body, pos)
        if length < 4 or pos + length > end:
            raise ParseError("parameter length out of bounds")
        params.append((kind, body[pos + 4:pos + length]))
        pos += length + (-length % 4)
    return params


class DataChunk(Chunk):
    kind = DATA

    def __init__(self, flags: int, tsn: int, stream_id: int, ssn: int, ppid: int,
                 user_data: bytes) -> None:
        self.flags = flags
        self.tsn = tsn
        self.stream_id = stream_id
        self.ssn = ssn
        self.ppid = ppid
        self.user_data = user_data

    def encode(self) -> bytes:
        length = DATA_HEADER + len(self.user_data)
        return (pack("!BBHIHHI", DATA, self.flags, length, self.tsn, self.stream_id, self.ssn,
                     self.ppid) + self.user_data + b"\x00" * (-length % 4))


class InitChunk(Chunk):
    """INIT or INIT-ACK (``kind``)."""

    def __init__(self, kind: int, initiate_tag: int, a_rwnd: int, outbound_streams: int,
                 inbound_streams: int, initial_tsn: int,
                 params: list[tuple[int, bytes]]) -> None:
        self.kind = kind
        self.initiate_tag = initiate_tag
        self.a_rwnd = a_rwnd
        self.outbound_streams = outbound_streams
        self.inbound_streams = inbound_streams
        self.initial_tsn = initial_tsn
        self.params = params

    def param(self, kind: int) -> bytes | None:
        for k, v in self.params:
            if k == kind:
                return v
        return None

    def encode(self) -> bytes:
        return _chunk(self.kind, 0, pack("!IIHHI", self.initiate_tag, self.a_rwnd,
                                         self.outbound_streams, self.inbound_streams,
                                         self.initial_tsn) + _params(self.params))


class SackChunk(Chunk):
    kind = SACK

    def __init__(self, cumulative_tsn: int, a_rwnd: int, gaps: list[tuple[int, int]],
                 duplicates: list[int]) -> None:
        self.cumulative_tsn = cumulative_tsn
        self.a_rwnd = a_rwnd
        self.gaps = gaps
        """Gap ack blocks: (start, end) offsets from ``cumulative_tsn``, inclusive."""
        self.duplicates = duplicates

    def encode(self) -> bytes:
        out = bytearray(pack("!IIHH", self.cumulative_tsn, self.a_rwnd, len(self.gaps),
                             len(self.duplicates)))
        for start, end in self.gaps:
            out += pack("!HH", start, end)
        for tsn in self.duplicates:
            out += pack("!I", tsn)
        return _chunk(SACK, 0, bytes(out))


class ForwardTsnChunk(Chunk):
    kind = FORWARD_TSN

    def __init__(self, new_cumulative_tsn: int, streams: list[tuple[int, int]]) -> None:
        self.new_cumulative_tsn = new_cumulative_tsn
        self.streams = streams
        """(stream id, stream sequence) pairs of ordered messages skipped."""

    def encode(self) -> bytes:
        out = bytearray(pack("!I", self.new_cumulative_tsn))
        for sid, ssn in self.streams:
            out += pack("!HH", sid, ssn)
        return _chunk(FORWARD_TSN, 0, bytes(out))


class ValueChunk(Chunk):
    """Chunks that are a type, flags and an opaque value: HEARTBEAT(-ACK) (parameters),
    COOKIE-ECHO (the cookie), ABORT and ERROR (causes), RE-CONFIG (parameters), and the
    empty ones (COOKIE-ACK, SHUTDOWN-ACK, SHUTDOWN-COMPLETE)."""

    def __init__(self, kind: int, flags: int, value: bytes) -> None:
        self.kind = kind
        self.flags = flags
        self.value = value

    def encode(self) -> bytes:
        return _chunk(self.kind, self.flags, self.value)


class ShutdownChunk(Chunk):
    kind = SHUTDOWN

    def __init__(self, cumulative_tsn: int) -> None:
        self.cumulative_tsn = cumulative_tsn

    def encode(self) -> bytes:
        return _chunk(SHUTDOWN, 0, pack("!I", self.cumulative_tsn))


class Unknown(Chunk):
    def __init__(self, kind: int, flags: int, raw: bytes) -> None:
        self.kind = kind
        self.flags = flags
        self.raw = raw
        """The whole chunk, header included (reported back in an ERROR)."""

    def encode(self) -> bytes:
        return self.raw


def value_chunk(kind: int, params: list[tuple[int, bytes]], flags: int = 0) -> ValueChunk:
    return ValueChunk(kind, flags, _params(params))


def cause(code: int, info: bytes = b"") -> tuple[int, bytes]:
    return code, info


def _parse_chunk(kind: int, flags: int, body: bytes, raw: bytes) -> Chunk:
    size = len(body)
    if kind == DATA:
        if size < 12:
            raise ParseError("DATA chunk is truncated")
        tsn, sid, ssn, ppid = unpack_from("!IHHI", body, 0)
        return DataChunk(flags, tsn, sid, ssn, ppid, body[12:])
    if kind == SACK:
        if size < 12:
            raise ParseError("SACK chunk is truncated")
        cum, rwnd, ngaps, ndups = unpack_from("!IIHH", body, 0)
        if size < 12 + 4 * ngaps + 4 * ndups:
            raise ParseError("SACK chunk is truncated")
        gaps: list[tuple[int, int]] = []
        for i in range(ngaps):
            start, end = unpack_from("!HH", body, 12 + 4 * i)
            gaps.append((start, end))
        base = 12 + 4 * ngaps
        dups = [int(unpack_from("!I", body, base + 4 * i)[0]) for i in range(ndups)]
        return SackChunk(cum, rwnd, gaps, dups)
    if kind in (INIT, INIT_ACK):
        if size < 16:
            raise ParseError("INIT chunk is truncated")
        tag, rwnd, out_s, in_s, tsn = unpack_from("!IIHHI", body, 0)
        return InitChunk(kind, tag, rwnd, out_s, in_s, tsn, parse_params(body, 16))
    if kind == FORWARD_TSN:
        if size < 4 or size % 4:
            raise ParseError("FORWARD-TSN chunk is malformed")
        pairs = [unpack_from("!HH", body, pos) for pos in range(4, size, 4)]
        return ForwardTsnChunk(unpack_from("!I", body, 0)[0],
                               [(int(s), int(n)) for s, n in pairs])
    if kind == SHUTDOWN:
        if size < 4:
            raise ParseError("SHUTDOWN chunk is truncated")
        return ShutdownChunk(unpack_from("!I", body, 0)[0])
    if kind in (HEARTBEAT, HEARTBEAT_ACK, ABORT, ERROR, COOKIE_ECHO, COOKIE_ACK,
                SHUTDOWN_ACK, SHUTDOWN_COMPLETE, RECONFIG, PAD):
        return ValueChunk(kind, flags, body)
    return Unknown(kind, flags, raw)


def parse_packet(data: bytes) -> tuple[int, int, int, list[Chunk]]:
    """(source port, destination port, verification tag, chunks); ``ParseError`` if
    anything is malformed."""
    length = len(data)
    if length < HEADER + 4:
        raise ParseError("SCTP packet is truncated")
    src, dst, tag = unpack_from("!HHI", data, 0)
    checksum = unpack_from("<I", data, 8)[0]
    if checksum != crc32c(data[:8] + b"\x00\x00\x00\x00" + data[12:]):
        raise ParseError("SCTP packet has a bad checksum")
    chunks: list[Chunk] = []
    pos = HEADER
    while pos + 4 <= length:
        kind, flags, clen = unpack_from("!BBH", data, pos)
        if clen < 4 or pos + clen > length:
            raise ParseError("SCTP chunk length out of bounds")
        chunks.append(_parse_chunk(kind, flags, data[pos + 4:pos + clen], data[pos:pos + clen]))
        pos += clen + (-clen % 4)
    if pos < length and any(data[pos:]):
        raise ParseError("SCTP packet has trailing bytes")
    return src, dst, tag, chunks


def serialize_packet(src: int, dst: int, tag: int, chunks: list[bytes]) -> bytes:
    """A packet of already encoded chunks, with its checksum."""
    body = b"".join(chunks)
    header = pack("!HHI", src, dst, tag)
    return header + pack("<I", crc32c(header + b"\x00\x00\x00\x00" + body)) + body
