"""The UDP core (mesh/proto/datagram.py): frames, the flow table on a fake clock, and the
UDP fields of tickets, adverts and configuration."""

from __future__ import annotations

import pytest

from mesh.errors import ConfigError
from mesh.node.config import ConnectConfig, ShareConfig
from mesh.proto import advert
from mesh.proto import datagram as dg
from mesh.proto import ticket as tk
from mesh.proto.identity import Identity

ME = Identity.from_seed(b"\x05" * 32)


def test_frames_round_trip_and_keep_boundaries() -> None:
    for payload in (b"", b"x", bytes(range(256)) * 4, b"\0" * dg.MAX_DATAGRAM):
        frame = dg.encode_data(7, payload)
        assert len(frame) == dg.HEADER + len(payload)
        assert dg.decode(frame) == dg.Data(7, payload)
    assert dg.decode(dg.encode_close(0xFFFFFFFF, dg.REFUSED)) == dg.Close(0xFFFFFFFF, dg.REFUSED)
    assert dg.Close(1, dg.REFUSED).why == "too many flows (--max-flows)"
    assert dg.Close(1, 99).why == "reason 99"


@pytest.mark.parametrize("frame, message", [
    ("text", "text message"),
    (b"\0\0\0\1", "too short"),
    (dg.encode_data(1, b"")[:1] + b"\0\0\0\0", "flow 0"),
    (b"\x02\0\0\0\1", "unknown frame type 0x2"),
    (dg.encode_close(1, 1) + b"\0", "unknown frame type 0x1"),
    (dg.encode_data(1, b"\0" * (dg.MAX_DATAGRAM + 1)), "over 65535"),
])
def test_bad_frames_are_refused_with_a_reason(frame: bytes | str, message: str) -> None:
    with pytest.raises(dg.DatagramError, match=message):
        dg.decode(frame)


def test_the_flow_table_caps_flows_and_counts_the_refused() -> None:
    table: dg.FlowTable[str, None] = dg.FlowTable(idle=60, max_flows=2)
    a = table.open("a", None, 0.0)
    b = table.open("b", None, 0.0)
    assert a is not None and b is not None and (a.flow, b.flow) == (1, 2)
    assert table.open("c", None, 0.0) is None
    assert table.counters.flows_refused == 1 and table.counters.flows_total == 2
    assert table.get("a") is a and table.by_flow(2) is b and len(table) == 2
    assert table.remove(a) and not table.remove(a)
    assert table.open("c", None, 0.0) is not None and len(table) == 2


def test_idle_flows_end_in_order_of_their_last_datagram() -> None:
    table: dg.FlowTable[str, None] = dg.FlowTable(idle=10, max_flows=10)
    assert table.deadline() is None
    a = table.open("a", None, 0.0)
    table.open("b", None, 1.0)
    assert a is not None and table.deadline() == 10.0
    table.touch(a, 5.0)  # a is busy again: b now goes first
    assert table.deadline() == 11.0
    assert table.expire(10.999) == []
    assert [f.key for f in table.expire(11.0)] == ["b"]
    assert table.deadline() == 15.0
    assert [f.key for f in table.expire(100.0)] == ["a"] and len(table) == 0


def test_flow_numbers_wrap_past_the_ones_in_use() -> None:
    table: dg.FlowTable[int, None] = dg.FlowTable(idle=1, max_flows=4)
    table._next = 0xFFFFFFFF
    first = table.open(1, None, 0.0)
    second = table.open(2, None, 0.0)
    assert first is not None and second is not None
    assert (first.flow, second.flow) == (0xFFFFFFFF, 1)
    table._next = 0xFFFFFFFF  # in use: skipped, and 1 is too
    third = table.open(3, None, 0.0)
    assert third is not None and third.flow == 2


def test_the_table_refuses_nonsense_limits() -> None:
    with pytest.raises(ValueError):
        dg.FlowTable(idle=0, max_flows=1)
    with pytest.raises(ValueError):
        dg.FlowTable(idle=1, max_flows=0)


def test_tickets_say_which_protocols_a_share_carries() -> None:
    base = tk.Ticket(ME.node_id, b"s" * 16, 2_000_000_000, "dns")
    for tcp, udp, protos in ((True, False, "tcp"), (False, True, "udp"),
                             (True, True, "tcp+udp")):
        ticket = tk.decode(tk.Ticket(ME.node_id, b"s" * 16, 2_000_000_000, "dns", tcp=tcp,
                                     udp=udp).encode(ME))
        assert (ticket.tcp, ticket.udp, ticket.protos) == (tcp, udp, protos)
    assert len(base.encode(ME)) < len(tk.Ticket(ME.node_id, b"s" * 16, 2_000_000_000, "dns",
                                               udp=True).encode(ME))  # TCP: no new field


def test_adverts_carry_the_protocols_signed() -> None:
    props = advert.make_properties(ME, "dns", 5000, ["10.0.0.2"], 1.7e9, True, "udp")
    found = advert.verify_properties(props)
    assert found is not None and found.protos == "udp"
    assert advert.verify_properties({**props, "u": "tcp+udp"}) is None  # not what was signed
    without = dict(props)
    del without["u"]
    assert advert.verify_properties(without) is None
    tcp = advert.make_properties(ME, "web", 5000, ["10.0.0.2"], 1.7e9, True)
    assert "u" not in tcp and advert.verify_properties(tcp) is not None
    assert advert.verify_properties({**props, "u": "sctp"}) is None


def test_udp_configuration_is_checked_before_any_io() -> None:
    assert ShareConfig(port=53, signal_urls=("ws://127.0.0.1:1/",)).protos == "tcp"
    assert ShareConfig(port=53, signal_urls=("ws://127.0.0.1:1/",), udp=True).protos == "udp"
    both = ShareConfig(port=53, signal_urls=("ws://127.0.0.1:1/",), udp=True, tcp=True)
    assert both.protos == "tcp+udp"
    from mesh.http.config import HttpConfig
    with pytest.raises(ConfigError, match="--udp cannot go with --http"):
        ShareConfig(port=53, signal_urls=("ws://127.0.0.1:1/",), udp=True, http=HttpConfig())
    with pytest.raises(ConfigError, match="share TCP, UDP or both"):
        ShareConfig(port=53, signal_urls=("ws://127.0.0.1:1/",), tcp=False)
    with pytest.raises(ConfigError, match="--max-flows"):
        ShareConfig(port=53, signal_urls=("ws://127.0.0.1:1/",), udp=True, max_flows=0)
    udp_only = tk.Ticket(ME.node_id, b"s" * 16, 2_000_000_000, "dns", tcp=False, udp=True)
    with pytest.raises(ConfigError, match="carries UDP only; --http needs a TCP share"):
        ConnectConfig(ticket=udp_only, http=True)
    with pytest.raises(ConfigError, match="udp-idle"):
        ConnectConfig(ticket=udp_only, udp_idle=0)
    with pytest.raises(ConfigError, match="wait-for-path"):  # was never checked before
        ConnectConfig(ticket=udp_only, wait_for_path=-1)
