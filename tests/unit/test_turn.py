"""The TURN core without sockets: every error code, quotas, relaying, expiry."""

from __future__ import annotations

import secrets
import struct
from itertools import count

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.proto import stun as s
from signaling.policy import RelayPolicy
from signaling.turn import Release, ToClient, ToPeer, TurnConfig, TurnCore, rest_credentials

SECRET = b"lab-secret"
NOW = 1_800_000_000.0
CLIENT = ("udp", ("203.0.113.5", 5000))
PEER = ("8.8.8.8", 4000)


def make(**kw: int) -> TurnCore:
    ports = count(50000)
    return TurnCore(TurnConfig(secret=SECRET, relay_ip="198.51.100.1", **kw), RelayPolicy(),
                    lambda: next(ports))


class Client:
    def __init__(self, core: TurnCore, client: tuple[str, tuple[str, int]] = CLIENT,
                 node: str = "n1", now: float = NOW) -> None:
        self.core, self.client, self.now = core, client, now
        self.user, self.password = rest_credentials(SECRET, node, now)
        self.nonce = b""

    def key(self) -> bytes:
        return s.long_term_key(self.user, "mesh", self.password)

    def request(self, method: int, *attrs: tuple[int, bytes], auth: bool = True,
                key: bytes | None = None, txid: bytes | None = None) -> s.Message:
        txid = txid or secrets.token_bytes(12)
        msg = s.Message(method, s.REQUEST, txid, tuple(attrs))
        if auth:
            msg = msg.with_attrs((s.USERNAME, self.user.encode()), (s.REALM, b"mesh"),
                                 (s.NONCE, self.nonce))
        raw = msg.encode(key=(key or self.key()) if auth else None, fingerprint=True)
        out = self.core.from_client(self.client, raw, self.now)
        replies = [o for o in out if isinstance(o, ToClient)]
        assert len(replies) == 1
        reply = s.parse(replies[0].data)
        nonce = reply.get(s.NONCE)
        if nonce:
            self.nonce = nonce
        return reply

    def code(self, reply: s.Message) -> int | None:
        raw = reply.get(s.ERROR_CODE)
        return s.parse_error_code(raw)[0] if raw else None

    def allocate(self) -> s.Message:
        self.request(s.ALLOCATE, (s.REQUESTED_TRANSPORT, b"\x11\x00\x00\x00"), auth=False)
        return self.request(s.ALLOCATE, (s.REQUESTED_TRANSPORT, b"\x11\x00\x00\x00"))

    def peer_attr(self, addr: tuple[str, int], txid: bytes) -> tuple[int, bytes]:
        return (s.XOR_PEER_ADDRESS, s.xor_address(addr, txid))


def test_binding_returns_reflexive_address() -> None:
    core = make()
    raw = s.Message(s.BINDING, s.REQUEST, b"t" * 12).encode(fingerprint=True)
    (out,) = core.from_client(CLIENT, raw, NOW)
    assert isinstance(out, ToClient)
    msg = s.parse(out.data)
    value = msg.get(s.XOR_MAPPED_ADDRESS)
    assert value and s.parse_xor_address(value, msg.txid) == CLIENT[1]


def test_401_without_credentials_then_allocation() -> None:
    c = Client(make())
    first = c.request(s.ALLOCATE, (s.REQUESTED_TRANSPORT, b"\x11\x00\x00\x00"), auth=False)
    assert c.code(first) == 401 and first.get(s.REALM) == b"mesh" and first.get(s.NONCE)
    ok = c.request(s.ALLOCATE, (s.REQUESTED_TRANSPORT, b"\x11\x00\x00\x00"))
    assert ok.cls == s.SUCCESS
    relayed = ok.get(s.XOR_RELAYED_ADDRESS)
    assert relayed and s.parse_xor_address(relayed, ok.txid) == ("198.51.100.1", 50000)


def test_401_wrong_password_and_expired_username() -> None:
    c = Client(make())
    c.request(s.ALLOCATE, auth=False)
    wrong = c.request(s.ALLOCATE, (s.REQUESTED_TRANSPORT, b"\x11\x00\x00\x00"),
                      key=s.long_term_key(c.user, "mesh", "guess"))
    assert c.code(wrong) == 401
    old = Client(c.core, now=NOW)
    old.user, old.password = rest_credentials(SECRET, "n1", NOW - 2 * 86400)
    old.request(s.ALLOCATE, auth=False)
    assert old.code(old.request(s.ALLOCATE, (s.REQUESTED_TRANSPORT, b"\x11\x00\x00\x00"))) == 401


