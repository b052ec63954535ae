"""Every parser a remote party can reach, fed mutants of valid input (tests/fuzz/mutate.py).

The bulk of the fuzz suite: seeded, deterministic, a few microseconds a case.
No exception but the parser's own error type may escape, and no parser may
accept what its checks exist to refuse. Structured generation with hypothesis
stays in test_parsers.py and test_http_parser.py.
"""

from __future__ import annotations

import base64
import contextlib
import json
from itertools import count

import pytest
from google_crc32c import value as crc32c

from mesh.errors import MeshError, ProtocolError, TicketError
from mesh.http.policy import head_problem
from mesh.proto import admission, advert, control, sdp, stun
from mesh.proto import frames as sp
from mesh.proto import stream as streamproto
from mesh.proto import ticket as tk
from mesh.proto.envelope import Opener, seal_envelope
from mesh.proto.identity import Identity, seal
from mesh.proto.roster import RosterError, parse_roster, sign_roster
from mesh.proto.sctp import chunks as c
from mesh.proto.sctp.association import ESTABLISHED
from mesh.proto.sctp.channels import DataChannels, Ended
from signaling.policy import RelayPolicy
from signaling.turn import TurnConfig, TurnCore, rest_credentials
from tests.fuzz.conftest import CASES, scaled
from tests.fuzz.mutate import byte_cases, json_cases

ME = Identity.from_seed(b"\x07" * 32)
PEER = Identity.from_seed(b"\x08" * 32)
T = admission.Transcript("s", "c", ("sha-256 AA",), ("sha-256 BB",))
NOW = 1_700_000_000.0


def run(cases: object) -> int:
    n = 0
    for _ in cases:  # type: ignore[attr-defined]
        n += 1
    CASES["n"] += n
    return n


def tickets() -> list[tk.Ticket]:
    return [tk.Ticket(ME.node_id, b"\x01" * 16, int(NOW) + 60),
            tk.Ticket(ME.node_id, b"\x02" * 32, int(NOW) + 60, "hooks",
                      ("ws://127.0.0.1:8765/", "wss://signal.example/"), ("10.0.0.2:4000",))]


def test_ticket_text_and_signed_bodies() -> None:
    texts = [t.encode(ME).encode() for t in tickets()]

    def text_cases() -> object:
        for text in byte_cases(texts, scaled(12_000), 1):
            with contextlib.suppress(TicketError):
                tk.decode(text.decode("latin-1"), now=NOW)
            yield

    def body_cases() -> object:  # re-signed: the structure walk past the signature
        bodies = [tk._pack(t) for t in tickets()]
        for body in byte_cases(bodies, scaled(8_000), 2):
            raw = body + ME.sign(body)
            text = tk.PREFIX + base64.b32encode(raw).decode().rstrip("=").lower()
            with contextlib.suppress(TicketError):
                got = tk.decode(text, now=NOW)
                assert 16 <= len(got.secret) <= 32 and len(got.name) <= tk.MAX_NAME
                assert len(got.signal_urls) <= tk.MAX_REPEAT
            yield

    run(text_cases())
    run(body_cases())


def test_envelopes_from_strangers_and_from_peers() -> None:
    valid = [seal_envelope(PEER, ME.node_id, "offer", "s1", {"sdp": "v=0"}, NOW)]

    def blobs() -> object:
        opener = Opener(ME, frozenset({"offer"}))
        for blob in byte_cases(valid, scaled(4_000), 3):
            with contextlib.suppress(MeshError):
                opener.open(blob, PEER.node_id, NOW)
            yield

    def inner() -> object:  # signed by a real peer and sealed to us: nonsense inside
        seeds = [{"v": 1, "kind": "offer", "from": PEER.node_id, "to": ME.node_id, "ts": NOW,
                  "nonce": "n" * 32, "session": "s", "body": {"sdp": "x"}}]
        for i, text in enumerate(json_cases(seeds, scaled(4_000), 4)):
            data = text.encode()
            with contextlib.suppress(MeshError):
                Opener(ME, frozenset({"offer"})).open(seal(ME.node_id, PEER.sign(data) + data),
                                                      PEER.node_id, NOW + i % 3)
            yield

    run(blobs())
    run(inner())


ROSTER = sign_roster(ME, "hooks", {Identity.from_seed(b"m" * 32).node_id}, 4).encode()


def test_rosters() -> None:
    """A roster is remote input (the tier hands it on): mutated, it parses or is refused,
    and a mutation that still parses is still signed by its owner."""
    parsed = 0
    for text in json_cases([json.loads(ROSTER)], scaled(3_000), 5):
        CASES["n"] += 1
        try:
            got = parse_roster(text)
        except RosterError:
            continue
        parsed += 1
        assert got.owner == ME.node_id and got.name == "hooks"
    assert parsed >= 1  # the seed itself


