"""The SCTP and data-channel core (mesh/proto/sctp) between two instances over a
simulated link on a fake clock: no sockets, no asyncio."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.proto import plpmtud
from mesh.proto.sctp import channels as ch
from mesh.proto.sctp import chunks as c
from mesh.proto.sctp.association import ESTABLISHED, Association
from mesh.proto.sctp.receiver import MOD, Receiver, Violation

from .sctp_sim import Link, Side, Sim


def payloads(seed: int, count: int, largest: int = 256 * 1024) -> list[bytes]:
    rng = random.Random(seed)
    sizes = [1, 2, 1187, 1188, 1400, largest] + [
        rng.choice((rng.randrange(1, 64), rng.randrange(1, 4000), rng.randrange(1, largest)))
        for _ in range(count)]
    return [rng.randbytes(n) for n in sizes]


def opened(sim: Sim, label: str = "x", **options: object) -> int:
    sim.run(until=20, done=sim.established)
    assert sim.established()
    return sim.a.core.open(label, **options)  # type: ignore[arg-type]


def ended(side: Side) -> str | None:
    for event in side.events:
        if isinstance(event, ch.Ended):
            return event.reason
    return None


def test_handshake_and_channel_open() -> None:
    sim = Sim()
    cid = opened(sim, "control", protocol="mesh")
    sim.a.core.send(cid, "hello")
    sim.a.core.send(cid, b"")
    sim.a.core.send(cid, "")
    sim.run(until=5, done=lambda: len(sim.b.received.get(cid, [])) == 3)
    assert sim.b.received[cid] == ["hello", b"", ""]
    [channel] = sim.b.opened
    assert (channel.id, channel.label, channel.protocol, channel.ordered) == (
        cid, "control", "mesh", True)
    assert cid % 2 == 0  # the DTLS client opens even stream ids
    answer = sim.b.core.open("back")
    assert answer % 2 == 1
    sim.b.core.send(answer, b"pong")
    sim.run(until=5, done=lambda: answer in sim.a.received)
    assert sim.a.received[answer] == [b"pong"]


@settings(max_examples=25, deadline=None)
@given(loss=st.floats(0, 0.2), duplicate=st.floats(0, 0.1), reorder=st.floats(0, 0.3),
       jitter=st.floats(0, 0.02), seed=st.integers(0, 2**16))
def test_byte_exact_over_a_lossy_reordering_duplicating_link(
        loss: float, duplicate: float, reorder: float, jitter: float, seed: int) -> None:
    sim = Sim(Link(loss=loss, duplicate=duplicate, reorder=reorder, jitter=jitter,
                   seed=seed, mtu=1500))
    sim.run(until=120, done=sim.established)
    assert sim.established()
    ordered = sim.a.core.open("ordered")
    unordered = sim.a.core.open("unordered", ordered=False)
    back = sim.b.core.open("back")
    sent_a = payloads(seed, 12, largest=64 * 1024)
    sent_u = payloads(seed + 1, 12, largest=64 * 1024)
    sent_b = payloads(seed + 2, 6, largest=64 * 1024)
    for one, two in zip(sent_a, sent_u, strict=True):
        sim.a.core.send(ordered, one)
        sim.a.core.send(unordered, two)
    for data in sent_b:
        sim.b.core.send(back, data)

    def done() -> bool:
        return (len(sim.b.received.get(ordered, [])) == len(sent_a)
                and len(sim.b.received.get(unordered, [])) == len(sent_u)
                and len(sim.a.received.get(back, [])) == len(sent_b))
    sim.run(until=600, done=done)
    assert sim.b.received[ordered] == sent_a
    assert sorted(sim.b.received[unordered]) == sorted(sent_u)
    assert sim.a.received[back] == sent_b
    for side in (sim.a, sim.b):
        receiver = side.core.association.receiver
        assert receiver is not None and receiver.held_bytes == 0
        assert ended(side) is None


def test_unordered_messages_overtake_a_lost_one() -> None:
    sim = Sim(Link(reorder=0.5, jitter=0.01, seed=7))
    cid = opened(sim, "u", ordered=False)
    sim.run(until=1, done=lambda: sim.a.core.channels[cid].acked)
    sent = [bytes([i]) * 100 for i in range(200)]
    for data in sent:
        sim.a.core.send(cid, data)
    sim.run(until=30, done=lambda: len(sim.b.received.get(cid, [])) == len(sent))
    got = sim.b.received[cid]
    assert sorted(got) == sorted(sent)
    assert got != sent  # delivered as they came, not held for order


def test_a_small_window_stops_the_sender_and_still_delivers_everything() -> None:
    window = 64 * 1024
    sim = Sim(Link(mtu=1500), window=window, max_message=window // 2)
    cid = opened(sim)
    sent = payloads(3, 20, largest=window // 2)
    for data in sent:
        sim.a.core.send(cid, data)
    peak = 0
    while len(sim.b.received.get(cid, [])) < len(sent) and sim.now < 120:
        assert sim.step()
        receiver = sim.b.core.association.receiver
        assert receiver is not None
        peak = max(peak, receiver.held_bytes)
        # the sender keeps within what the receiver advertised (plus one chunk, rule B)
        assert sim.a.core.association.sender.flight_size <= window + 1400
    assert sim.b.received[cid] == sent
    assert 0 < peak <= window


def test_a_sender_ignoring_the_window_is_aborted() -> None:
    sim = Sim(window=16 * 1024, max_message=8 * 1024)
    opened(sim)
    b = sim.b.core.association
    receiver = b.receiver
    assert receiver is not None
    tsn = (receiver.cumulative + 2) % MOD  # leave a gap: nothing can be delivered
    for i in range(200):
        chunk = c.DataChunk(c.FLAG_BEGIN, (tsn + i) % MOD, 0, 0, 53, b"x" * 1000)
        b.receive_datagram(c.serialize_packet(5000, 5000, b.tag, [chunk.encode()]), sim.now)
        if b.state != ESTABLISHED:
            break
    assert b.state != ESTABLISHED
    assert "beyond the receive window" in (ended_reason(sim.b) or "")
    abort = [p for p in b.datagrams_to_send(sim.now) if p[12] == c.ABORT]
    assert abort and b"receive window" in abort[0]


def ended_reason(side: Side) -> str | None:
    while (event := side.core.next_event()) is not None:
        side.events.append(event)
    return ended(side)


@pytest.mark.parametrize("in_order", [True, False])
def test_an_oversized_message_is_refused_before_it_is_complete(in_order: bool) -> None:
    sim = Sim(max_message=8 * 1024)
    opened(sim)
    b = sim.b.core.association
    receiver = b.receiver
    assert receiver is not None
    first = (receiver.cumulative + 1) % MOD
    pieces = [c.DataChunk(c.FLAG_BEGIN if i == 0 else 0, (first + i) % MOD, 0, 0, 53,
                          b"y" * 1000) for i in range(20)]  # never an END
    if not in_order:
        pieces.reverse()
    for piece in pieces:
        b.receive_datagram(c.serialize_packet(5000, 5000, b.tag, [piece.encode()]), sim.now)
    assert b.state != ESTABLISHED
    assert "over the maximum of 8192 bytes" in (ended_reason(sim.b) or "")
    assert receiver.held_bytes <= 9 * 1024


def test_malformed_and_truncated_packets_abort_an_established_association() -> None:
    sim = Sim()
    opened(sim)
    b = sim.b.core.association
    good = c.serialize_packet(5000, 5000, b.tag, [
        c.DataChunk(3, (b.receiver.cumulative + 1) % MOD if b.receiver else 0, 0, 0, 53,
                    b"z" * 40).encode()])
    for bad in (good[:20], good[:-3]):
        a_copy = Sim()
        opened(a_copy)
        target = a_copy.b.core.association
        body = bytearray(bad)
        body[4:8] = target.tag.to_bytes(4, "big")
        body[8:12] = b"\0\0\0\0"
        from google_crc32c import value as crc32c
        body[8:12] = crc32c(bytes(body)).to_bytes(4, "little")
        target.receive_datagram(bytes(body), a_copy.now)
        assert target.state != ESTABLISHED
        assert "malformed packet" in (ended_reason(a_copy.b) or "")
    # a bad checksum is also malformed; a packet for another tag is dropped quietly
    b.receive_datagram(good[:8] + b"\x01\x02\x03\x04" + good[12:], sim.now)
    assert b.state != ESTABLISHED


def test_a_packet_with_the_wrong_verification_tag_is_ignored() -> None:
    sim = Sim()
    opened(sim)
    b = sim.b.core.association
    spoofed = c.serialize_packet(5000, 5000, b.tag ^ 1, [
        c.value_chunk(c.ABORT, [(c.CAUSE_USER_ABORT, b"spoofed")]).encode()])
    b.receive_datagram(spoofed, sim.now)
    assert b.state == ESTABLISHED


def test_max_retransmits_zero_drops_lost_messages_without_stalling() -> None:
    sim = Sim(Link(loss=0.15, seed=11, mtu=1500))
    lossy = opened(sim, "lossy", ordered=False, max_retransmits=0)
    reliable = sim.a.core.open("reliable")
    sim.run(until=10, done=lambda: len(sim.b.opened) == 2)
    sent = [i.to_bytes(4, "big") * 500 for i in range(300)]
    for data in sent:
        sim.a.core.send(lossy, data)
    sim.a.core.send(reliable, b"after")
    a, b = sim.a.core.association, sim.b.core.association
    sim.run(until=300, done=lambda: not a.sender.queued() and a.sender.outstanding == 0)
    assert not a.sender.queued() and a.sender.outstanding == 0
    got = sim.b.received.get(lossy, [])
    assert 0 < len(got) < len(sent)
    assert set(got) <= set(sent)
    assert sim.b.received[reliable] == [b"after"]
    assert b.receiver is not None
    assert b.receiver.held_bytes == 0  # the abandoned fragments were dropped
    assert b.receiver.cumulative == (a.sender.next_tsn - 1) % MOD


def test_ordered_partial_reliability_skips_abandoned_messages() -> None:
    sim = Sim(Link(loss=0.2, seed=5, mtu=1500))
    cid = opened(sim, "p", max_retransmits=1)
    sim.run(until=10, done=lambda: bool(sim.b.opened))
    sent = [i.to_bytes(2, "big") * 1000 for i in range(200)]
    for data in sent:
        sim.a.core.send(cid, data)
    sim.run(until=120, done=lambda: not sim.a.core.association.sender.queued() and (
        sim.a.core.association.sender.outstanding == 0))
    got = sim.b.received.get(cid, [])
    assert got and len(got) <= len(sent)
    assert got == sorted(got, key=sent.index)  # type: ignore[arg-type]


def test_tsn_and_ssn_wrap_around() -> None:
    sim = Sim(Link(loss=0.05, reorder=0.1, seed=2, mtu=1500), initial_tsn=MOD - 40)
    cid = opened(sim)
    sent = payloads(4, 60, largest=32 * 1024)
    for data in sent:
        sim.a.core.send(cid, data)
    sim.run(until=120, done=lambda: len(sim.b.received.get(cid, [])) == len(sent))
    assert sim.b.received[cid] == sent
    assert sim.a.core.association.sender.next_tsn < MOD - 40  # it wrapped


def test_stream_sequence_numbers_wrap() -> None:
    sim = Sim()
    cid = opened(sim)
    count = 65536 + 10
    for i in range(count):
        sim.a.core.send(cid, i.to_bytes(4, "big"))
    sim.run(until=600, done=lambda: len(sim.b.received.get(cid, [])) == count)
    got = sim.b.received[cid]
    assert [int.from_bytes(x, "big") for x in got] == list(range(count))  # type: ignore[arg-type]


def test_closing_a_channel_resets_its_streams_and_the_id_can_be_reused() -> None:
    sim = Sim(Link(loss=0.05, seed=9))
    cid = opened(sim)
    for i in range(50):
        sim.a.core.send(cid, bytes([i]) * 3000)
    sim.a.core.close(cid)  # after everything queued has gone out
    sim.run(until=60, done=lambda: cid in sim.a.closed and cid in sim.b.closed)
    assert cid in sim.a.closed and cid in sim.b.closed
    assert sim.b.received[cid] == [bytes([i]) * 3000 for i in range(50)]
    with pytest.raises(ch.ChannelError):
        sim.a.core.send(cid, b"late")
    sim.a.core._next_id = cid  # open the same stream id again: sequence numbers restart
    again = sim.a.core.open("again")
    assert again == cid
    sim.a.core.send(again, b"fresh")
    sim.run(until=sim.now + 10, done=lambda: len(sim.b.received[cid]) == 51)
    assert sim.b.received[cid][-1] == b"fresh"
    assert [x.label for x in sim.b.opened] == ["x", "again"]


def test_the_peer_closing_closes_ours() -> None:
    sim = Sim()
    cid = opened(sim)
    sim.run(until=5, done=lambda: bool(sim.b.opened))
    sim.b.core.close(cid)
    sim.run(until=10, done=lambda: cid in sim.a.closed and cid in sim.b.closed)
    assert cid in sim.a.closed and cid in sim.b.closed


def test_buffered_amount_and_low_threshold() -> None:
    sim = Sim()
    cid = opened(sim)
    sim.a.core.set_threshold(cid, 10_000)
    for _ in range(20):
        sim.a.core.send(cid, b"q" * 5000)
    assert sim.a.core.buffered(cid) >= 90_000
    sim.run(until=10, done=lambda: len(sim.b.received.get(cid, [])) == 20)
    assert sim.a.core.buffered(cid) == 0
    lows = [e for e in sim.a.events if isinstance(e, ch.Low)]
    assert len(lows) == 1 and lows[0].channel_id == cid


def test_path_mtu_grows_to_what_the_link_carries() -> None:
    sim = Sim(Link(mtu=1500))
    cid = opened(sim)
    sim.run(until=5)
    assert sim.a.core.association.packet_size == 1400
    assert sim.a.df
    sim.a.core.send(cid, b"m" * 100_000)
    sim.run(until=10, done=lambda: cid in sim.b.received)
    assert sim.b.received[cid] == [b"m" * 100_000]
    assert sim.link.largest <= 16384  # probes only; data within 1400
    sizes = {len(p) for p in sim.a.core.datagrams_to_send(sim.now)}
    assert all(s <= 1400 for s in sizes)


def test_a_path_mtu_black_hole_falls_back_to_the_base_size_and_recovers() -> None:
    link = Link(mtu=9000)
    sim = Sim(link)
    cid = opened(sim)
    sim.run(until=5)
    assert sim.a.core.association.packet_size == 8192
    link.mtu = 1300  # a route change: big packets now vanish (DF set)
    sent = [bytes([i]) * 20_000 for i in range(30)]
    for data in sent:
        sim.a.core.send(cid, data)
    sim.run(until=120, done=lambda: len(sim.b.received.get(cid, [])) == len(sent))
    assert sim.b.received[cid] == sent
    assert plpmtud.BASE in sim.a.sizes[1:]
    assert ended(sim.a) is None


def test_stock_peers_are_never_sent_more_than_the_base_size() -> None:
    sim = Sim(discover=False)
    cid = opened(sim)
    sim.a.core.send(cid, b"s" * 200_000)
    sim.run(until=10, done=lambda: cid in sim.b.received)
    assert sim.b.received[cid] == [b"s" * 200_000]
    assert sim.link.largest <= plpmtud.BASE


def test_heartbeats_are_answered_and_unknown_chunks_follow_their_high_bits() -> None:
    sim = Sim()
    opened(sim)
    b = sim.b.core.association
    hb = c.ValueChunk(c.HEARTBEAT, 0, b"\x00\x01\x00\x08ping").encode()
    b.receive_datagram(c.serialize_packet(5000, 5000, b.tag, [hb]), sim.now)
    out = b.datagrams_to_send(sim.now)
    assert any(p[12] == c.HEARTBEAT_ACK and b"ping" in p for p in out)
    # 0x40 set: skip and report; 0x00: stop processing the packet (the DATA after is unseen)
    report = c.Unknown(0x7F, 0, bytes([0x7F, 0, 0, 4])).encode()
    b.receive_datagram(c.serialize_packet(5000, 5000, b.tag, [report]), sim.now)
    assert any(p[12] == c.ERROR for p in b.datagrams_to_send(sim.now))
    stop = bytes([0x3F, 0, 0, 4])
    assert b.receiver is not None
    before = b.receiver.cumulative
    data = c.DataChunk(3, (before + 1) % MOD, 0, 0, 53, b"d").encode()
    b.receive_datagram(c.serialize_packet(5000, 5000, b.tag, [stop, data]), sim.now)
    assert b.receiver.cumulative == before
    assert b.state == ESTABLISHED


def test_init_collision_establishes_once() -> None:
    """Both ends send INIT at once, as a browser does (RFC 9260 5.2.1)."""
    one = Association(client=True, now=0.0)
    two = Association(client=True, now=0.0)
    one.start(0.0)
    two.start(0.0)
    for _ in range(6):
        for src, dst in ((one, two), (two, one)):
            for packet in src.datagrams_to_send(0.0):
                dst.receive_datagram(packet, 0.0)
    assert one.state == two.state == ESTABLISHED
    assert one.peer_tag == two.tag and two.peer_tag == one.tag


def test_a_forged_or_stale_cookie_does_not_establish() -> None:
    server = Association(client=False, now=0.0)
    client = Association(client=True, now=0.0)
    client.start(0.0)
    [init] = client.datagrams_to_send(0.0)
    server.receive_datagram(init, 0.0)
    [init_ack] = server.datagrams_to_send(0.0)
    client.receive_datagram(init_ack, 0.0)
    [echo] = client.datagrams_to_send(0.0)
    forged = bytearray(echo)
    forged[-1] ^= 0xFF  # the cookie's MAC no longer matches
    _, _, _, chunks = c.parse_packet(echo)
    cookie = chunks[0]
    assert isinstance(cookie, c.ValueChunk)
    tampered = cookie.value[:-1] + bytes([cookie.value[-1] ^ 1])
    server.receive_datagram(c.serialize_packet(5000, 5000, server.tag, [
        c.ValueChunk(c.COOKIE_ECHO, 0, tampered).encode()]), 0.1)
    assert server.state != ESTABLISHED
    server.receive_datagram(echo, 61.0)  # replayed after the cookie's lifetime
    assert server.state != ESTABLISHED
    server.receive_datagram(echo, 1.0)
    assert server.state == ESTABLISHED


def test_shutdown_closes_both_ends() -> None:
    sim = Sim()
    opened(sim)
    sim.a.core.association.shutdown()
    sim.run(until=5, done=lambda: ended(sim.a) is not None and ended(sim.b) is not None)
    assert ended(sim.a) == "shut down" and ended(sim.b) == "shut down by the peer"


def test_an_unreachable_peer_ends_the_association() -> None:
    link = Link()
    sim = Sim(link)
    cid = opened(sim)
    link.loss = 1.0
    sim.a.core.send(cid, b"into the void")
    sim.run(until=3600, done=lambda: ended(sim.a) is not None)
    assert "stopped acknowledging" in (ended(sim.a) or "")


def test_receiver_gap_blocks_and_duplicates() -> None:
    receiver = Receiver(initial_tsn=100, window=1 << 20, max_message=1 << 16)
    for tsn in (100, 102, 103, 105, 103):
        receiver.receive(c.DataChunk(3, tsn, 0, tsn, 53, b"p"))
    sack = receiver.sack()
    assert sack.cumulative_tsn == 100
    assert sack.gaps == [(2, 3), (5, 5)]
    assert sack.duplicates == [103]
    with pytest.raises(Violation):
        receiver.forward((100 + 70_000) % MOD, [])