def test_438_stale_nonce() -> None:
    core = make()
    c = Client(core)
    c.request(s.ALLOCATE, auth=False)
    c.now = NOW + 3600  # the nonce is an hour old now
    stale = c.request(s.ALLOCATE, (s.REQUESTED_TRANSPORT, b"\x11\x00\x00\x00"))
    assert c.code(stale) == 438 and stale.get(s.NONCE) != b""
    assert c.request(s.ALLOCATE, (s.REQUESTED_TRANSPORT, b"\x11\x00\x00\x00")).cls == s.SUCCESS


def test_437_442_400_420() -> None:
    c = Client(make())
    c.request(s.ALLOCATE, auth=False)
    assert c.code(c.request(s.ALLOCATE, (s.REQUESTED_TRANSPORT, b"\x06\x00\x00\x00"))) == 442
    assert c.code(c.request(s.ALLOCATE)) == 400
    assert c.code(c.request(s.REFRESH)) == 437  # no allocation yet
    assert c.code(c.request(s.ALLOCATE, (0x0042, b"????"))) == 420
    assert c.allocate().cls == s.SUCCESS
    assert c.code(c.request(s.ALLOCATE, (s.REQUESTED_TRANSPORT, b"\x11\x00\x00\x00"))) == 437


def test_486_quota_per_user_and_total() -> None:
    core = make(max_allocations_per_user=2, max_allocations=3)
    for port in (1, 2):
        assert Client(core, ("udp", ("203.0.113.5", port)), "n1").allocate().cls == s.SUCCESS
    third = Client(core, ("udp", ("203.0.113.5", 3)), "n1")
    assert third.code(third.allocate()) == 486
    assert Client(core, ("udp", ("203.0.113.6", 1)), "n2").allocate().cls == s.SUCCESS
    other = Client(core, ("udp", ("203.0.113.7", 1)), "n3")
    assert other.code(other.allocate()) == 486


DENIED = ["127.0.0.1", "10.0.0.5", "192.168.1.1", "172.16.0.1", "100.64.0.1",
          "169.254.169.254", "224.0.0.251", "0.0.0.0", "198.18.0.1", "::1", "fd00::1",
          "fe80::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "2002:7f00:1::1",
          "64:ff9b::a9fe:a9fe", "::127.0.0.1"]


@pytest.mark.parametrize("denied", DENIED)
def test_403_denied_peers_and_allowed_peer_relays(denied: str) -> None:
    core = make()
    c = Client(core)
    c.allocate()
    tx = secrets.token_bytes(12)
    reply = c.request(s.CREATE_PERMISSION, c.peer_attr((denied, 80), tx), txid=tx)
    assert c.code(reply) == 403
    tx = secrets.token_bytes(12)
    reply = c.request(s.CHANNEL_BIND, (s.CHANNEL_NUMBER, b"\x40\x00\x00\x00"),
                      c.peer_attr((denied, 80), tx), txid=tx)
    assert c.code(reply) == 403
    # a Send indication to the denied peer is dropped silently
    ind = s.Message(s.SEND, s.INDICATION, tx, (c.peer_attr((denied, 80), tx),
                                               (s.DATA_ATTR, b"x"))).encode()
    assert core.from_client(CLIENT, ind, NOW) == []
    # and an allowed public peer still relays
    tx = secrets.token_bytes(12)
    assert c.request(s.CREATE_PERMISSION, c.peer_attr(PEER, tx), txid=tx).cls == s.SUCCESS
    ind = s.Message(s.SEND, s.INDICATION, tx, (c.peer_attr(PEER, tx),
                                               (s.DATA_ATTR, b"hello"))).encode()
    assert core.from_client(CLIENT, ind, NOW) == [ToPeer(50000, PEER, b"hello")]


def test_relay_both_ways_with_channels_and_permissions() -> None:
    core = make()
    c = Client(core)
    c.allocate()
    # without a permission, nothing from the peer reaches the client
    assert core.from_peer(50000, PEER, b"early", NOW) == []
    tx = secrets.token_bytes(12)
    ok = c.request(s.CHANNEL_BIND, (s.CHANNEL_NUMBER, b"\x40\x01\x00\x00"),
                   c.peer_attr(PEER, tx), txid=tx)
    assert ok.cls == s.SUCCESS
    assert core.from_client(CLIENT, s.channel_data(0x4001, b"up"), NOW) == [
        ToPeer(50000, PEER, b"up")]
    (down,) = core.from_peer(50000, PEER, b"down", NOW)
    assert isinstance(down, ToClient) and s.parse_channel_data(down.data) == (0x4001, b"down")
    # another port of the same IP: permission covers it, no channel: Data indication
    (ind,) = core.from_peer(50000, ("8.8.8.8", 9), b"d2", NOW)
    assert isinstance(ind, ToClient)
    msg = s.parse(ind.data)
    assert (msg.method, msg.cls, msg.get(s.DATA_ATTR)) == (s.DATA, s.INDICATION, b"d2")
    # binding the same channel to another peer is refused
    tx = secrets.token_bytes(12)
    assert c.code(c.request(s.CHANNEL_BIND, (s.CHANNEL_NUMBER, b"\x40\x01\x00\x00"),
                            c.peer_attr(("1.1.1.1", 1), tx), txid=tx)) == 400
    # a stranger is filtered
    assert core.from_peer(50000, ("9.9.9.9", 1), b"x", NOW) == []