@pytest.mark.parametrize("side", ["client", "server"])
def test_signaling_frames(side: str) -> None:
    payload = base64.b64encode(b"x" * 40).decode()
    client = [{"type": "register", "node": ME.node_id, "sig": base64.b64encode(b"s" * 64)
               .decode()}, {"type": "send", "to": ME.node_id, "payload": payload, "ref": 3},
              {"type": "ping"}, {"type": "name", "op": "claim", "name": "hooks", "ref": 1},
              {"type": "name", "op": "members", "name": "hooks", "ref": 2, "roster": ROSTER},
              {"type": "gateway", "domain": "x.test", "url": "https://x.test"}]
    server = [{"type": "hello", "version": 1, "nonce": payload},
              {"type": "registered", "node": ME.node_id, "ice_servers": [{"urls": ["stun:x"]}],
               "instance": "i"}, {"type": "deliver", "from": ME.node_id, "payload": payload},
              {"type": "error", "code": "rate-limited", "message": "m", "ref": 2},
              {"type": "pong"}, {"type": "name", "op": "lookup", "name": "hooks",
                                 "owner": ME.node_id, "gateway": {"node": ME.node_id,
                                                                  "domain": "d", "url": "u"},
                                 "ref": 1, "roster": ROSTER, "online": [ME.node_id]}]
    parse = sp.parse_client_frame if side == "client" else sp.parse_server_frame

    def cases() -> object:
        for text in json_cases(client if side == "client" else server, scaled(10_000), 5):
            with contextlib.suppress(sp.FrameError):
                parse(text)
            yield

    run(cases())


def test_stream_control_and_credit() -> None:
    seeds = [{"t": "ok"}, {"t": "credit", "n": 65536}, {"t": "fin"},
             {"t": "error", "reason": "x"}, {"t": "credit", "n": 5, "a": 70000}, {"t": "end"},
             {"t": "resume", "rx": 10, "g": 262144, "fin": False, "ok": True}]

    def cases() -> object:
        for i, text in enumerate(json_cases(seeds, scaled(12_000), 6)):
            flow = streamproto.Flow()
            with contextlib.suppress(ProtocolError):
                msg = streamproto.parse(text)
                if isinstance(msg, streamproto.Credit):
                    flow.granted(msg.n)
                if isinstance(msg, streamproto.Resume):
                    flow.resumed(msg)
                flow.received(i % 300_000)
            yield

    run(cases())


def test_udp_frames() -> None:
    from mesh.proto import datagram as dg

    seeds = [dg.encode_data(1, b"\x12\x34\x01\x00" + b"x" * 40), dg.encode_close(7, dg.REFUSED),
             dg.encode_data(0xFFFFFFFF, b"")]

    def cases() -> object:
        table: dg.FlowTable[int, None] = dg.FlowTable(idle=60, max_flows=64)
        for i, mutant in enumerate(byte_cases(seeds, scaled(8_000), 11)):
            with contextlib.suppress(dg.DatagramError):
                frame = dg.decode(mutant)
                assert frame.flow != 0
                again = (dg.encode_data(frame.flow, frame.payload)
                         if isinstance(frame, dg.Data) else
                         dg.encode_close(frame.flow, frame.reason))
                assert again == mutant  # nothing accepted but exact frames
                if table.by_flow(frame.flow) is None:
                    table.open(frame.flow, None, float(i), frame.flow)
                table.expire(float(i))
                assert len(table) <= 64
            yield

    run(cases())


def test_router_port_mapping_answers() -> None:
    """A router's PCP and NAT-PMP answers are remote input (anyone on the LAN can send
    to the client's port): only PortmapError may come out, in every lease state."""
    import struct
    from functools import partial

    from mesh.proto import portmap as pm

    nonce = bytes(range(12))
    mapped = b"\0" * 10 + b"\xff\xff" + bytes([198, 18, 1, 1])
    seeds = [struct.pack("!BBBBII12x", 2, 0x81, 0, 0, 7200, 9)
             + struct.pack("!12sB3xHH16s", nonce, 17, 5000, 40000, mapped),
             struct.pack("!BBHIHHI", 0, 129, 0, 5, 5000, 40001, 3600),
             struct.pack("!BBHI4s", 0, 128, 0, 5, bytes([198, 18, 1, 1]))]

    def cases() -> object:
        for i, mutant in enumerate(byte_cases(seeds, scaled(6_000), 13)):
            lease = pm.Lease("10.1.0.2", 5000, nonce, now=0.0)
            if i % 2:
                lease.on_timer(0.25)
                lease.on_timer(0.5)  # PCP asked twice, unanswered: now NAT-PMP
                assert lease.protocol == "nat-pmp"
            for decode in (lambda d: pm.pcp_map_response(d, nonce),
                           lambda d: pm.natpmp_map_response(d, 5000),
                           pm.natpmp_address_response, partial(lease.on_datagram, now=0.5)):
                with contextlib.suppress(pm.PortmapError):
                    decode(mutant)
            yield

    run(cases())


