"""Router port mapping, sans-I/O (mesh/proto/portmap.py): the PCP and NAT-PMP codecs
against byte layouts written out from the RFCs, and the lease on a fake clock."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.proto import portmap as pm

NONCE = bytes(range(12))


def pcp_answer(result: int = 0, lifetime: int = 7200, port: int = 40000,
               ip: str = "198.18.1.1", nonce: bytes = NONCE, options: bytes = b"") -> bytes:
    head = struct.pack("!BBBBII12x", 2, 0x81, 0, result, lifetime, 99)
    mapped = ipaddress_16(ip)
    return head + struct.pack("!12sB3xHH16s", nonce, 17, 5000, port, mapped) + options


def ipaddress_16(ip: str) -> bytes:
    import ipaddress

    return ipaddress.IPv6Address(f"::ffff:{ip}").packed


def test_a_pcp_map_request_is_laid_out_as_rfc_6887_says() -> None:
    req = pm.pcp_map_request("10.1.0.2", 5000, 7200, NONCE)
    assert len(req) == 60
    assert req[:4] == bytes([2, 1, 0, 0]) and struct.unpack("!I", req[4:8])[0] == 7200
    assert req[8:24] == ipaddress_16("10.1.0.2")
    assert req[24:36] == NONCE and req[36] == 17 and req[37:40] == b"\0\0\0"
    assert struct.unpack("!HH", req[40:44]) == (5000, 0)
    assert req[44:60] == ipaddress_16("0.0.0.0")
    with pytest.raises(ValueError):
        pm.pcp_map_request("10.1.0.2", 5000, 7200, b"short")


def test_a_pcp_answer_is_ours_only_with_our_nonce() -> None:
    got = pm.pcp_map_response(pcp_answer(options=b"\x01\x00\x00\x04abcd"), NONCE)
    assert (got.ok, got.external_port, got.external_ip, got.lifetime) == (
        True, 40000, "198.18.1.1", 7200)
    with pytest.raises(pm.PortmapError, match="nonce"):
        pm.pcp_map_response(pcp_answer(nonce=b"x" * 12), NONCE)  # spoofed or stale
    refused = pm.pcp_map_response(pcp_answer(result=8), NONCE)
    assert not refused.ok and refused.reason == "no resources"


@pytest.mark.parametrize("data, message", [
    (b"", "0-byte"), (pcp_answer()[:59], "59-byte"), (pcp_answer() + b"\0\0", "62-byte"),
    (b"\x03" + pcp_answer()[1:], "version 3"), (b"\x00" + pcp_answer()[1:], "NAT-PMP"),
    (pcp_answer()[:1] + b"\x82" + pcp_answer()[2:], "not a MAP response"),
    (pcp_answer(options=b"\x01\x00\x00\x08abcd"), "truncated"),
])
def test_malformed_pcp_answers_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(pm.PortmapError, match=message):
        pm.pcp_map_response(data, NONCE)


def test_nat_pmp_requests_and_answers() -> None:
    assert pm.natpmp_address_request() == b"\x00\x00"
    assert pm.natpmp_map_request(5000, 7200) == struct.pack("!BBHHHI", 0, 1, 0, 5000, 0, 7200)
    answer = struct.pack("!BBHIHHI", 0, 129, 0, 5, 5000, 40001, 3600)
    got = pm.natpmp_map_response(answer, 5000)
    assert (got.protocol, got.external_port, got.lifetime) == ("nat-pmp", 40001, 3600)
    with pytest.raises(pm.PortmapError, match="for port 5000, not 6000"):
        pm.natpmp_map_response(answer, 6000)
    with pytest.raises(pm.PortmapError):
        pm.natpmp_map_response(answer[:-1], 5000)
    address = struct.pack("!BBHI4s", 0, 128, 0, 5, bytes([198, 18, 1, 1]))
    assert pm.natpmp_address_response(address) == (0, "198.18.1.1")


def test_the_lease_asks_pcp_then_nat_pmp_and_gives_up_quickly() -> None:
    lease = pm.Lease("10.1.0.2", 5000, NONCE, now=0.0)
    sent = [c for c in lease.commands() if isinstance(c, pm.Send)]
    assert len(sent) == 1 and sent[0].data[0] == 2  # PCP first
    now = 0.0
    while not lease.done:
        timer = lease.timer()
        assert timer is not None
        now = timer
        lease.on_timer(now)
    cmds = lease.commands()
    assert [c.data[0] for c in cmds if isinstance(c, pm.Send)] == [2, 0, 0]
    assert isinstance(cmds[-1], pm.Unavailable)
    assert now <= 2 * pm.Lease.TRIES * pm.Lease.WAIT  # a dead router costs at most this


def test_the_lease_refreshes_at_half_life_and_releases() -> None:
    lease = pm.Lease("10.1.0.2", 5000, NONCE, now=0.0)
    lease.commands()
    lease.on_datagram(pcp_answer(lifetime=100), now=0.1)
    (granted,) = lease.commands()
    assert isinstance(granted, pm.Granted) and granted.mapping.external_port == 40000
    assert lease.timer() == pytest.approx(50.1)
    lease.on_timer(50.1)
    (refresh,) = lease.commands()
    assert isinstance(refresh, pm.Send)
    lease.on_datagram(pcp_answer(lifetime=100), now=50.2)
    assert lease.timer() == pytest.approx(100.2)
    lease.commands()
    release = lease.release()
    assert release is not None and struct.unpack("!I", release[4:8])[0] == 0


def test_a_router_that_stops_answering_lets_the_mapping_expire() -> None:
    lease = pm.Lease("10.1.0.2", 5000, NONCE, now=0.0)
    lease.commands()
    lease.on_datagram(pcp_answer(lifetime=100), now=0.0)
    lease.commands()
    now = 0.0
    while not lease.done:
        timer = lease.timer()
        assert timer is not None and timer > now - 1e-9
        now = timer
        lease.on_timer(now)
    assert now == pytest.approx(100.0) and lease.mapping is None
    assert isinstance(lease.commands()[-1], pm.Unavailable)


def test_a_nat_pmp_router_answering_pcp_moves_the_lease_to_nat_pmp() -> None:
    lease = pm.Lease("10.1.0.2", 5000, NONCE, now=0.0)
    lease.commands()
    lease.on_datagram(struct.pack("!BBHI", 0, 129, 1, 0), now=0.05)  # unsupported version
    (ask,) = lease.commands()
    assert isinstance(ask, pm.Send) and ask.data[:2] == b"\x00\x01"
    lease.on_datagram(struct.pack("!BBHIHHI", 0, 129, 0, 5, 5000, 40001, 3600), now=0.1)
    (granted,) = lease.commands()
    assert isinstance(granted, pm.Granted) and granted.mapping.protocol == "nat-pmp"


ROUTES = """Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t0000010A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
eth0\t00000000\t0100010A\t0003\t0\t0\t0\t00000000\t0\t0\t0
"""


def test_the_default_gateway_is_read_from_the_route_table() -> None:
    assert pm.default_gateway(ROUTES) == "10.1.0.1"
    no_default = ROUTES.splitlines()[0] + "\n" + ROUTES.splitlines()[1]
    assert pm.default_gateway(no_default) is None
    # a default route without the gateway flag (a point-to-point link) is no gateway
    assert pm.default_gateway(ROUTES.replace("\t0003\t", "\t0001\t")) is None
    assert pm.default_gateway("") is None
    assert pm.default_gateway(ROUTES.replace("0100010A", "zzzz")) is None


def test_a_lease_asks_for_the_lifetime_it_was_given() -> None:
    lease = pm.Lease("10.1.0.2", 5000, NONCE, now=0.0, lifetime=600)
    [send] = lease.commands()
    assert isinstance(send, pm.Send) and struct.unpack("!I", send.data[4:8])[0] == 600
    lease.on_datagram(pcp_answer(lifetime=600), now=0.01)
    assert isinstance(lease.commands()[0], pm.Granted)
    assert lease.timer() == pytest.approx(300.01)  # refreshed at half its lifetime


@pytest.mark.parametrize(("sender", "location", "taken"), [
    ("10.1.0.1", "http://10.1.0.1:5000/rootDesc.xml", True),
    ("10.1.0.9", "http://10.1.0.1:5000/rootDesc.xml", False),  # not from the gateway
    ("10.1.0.1", "http://10.1.0.7:5000/rootDesc.xml", False),  # points elsewhere
    ("10.1.0.1", "http://example.com/rootDesc.xml", False),
    ("10.1.0.1", "https://10.1.0.1/x", False),
    ("10.1.0.1", "file:///etc/passwd", False),
    ("10.1.0.1", "http://[::1/", False),
    ("10.1.0.1", "", False),
    (None, "http://10.1.0.1:5000/", False),
])
def test_only_the_gateways_own_ssdp_answer_is_taken(sender: str | None, location: str,
                                                    taken: bool) -> None:
    from mesh.transport.upnp import accept_location

    assert (accept_location("10.1.0.1", sender, location) is not None) is taken


def test_a_lease_limited_to_pcp_gives_up_instead_of_falling_back() -> None:
    lease = pm.Lease("10.1.0.2", 5000, NONCE, now=0.0, protocols=("pcp",))
    lease.commands()
    lease.on_datagram(struct.pack("!BBHI", 0, 0x81, 1, 5), now=0.01)  # a NAT-PMP router
    [gone] = lease.commands()
    assert isinstance(gone, pm.Unavailable) and "NAT-PMP, not PCP" in gone.reason
    only = pm.Lease("10.1.0.2", 5000, NONCE, now=0.0, protocols=("nat-pmp",))
    [ask] = only.commands()
    assert isinstance(ask, pm.Send) and ask.data[:2] == b"\0\1"
    for t in (0.3, 0.6):
        only.on_timer(t)
    assert isinstance(only.commands()[-1], pm.Unavailable)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.none(), st.sampled_from(["10.1.0.1", "10.1.0.2"]), st.text(max_size=20)),
       st.one_of(st.none(), st.text(max_size=80),
                 st.builds(lambda host, rest: f"http://{host}{rest}",
                           st.sampled_from(["10.1.0.1", "10.1.0.1:80", "[::ffff:10.1.0.1]",
                                            "10.1.0.1@evil", "evil@10.1.0.1", "0x0a010001"]),
                           st.text(max_size=30))))
def test_any_ssdp_answer_is_taken_only_from_and_for_the_gateway(sender: str | None,
                                                                location: str | None) -> None:
    """An SSDP answer is anyone's to send: whatever it holds, no exception, and a taken
    LOCATION is an http URL whose host is the gateway's address."""
    from urllib.parse import urlsplit

    from mesh.transport.upnp import accept_location

    taken = accept_location("10.1.0.1", sender, location)
    if taken is not None:
        assert sender == "10.1.0.1" and urlsplit(taken).scheme == "http"
        assert urlsplit(taken).hostname == "10.1.0.1"