def test_refresh_zero_releases_and_expiry() -> None:
    core = make()
    c = Client(core)
    c.allocate()
    assert c.request(s.REFRESH, (s.LIFETIME, s.u32(0))).cls == s.SUCCESS
    assert core.allocations == {}
    c2 = Client(core, ("udp", ("203.0.113.9", 1)))
    c2.allocate()
    assert core.expire(NOW + 10) == []
    assert core.expire(NOW + 601) == [Release(50001)]


def test_bandwidth_quota_drops_excess() -> None:
    core = make(bandwidth=1000)
    c = Client(core)
    c.allocate()
    tx = secrets.token_bytes(12)
    c.request(s.CREATE_PERMISSION, c.peer_attr(PEER, tx), txid=tx)
    sent = 0
    for _ in range(10):
        ind = s.Message(s.SEND, s.INDICATION, tx, (c.peer_attr(PEER, tx),
                                                   (s.DATA_ATTR, b"x" * 300))).encode()
        sent += len(core.from_client(CLIENT, ind, NOW))
    assert sent == 3  # 1000 bytes/s burst


def test_tcp_clients_get_padded_channel_data_and_release_on_close() -> None:
    core = make()
    tcp = ("tcp:1", ("203.0.113.5", 40000))
    c = Client(core, tcp)
    c.allocate()
    tx = secrets.token_bytes(12)
    c.request(s.CHANNEL_BIND, (s.CHANNEL_NUMBER, b"\x40\x00\x00\x00"), c.peer_attr(PEER, tx),
              txid=tx)
    (down,) = core.from_peer(50000, PEER, b"abc", NOW)
    assert isinstance(down, ToClient) and len(down.data) == 8
    assert core.client_gone(tcp) == [Release(50000)]


