"""PLPMTUD core: probe and capability wire format, and the size search (no sockets)."""

from __future__ import annotations

import pytest
from aiortc.rtcsctptransport import HeartbeatChunk, parse_packet

from mesh.proto import plpmtud
from mesh.proto.plpmtud import BASE, MAX_PROBES, Search
from mesh.proto.sctp import chunks as c


@pytest.mark.parametrize("size", [1400, 4096, 8192, 16384])
def test_probe_is_exactly_the_size_and_a_stock_parser_sees_only_the_heartbeat(size: int) -> None:
    info = plpmtud.probe_info(size)
    packet = plpmtud.probe_packet(5000, 5000, 0xDEADBEEF, size, info)
    assert len(packet) == size
    src, dst, tag, chunks = parse_packet(packet)  # checks the CRC32c too
    assert (src, dst, tag) == (5000, 5000, 0xDEADBEEF)
    # the PAD chunk is unknown to aiortc and skipped, as RFC 9260 says for type 0x84
    assert [type(c) for c in chunks] == [HeartbeatChunk]
    assert chunks[0].params == [(plpmtud.HB_INFO, info)]
    assert info[:4] == b"MPLP" and int.from_bytes(info[4:8], "big") == size
    # and mesh's own codec reads the HEARTBEAT and the PAD chunk
    _, _, _, ours = c.parse_packet(packet)
    assert [x.kind for x in ours] == [c.HEARTBEAT, c.PAD]


def test_probe_sizes_that_cannot_be_built_are_refused() -> None:
    info = plpmtud.probe_info(1400)
    for bad in (1401, 20):
        with pytest.raises(ValueError):
            plpmtud.probe_packet(1, 1, 1, bad, info)
    with pytest.raises(ValueError):
        plpmtud.probe_packet(1, 1, 1, 1400, b"short")


def test_capability_round_trip_and_hostile_values() -> None:
    kind, value = plpmtud.capability(16384)
    assert kind & 0xC000 == 0x8000  # "skip and continue" for endpoints that do not know it
    assert plpmtud.peer_capability([(1, b""), (kind, value)]) == 16384
    assert plpmtud.peer_capability([]) is None  # a stock peer: never probed
    assert plpmtud.peer_capability([(kind, b"\x00\x01")]) is None  # malformed
    assert plpmtud.peer_capability([(kind, (100).to_bytes(4, "big"))]) is None  # below base


def test_user_data_fits_the_packet() -> None:
    assert plpmtud.user_data_max(BASE) == 1160  # aiortc's USERDATA_MAX_LENGTH too
    for size in plpmtud.CANDIDATES:
        n = plpmtud.user_data_max(size)
        assert n % 4 == 0 and 12 + 16 + n <= size


def test_one_round_probes_every_candidate_and_takes_the_largest_acked() -> None:
    s = Search(peer_max=16384)
    assert s.current == BASE and not s.done
    probes = s.round()
    assert [size for size, _ in probes] == list(plpmtud.CANDIDATES)  # largest first
    by_size = dict(probes)
    assert s.acked(by_size[1400]) and s.acked(by_size[4096])
    assert s.current == BASE and s.waiting  # the round is still open for the larger two
    s.timed_out()
    assert s.current == 4096 and not s.done
    second = s.round()  # the two larger sizes get their second chance
    assert [size for size, _ in second] == [16384, 8192]
    s.timed_out()
    assert s.current == 4096 and s.done and not s.at_top
    assert s.round() == [] and s.probes_sent == 6


def test_a_round_where_everything_fits_ends_at_once() -> None:
    s = Search(peer_max=16384)
    for _, info in s.round():
        s.acked(info)
    assert s.current == 16384 and s.at_top and s.done  # no timeout to wait for


def test_search_stays_at_the_base_when_nothing_gets_through() -> None:
    s = Search(peer_max=16384)
    while s.round():
        s.timed_out()
    assert s.current == BASE and s.done
    assert s.probes_sent == MAX_PROBES * len(plpmtud.CANDIDATES)


def test_search_respects_the_peer_limit_and_ignores_stale_or_forged_acks() -> None:
    s = Search(peer_max=5000)
    probes = s.round()
    assert [size for size, _ in probes] == [4096, 1400]
    info = probes[0][1]
    forged = info[:8] + bytes(8)
    assert not s.acked(forged) and not s.acked(plpmtud.probe_info(4096))
    with pytest.raises(RuntimeError):
        s.round()  # one round in flight at a time
    assert s.acked(info) and s.acked(probes[1][1]) and s.current == 4096
    assert not s.acked(info)  # replayed ack: nothing in flight
    assert s.at_top and s.done


def test_black_hole_falls_back_and_restart_searches_again() -> None:
    s = Search(peer_max=16384)
    for _, info in s.round():
        s.acked(info)
    assert s.current == 16384
    assert s.black_hole() and s.current == BASE and s.done
    assert not s.black_hole()  # already at the base
    s.restart()
    assert [size for size, _ in s.round()] == list(plpmtud.CANDIDATES)
