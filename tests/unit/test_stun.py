import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.proto import stun as s

TX = b"\x01" * 12


@pytest.mark.parametrize("method", [s.BINDING, s.ALLOCATE, s.REFRESH, s.SEND, s.DATA,
                                    s.CREATE_PERMISSION, s.CHANNEL_BIND, 0xFFF])
@pytest.mark.parametrize("cls", [s.REQUEST, s.INDICATION, s.SUCCESS, s.ERROR])
def test_type_round_trip(method: int, cls: int) -> None:
    assert s.split_type(s.message_type(method, cls)) == (method, cls)


def test_known_type_values() -> None:  # RFC 8489 / 8656 examples
    assert s.message_type(s.BINDING, s.REQUEST) == 0x0001
    assert s.message_type(s.BINDING, s.SUCCESS) == 0x0101
    assert s.message_type(s.ALLOCATE, s.ERROR) == 0x0113
    assert s.message_type(s.DATA, s.INDICATION) == 0x0017


def test_rfc5769_request_integrity_and_fingerprint() -> None:
    # RFC 5769 section 2.1: sample request, short-term password "VOkJxbRl1RmTxUk/WvJxBt"
    raw = bytes.fromhex(
        "000100582112a442b7e7a701bc34d686fa87dfae802200105354554e207465737420636c69656e74"
        "002400046e0001ff80290008932ff9b151263b36000600096576746a3a68367659202020"
        "000800149aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a280280004e57a3bcf")
    msg = s.parse(raw)
    assert msg.method == s.BINDING and msg.cls == s.REQUEST
    assert s.text(msg.get(s.USERNAME)) == "evtj:h6vY"
    assert s.check_integrity(raw, msg, b"VOkJxbRl1RmTxUk/WvJxBt")
    assert not s.check_integrity(raw, msg, b"wrong")
    assert s.check_fingerprint(raw)


def test_rfc5769_ipv4_response_address() -> None:
    raw = bytes.fromhex(
        "0101003c2112a442b7e7a701bc34d686fa87dfae8022000b7465737420766563746f7220002000"
        "080001a147e112a643000800142b91f599fd9e90c38c7489f92af9ba53f06be7d780280004c07d4c96")
    msg = s.parse(raw)
    value = msg.get(s.XOR_MAPPED_ADDRESS)
    assert value is not None
    assert s.parse_xor_address(value, msg.txid) == ("192.0.2.1", 32853)
    assert s.check_fingerprint(raw)


@given(attrs=st.lists(st.tuples(st.integers(0, 0x7FFF).filter(
    lambda a: a not in (s.MESSAGE_INTEGRITY, s.FINGERPRINT)), st.binary(max_size=40)),
    max_size=10), key=st.one_of(st.none(), st.binary(min_size=1, max_size=20)),
       fp=st.booleans())
def test_encode_parse_round_trip(attrs: list[tuple[int, bytes]], key: bytes | None,
                                 fp: bool) -> None:
    msg = s.Message(s.ALLOCATE, s.REQUEST, TX, tuple(attrs))
    raw = msg.encode(key=key, fingerprint=fp)
    back = s.parse(raw)
    assert [a for a in back.attrs if a[0] not in (s.MESSAGE_INTEGRITY, s.FINGERPRINT)] == attrs
    if key is not None:
        assert s.check_integrity(raw, back, key)
    if fp:
        assert s.check_fingerprint(raw)


@given(st.sampled_from(["1.2.3.4", "255.0.0.1", "::1", "2001:db8::5", "fe80::1"]),
       st.integers(0, 65535), st.binary(min_size=12, max_size=12))
def test_xor_address_round_trip(host: str, port: int, txid: bytes) -> None:
    assert s.parse_xor_address(s.xor_address((host, port), txid), txid) == (host, port)


def test_channel_data_and_framer() -> None:
    frame = s.channel_data(0x4001, b"abcde", pad=True)
    assert len(frame) == 12
    assert s.parse_channel_data(frame) == (0x4001, b"abcde")
    msg = s.Message(s.BINDING, s.REQUEST, TX).encode()
    framer = s.StreamFramer()
    stream = msg + frame + msg
    out = []
    for i in range(0, len(stream), 3):  # byte dribbles
        out += framer.feed(stream[i:i + 3])
    assert out == [msg, frame, msg]
    with pytest.raises(s.StunError):
        s.StreamFramer().feed(b"\xff\xff\x00\x00")


@pytest.mark.parametrize("raw", [
    b"", b"\x00" * 19, b"\x80" + b"\x00" * 19,
    struct.pack("!HHI", 1, 4, s.MAGIC) + TX,  # length beyond the datagram
    struct.pack("!HHI", 1, 0, 0x12345678) + TX,  # bad cookie
    struct.pack("!HHI", 1, 8, s.MAGIC) + TX + struct.pack("!HH", 1, 100) + b"\x00" * 4,
    struct.pack("!HHI", 1, 8, s.MAGIC) + TX + struct.pack("!HH", 8, 4) + b"\x00" * 4,
])
def test_malformed(raw: bytes) -> None:
    with pytest.raises(s.StunError):
        s.parse(raw)


@given(st.binary(max_size=300))
@settings(max_examples=2000)
def test_fuzz_parse(raw: bytes) -> None:
    try:
        msg = s.parse(raw)
    except s.StunError:
        return
    s.check_integrity(raw, msg, b"k")
    s.check_fingerprint(raw)


@given(st.binary(max_size=300))
@settings(max_examples=1000)
def test_fuzz_framer(raw: bytes) -> None:
    with contextlib.suppress(s.StunError):
        s.StreamFramer().feed(raw)