@given(st.binary(max_size=200))
@settings(max_examples=2000)
def test_fuzz_client_input(raw: bytes) -> None:
    core = make()
    core.from_client(CLIENT, raw, NOW)
    core.from_client(CLIENT, struct.pack("!HHI", 3, len(raw) // 4 * 4, s.MAGIC) + b"t" * 12
                     + raw[: len(raw) // 4 * 4], NOW)


@given(st.lists(st.tuples(st.integers(0, 0x802F), st.binary(max_size=24)), max_size=8),
       st.sampled_from([s.ALLOCATE, s.REFRESH, s.CREATE_PERMISSION, s.CHANNEL_BIND, s.SEND,
                        s.BINDING, 0x00A]),
       st.sampled_from([s.REQUEST, s.INDICATION]))
@settings(max_examples=2000)
def test_fuzz_authenticated_structured_requests(attrs: list[tuple[int, bytes]], method: int,
                                                cls: int) -> None:
    core = make()
    c = Client(core)
    c.allocate()
    msg = s.Message(method, cls, secrets.token_bytes(12), tuple(attrs)).with_attrs(
        (s.USERNAME, c.user.encode()), (s.REALM, b"mesh"), (s.NONCE, c.nonce))
    core.from_client(CLIENT, msg.encode(key=c.key()), NOW)


@pytest.mark.parametrize("expiry", ["²", "5²", "\u0663" * 10, "\uff19" * 10])
def test_a_username_whose_expiry_is_not_ascii_digits_gets_401(expiry: str) -> None:
    c = Client(make())
    c.request(s.ALLOCATE, auth=False)
    c.user = f"{expiry}:x"
    reply = c.request(s.ALLOCATE, (s.REQUESTED_TRANSPORT, b"\x11\x00\x00\x00"))
    assert c.code(reply) == 401


def test_one_node_cannot_take_every_allocation_whatever_its_usernames_say() -> None:
    """Each registration hands out a REST username with a new expiry: the quota counts
    the node behind them (and the address they come from), not the username."""
    core = make(max_allocations_per_user=2, max_allocations=30)
    for i in range(2):
        c = Client(core, ("udp", ("203.0.113.5", 100 + i)), "greedy", now=NOW + i)
        assert c.allocate().cls == s.SUCCESS
    for i in range(2, 6):  # fresh usernames (other expiries), same node
        c = Client(core, ("udp", ("203.0.113.5", 100 + i)), "greedy", now=NOW + i)
        assert c.user.partition(":")[2] == "greedy" and c.code(c.allocate()) == 486
    legit = Client(core, ("udp", ("203.0.113.9", 1)), "legit")
    assert legit.allocate().cls == s.SUCCESS


def test_one_address_cannot_take_every_allocation_with_throwaway_nodes() -> None:
    core = make(max_allocations_per_address=3, max_allocations=30)
    for i in range(3):
        assert Client(core, ("udp", ("203.0.113.5", i)), f"throwaway{i}").allocate().cls == (
            s.SUCCESS)
    late = Client(core, ("udp", ("203.0.113.5", 9)), "throwaway9")
    assert late.code(late.allocate()) == 486
    assert Client(core, ("udp", ("203.0.113.6", 1)), "legit").allocate().cls == s.SUCCESS


OWN = "8.8.4.4"


def own_core(allow: tuple[str, ...] = ()) -> TurnCore:
    ports = count(50000)
    core = TurnCore(TurnConfig(secret=SECRET, relay_ip=OWN), RelayPolicy(allow, own=(OWN,)),
                    lambda: next(ports))
    core.service_ports = {3478, 3479}
    return core


@pytest.mark.parametrize("own", [OWN, "::ffff:8.8.4.4", "64:ff9b::808:404"])
def test_the_relay_never_reaches_services_on_its_own_host(own: str) -> None:
    """RFC 8656 section 21: a service bound on the relay's host is not a peer, in any
    disguise, unless the operator opened the address with --relay-allow."""
    core = own_core()
    c = Client(core)
    c.allocate()
    tx = secrets.token_bytes(12)
    reply = c.request(s.CHANNEL_BIND, (s.CHANNEL_NUMBER, b"\x40\x00\x00\x00"),
                      c.peer_attr((own, 9999), tx), txid=tx)
    assert c.code(reply) == 403
    tx = secrets.token_bytes(12)  # a permission is per IP: granted, each datagram checked
    assert c.request(s.CREATE_PERMISSION, c.peer_attr((own, 1), tx), txid=tx).cls == s.SUCCESS
    ind = s.Message(s.SEND, s.INDICATION, tx, (c.peer_attr((own, 9999), tx),
                                               (s.DATA_ATTR, b"x"))).encode()
    assert core.from_client(CLIENT, ind, NOW) == []
    assert core.from_peer(50000, (own, 9999), b"x", NOW) == []


def test_the_servers_own_ports_are_never_peers_but_other_allocations_are() -> None:
    """Even where --relay-allow opens the host (a lab, a sharer beside the server), its
    STUN/TURN ports are never reached (no TURN inside TURN); another allocation's
    relayed address is a peer, as when both ends of a connection are relayed."""
    for allow in ((), ("8.8.4.0/24",)):
        core = own_core(allow=allow)
        c = Client(core)
        c.allocate()  # relay port 50000
        other = Client(core, ("udp", ("203.0.113.77", 1)), "n2")
        other.allocate()  # relay port 50001
        for port in (3478, 3479):
            tx = secrets.token_bytes(12)
            reply = c.request(s.CHANNEL_BIND, (s.CHANNEL_NUMBER, b"\x40\x00\x00\x00"),
                              c.peer_attr((OWN, port), tx), txid=tx)
            assert c.code(reply) == 403, (allow, port)
            ind = s.Message(s.SEND, s.INDICATION, tx, (c.peer_attr((OWN, port), tx),
                                                       (s.DATA_ATTR, b"loop"))).encode()
            assert core.from_client(CLIENT, ind, NOW) == []
            assert core.from_peer(50000, (OWN, port), b"loop", NOW) == []
        tx = secrets.token_bytes(12)
        assert c.request(s.CHANNEL_BIND, (s.CHANNEL_NUMBER, b"\x40\x00\x00\x00"),
                         c.peer_attr((OWN, 50001), tx), txid=tx).cls == s.SUCCESS
        assert core.from_client(CLIENT, s.channel_data(0x4000, b"relay to relay"), NOW) == [
            ToPeer(50000, (OWN, 50001), b"relay to relay")]
        tx = secrets.token_bytes(12)
        ind = s.Message(s.SEND, s.INDICATION, tx, (c.peer_attr((OWN, 8080), tx),
                                                   (s.DATA_ATTR, b"svc"))).encode()
        want = [ToPeer(50000, (OWN, 8080), b"svc")] if allow else []
        assert core.from_client(CLIENT, ind, NOW) == want
