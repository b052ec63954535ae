"""Resumable streams, sans-I/O (mesh/proto/resume.py and the offsets of
mesh/proto/stream.py): what is kept, what is sent again, and what a peer may claim."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.errors import ProtocolError
from mesh.proto import resume as rs
from mesh.proto import stream as sp


def test_retained_bytes_are_forgotten_as_they_are_acknowledged() -> None:
    kept = rs.Retained()
    for chunk in (b"abc", b"defg", b"hi"):
        kept.add(chunk)
    assert (kept.base, kept.end, kept.size) == (0, 9, 9)
    kept.ack(2)  # inside the first chunk
    assert kept.since(2) == [b"c", b"defg", b"hi"]
    kept.ack(7)
    assert (kept.base, kept.size, kept.since(7)) == (7, 2, [b"hi"])
    kept.ack(5)  # an older acknowledgement changes nothing
    assert kept.base == 7
    with pytest.raises(ProtocolError, match="beyond the 9 sent"):
        kept.ack(10)
    with pytest.raises(ProtocolError, match="acknowledged already"):
        kept.since(6)
    assert kept.since(9) == [] and kept.size == 0


def test_stream_ids_travel_as_the_channel_protocol() -> None:
    sid = rs.new_id()
    assert len(sid) == 16 and rs.parse_protocol(rs.protocol(sid)) == sid
    assert sid != rs.new_id()
    for bad in ("", "id=", "id=XYZ", "id=" + "A" * 16, "id=" + "0" * 17, "x=" + "0" * 16):
        assert rs.parse_protocol(bad) is None


@pytest.mark.parametrize("msg", [sp.Resume(0, 262144, False, False),
                                 sp.Resume(10**12, 10**12 + 5, True, True),
                                 sp.Credit(5, 12345), sp.Credit(7), sp.End()])
def test_resume_and_acknowledging_credit_round_trip(msg: sp.Control) -> None:
    assert sp.parse(sp.encode(msg)) == msg


@pytest.mark.parametrize("text", [
    '{"t":"resume","rx":-1,"g":0,"fin":false,"ok":false}',
    '{"t":"resume","rx":0,"g":true,"fin":false,"ok":false}',
    '{"t":"resume","rx":0,"g":0,"fin":0,"ok":false}',
    '{"t":"resume","rx":0,"g":0,"fin":false}',
    '{"t":"resume","rx":4611686018427387904,"g":0,"fin":false,"ok":false}',
    '{"t":"credit","n":5,"a":-3}', '{"t":"credit","n":5,"a":"7"}'])
def test_malformed_resume_and_credit_are_refused(text: str) -> None:
    with pytest.raises(ProtocolError):
        sp.parse(text)


def test_a_resume_restores_credit_granted_on_the_lost_connection() -> None:
    sender, receiver = sp.Flow(window=100), sp.Flow(window=100)
    sender.sent(100)  # all of the window in flight
    receiver.received(60)  # 40 bytes were lost with the connection
    grant = receiver.consumed(60)
    assert grant == 60  # ... and so was this grant
    msg = receiver.resume_message(fin=False, ok=True)
    assert (msg.rx, msg.granted) == (60, 160)
    sender.resumed(msg)
    assert sender.send_credit == 60  # 160 allowed in all, 100 sent
    with pytest.raises(ProtocolError, match="received 101 bytes of 100 sent"):
        sender.resumed(sp.Resume(101, 200, False, False))
    with pytest.raises(ProtocolError, match="impossible credit"):
        sender.resumed(sp.Resume(50, 99, False, False))  # less than was already used


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(1, 5000), min_size=1, max_size=40), st.data())
def test_a_stream_cut_anywhere_resumes_byte_exact(sizes: list[int], data: st.DataObject
                                                  ) -> None:
    """Chunks sent within credit, the connection cut after any of them (everything after
    it lost, grants too), then ``resume`` both ways: the receiver ends with every byte,
    once, in order; the sender kept no more than the window."""
    window = 8192
    sender, receiver = sp.Flow(window=window), sp.Flow(window=window)
    kept = rs.Retained()
    payload = bytes(i % 251 for i in range(sum(sizes)))
    got = bytearray()
    cut = data.draw(st.integers(0, len(sizes)))
    pos = 0
    for i, size in enumerate(sizes):
        size = min(size, sender.send_credit)
        if size <= 0:
            break
        chunk = payload[pos:pos + size]
        pos += size
        sender.sent(size)
        kept.add(chunk)
        assert kept.size <= window + window // 4 + size
        if i < cut:  # delivered, consumed and granted over the old connection
            receiver.received(size)
            got += chunk
            grant = receiver.consumed(size)
            if grant:
                sender.granted(grant)
                kept.ack(receiver.consumed_total)
    msg = receiver.resume_message(fin=False, ok=False)
    sender.resumed(msg)
    for chunk in kept.since(msg.rx):
        receiver.received(len(chunk))
        got += chunk
    assert bytes(got) == payload[:pos]
    assert sender.send_credit == receiver.granted_total - sender.sent_total >= 0