def test_control_machines_take_anything_in_every_state() -> None:
    """Admission and liveness messages, as a peer may send them at any point."""
    sharer = admission.SharerAdmission(admission.Keys(b"k" * 16), T, 0.0)
    seeds = [json.loads(sharer.challenge()), {"t": "proof", "mac": "00" * 32, "exp": 3600},
             {"t": "admitted", "mac": "00" * 32}, {"t": "denied", "reason": "no"},
             {"t": "ping", "id": 1, "ts": 5.0}, {"t": "pong", "id": 1, "ts": 5.0}]

    def cases() -> object:
        for i, text in enumerate(json_cases(seeds, scaled(10_000), 7)):
            role = control.Role.SHARER if i % 2 else control.Role.CONNECTOR
            auth = (admission.SharerAdmission(admission.Keys(b"k" * 16), T, 0.0)
                    if role is control.Role.SHARER
                    else admission.ConnectorAdmission(b"k" * 16, T, 3600))
            machine = control.Control(role, auth, 0.0)
            machine.channel_open(0.0)
            machine.receive(text, 1.0)  # never raises: a bad message ends the session
            machine.handle_timer(2.0)
            assert machine.state is not control.State.ADMITTED
            yield

    run(cases())


def test_stun_and_turn_datagrams() -> None:
    user, password = rest_credentials(b"s", "n", NOW)
    key = stun.long_term_key(user, "mesh", password)
    seeds = [
        stun.Message(stun.BINDING, stun.REQUEST, b"t" * 12).encode(fingerprint=True),
        stun.Message(stun.ALLOCATE, stun.REQUEST, b"a" * 12, (
            (stun.REQUESTED_TRANSPORT, b"\x11\x00\x00\x00"), (stun.USERNAME, user.encode()),
            (stun.REALM, b"mesh"), (stun.NONCE, b"n" * 20))).encode(key=key, fingerprint=True),
        stun.Message(stun.SEND, stun.INDICATION, b"s" * 12, (
            (stun.XOR_PEER_ADDRESS, stun.xor_address(("203.0.113.9", 5), b"s" * 12)),
            (stun.DATA_ATTR, b"hello"))).encode(),
        stun.channel_data(0x4001, b"payload", pad=True),
    ]

    def cases() -> object:
        ports = count(40000)
        core = TurnCore(TurnConfig(secret=b"s", relay_ip="198.51.100.1"), RelayPolicy(),
                        lambda: next(ports))
        for raw in byte_cases(seeds, scaled(25_000), 8):
            core.from_client(("udp", ("203.0.113.1", 1)), raw, NOW)
            core.from_peer(40000, ("8.8.8.8", 1), raw, NOW)
            with contextlib.suppress(stun.StunError):
                stun.parse(raw)
            with contextlib.suppress(stun.StunError):
                stun.StreamFramer().feed(raw)
            yield

    run(cases())


def test_mdns_adverts() -> None:
    props = advert.make_properties(ME, "sensor-1", 41877, ["10.0.0.23"], NOW, True)
    keys = list(props)

    def cases() -> object:
        raw = [json.dumps(props).encode()]
        for i, mutant in enumerate(byte_cases(raw, scaled(10_000), 9)):
            try:
                candidate = json.loads(mutant)
            except ValueError:
                candidate = {keys[i % len(keys)]: mutant[:40]}
            if not isinstance(candidate, dict):
                candidate = {"v": candidate}
            wire = {str(k).encode(): (v.encode() if isinstance(v, str) else
                                      v if isinstance(v, bytes) else str(v).encode())
                    for k, v in candidate.items()}
            found = advert.verify_properties(wire)
            if found is not None:  # only a record ME signed can verify
                assert found.node_id == ME.node_id
            yield

    run(cases())


def test_http_heads() -> None:
    heads = [b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
             b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
             b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"]

    def cases() -> object:
        for raw in byte_cases(heads, scaled(10_000), 10):
            problem = head_problem(raw, 512)
            assert problem is None or problem.status in (400, 431)
            yield

    run(cases())


def test_the_mutants_reach_the_checks() -> None:
    """The engine is worth its cases: mutants of a valid ticket body are refused for
    different reasons, not all by the first check."""
    reasons = set()
    body = tk._pack(tickets()[1])
    for mutant in byte_cases([body], 3000, 11):
        raw = mutant + ME.sign(mutant)
        try:
            tk._unpack(raw)
        except TicketError as exc:
            reasons.add(str(exc))
    assert len(reasons) >= 5, reasons


def _sctp_pair() -> tuple[DataChannels, DataChannels]:
    """Two data-channel cores, established, a channel open each way; the same two each
    call (fixed tags and TSNs), so seeds taken from one pair reach a fresh one."""
    a = DataChannels(client=True, now=0.0, window=256 * 1024, max_message=64 * 1024,
                     initial_tsn=1000, tag=0x1111)
    b = DataChannels(client=False, now=0.0, window=256 * 1024, max_message=64 * 1024,
                     initial_tsn=2**32 - 100, tag=0x2222)
    a.start(0.0)
    for _ in range(8):
        for src, dst in ((a, b), (b, a)):
            for packet in src.datagrams_to_send(0.0):
                dst.receive_datagram(packet, 0.0)
            while src.next_event() is not None:
                pass
    assert a.ready and b.ready
    return a, b


def _sctp_seeds(a: DataChannels, b: DataChannels) -> list[bytes]:
    """What ``a`` sends ``b`` in a busy moment, plus every other chunk kind."""
    cid = a.open("fuzz", protocol="p")
    a.open("u", ordered=False, max_retransmits=0)
    a.send(cid, b"m" * 3000)
    a.send(cid, "text")
    a.association.reset_streams([cid])
    seeds = a.datagrams_to_send(0.0)
    tag = b.association.tag
    r = b.association.receiver
    assert r is not None
    more = [
        c.SackChunk(r.cumulative, 1000, [(2, 3), (5, 9)], [r.cumulative]).encode(),
        c.ForwardTsnChunk((r.cumulative + 3) % 2**32, [(0, 1), (2, 0)]).encode(),
        c.ValueChunk(c.HEARTBEAT, 0, b"\x00\x01\x00\x08ping").encode(),
        c.value_chunk(c.RECONFIG, [(c.PARAM_OUTGOING_RESET, bytes(12) + b"\x00\x02")]).encode(),
        c.value_chunk(c.RECONFIG, [(c.PARAM_RECONFIG_RESPONSE, bytes(8))]).encode(),
        c.ShutdownChunk(r.cumulative).encode(),
        c.InitChunk(c.INIT, 7, 1 << 20, 10, 10, 99, [(c.PARAM_FORWARD_TSN_SUPPORTED, b"")]
                    ).encode(),
        c.value_chunk(c.ERROR, [(c.CAUSE_INVALID_STREAM, b"\x00\x01\x00\x00")]).encode(),
        c.ValueChunk(c.COOKIE_ECHO, 0, b"c" * 65).encode(),
        bytes([0xC5, 0, 0, 8, 1, 2, 3, 4]),
    ]
    seeds += [c.serialize_packet(5000, 5000, tag, [chunk]) for chunk in more]
    return seeds


def _rechecksum(packet: bytes) -> bytes:
    """A mutant with its CRC32c made valid again, so it reaches the chunk parser."""
    if len(packet) < 12:
        return packet
    body = packet[:8] + b"\x00\x00\x00\x00" + packet[12:]
    return packet[:8] + crc32c(body).to_bytes(4, "little") + packet[12:]


def test_sctp_packets() -> None:
    a, b = _sctp_pair()
    seeds = _sctp_seeds(a, b)

    def cases() -> object:
        for raw in byte_cases(seeds, scaled(20_000), 12):
            with contextlib.suppress(c.ParseError):
                c.parse_packet(_rechecksum(raw))
            yield

    run(cases())


def test_sctp_association_takes_anything_a_peer_sends() -> None:
    """Mutants reach an established association: it must not raise, must answer a
    protocol breach with ABORT, and its held data stays within the window."""
    seeds = _sctp_seeds(*_sctp_pair())
    aborted = {"n": 0}

    def cases() -> object:
        b = _sctp_pair()[1]
        now = 0.0
        for raw in byte_cases(seeds, scaled(20_000), 13):
            now += 0.001
            b.receive_datagram(_rechecksum(raw), now)
            b.handle_timer(now)
            b.datagrams_to_send(now)
            while (event := b.next_event()) is not None:
                if isinstance(event, Ended):
                    aborted["n"] += 1
            receiver = b.association.receiver
            assert receiver is None or receiver.held_bytes <= 256 * 1024 + 64 * 1024
            if b.association.state != ESTABLISHED:
                b = _sctp_pair()[1]
            yield

    run(cases())
    assert aborted["n"] > 100  # breaches were seen and answered


def test_session_descriptions() -> None:
    from tests.unit.test_sdp import CHROME_OFFER, desc

    seeds = [sdp.build(desc()).encode(), CHROME_OFFER.encode()]

    def cases() -> object:
        for raw in byte_cases(seeds, scaled(10_000), 14):
            with contextlib.suppress(sdp.SdpError):
                got = sdp.parse(raw.decode("utf-8", "replace"))
                assert got.fingerprints and len(got.candidates) <= sdp.MAX_CANDIDATES
            yield

    run(cases())
