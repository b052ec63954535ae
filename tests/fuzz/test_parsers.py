"""Every parser a remote party can reach, fed generated input (hypothesis).

No exception but the parser's own error type may escape. Case counts add up to
more than 100,000 per run (``MESH_FUZZ_SCALE`` scales them); the total is
printed at the end of the run and checked by the last test of this module.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import struct
from itertools import count

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh.errors import (
    AdmissionDenied,
    EnvelopeError,
    HandshakeError,
    ProtocolError,
    TicketError,
)
from mesh.proto import admission, stun
from mesh.proto import frames as sp
from mesh.proto import stream as streamproto
from mesh.proto import ticket as tk
from mesh.proto.envelope import Opener
from mesh.proto.identity import Identity, seal
from signaling.policy import RelayPolicy
from signaling.turn import TurnConfig, TurnCore, rest_credentials
from tests.fuzz.conftest import CASES, MIN_TOTAL, scaled


def fuzz(n: int) -> settings:
    return settings(max_examples=scaled(n), deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])
ME = Identity.from_seed(b"\x07" * 32)
PEER = Identity.from_seed(b"\x08" * 32)
T = admission.Transcript("s", "c", ("sha-256 AA",), ("sha-256 BB",))

flat = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
json_values = flat | st.lists(flat, max_size=3) | st.dictionaries(st.text(max_size=6), flat,
                                                                  max_size=3)


def frames_like(keys: list[str], kinds: list[str]) -> st.SearchStrategy[str]:
    values = st.one_of(json_values, st.sampled_from(kinds + [ME.node_id, "AAAA", ""]))
    return st.dictionaries(st.sampled_from(keys), values, max_size=6).map(json.dumps)


@fuzz(22_000)
@given(st.text(max_size=400) | st.builds(lambda b: "mesh1" + b, st.text(
    alphabet="abcdefghijklmnopqrstuvwxyz234567", max_size=400)))
def test_ticket(text: str) -> None:
    CASES["n"] += 1
    with contextlib.suppress(TicketError):
        tk.decode(text, now=1.0)


@fuzz(12_000)
@given(st.binary(max_size=600))
def test_envelope_garbage(blob: bytes) -> None:
    CASES["n"] += 1
    with contextlib.suppress(EnvelopeError):
        Opener(ME, frozenset({"offer"})).open(blob, PEER.node_id, 1e9)


@fuzz(6_000)
@given(frames_like(["v", "kind", "from", "to", "ts", "nonce", "session", "body"],
                   ["offer", "answer", "bye"]) | st.binary(max_size=200).map(repr))
def test_envelope_signed_nonsense(inner_text: str) -> None:
    """A real peer (valid signature, sealed to us) sending nonsense inside."""
    CASES["n"] += 1
    inner = inner_text.encode()
    with contextlib.suppress(EnvelopeError):
        Opener(ME, frozenset({"offer"})).open(seal(ME.node_id, PEER.sign(inner) + inner),
                                              PEER.node_id, 1e9)


@fuzz(12_000)
@given(st.text(max_size=300) | frames_like(
    ["type", "node", "sig", "to", "payload", "ref", "op", "name", "domain", "url"],
    ["register", "send", "ping", "name", "gateway", "claim", "release", "lookup", "hooks"]))
def test_signaling_client_frames(text: str) -> None:
    CASES["n"] += 1
    with contextlib.suppress(sp.FrameError):
        sp.parse_client_frame(text)


@fuzz(8_000)
@given(st.text(max_size=300) | frames_like(
    ["type", "nonce", "version", "node", "ice_servers", "from", "payload", "code", "message",
     "ref", "instance", "op", "name", "owner", "gateway"],
    ["hello", "registered", "deliver", "error", "pong", "name", "claim", "lookup", "hooks"]))
def test_signaling_server_frames(text: str) -> None:
    CASES["n"] += 1
    with contextlib.suppress(sp.FrameError):
        sp.parse_server_frame(text)


@fuzz(12_000)
@given(st.text(max_size=200) | frames_like(["t", "n", "reason"], ["ok", "credit", "fin",
                                                                 "error"]),
       st.lists(st.integers(-10, 300_000), max_size=5))
def test_stream_control_and_flow(text: str, sizes: list[int]) -> None:
    CASES["n"] += 1
    flow = streamproto.Flow()
    with contextlib.suppress(ProtocolError):
        msg = streamproto.parse(text)
        if isinstance(msg, streamproto.Credit):
            flow.granted(msg.n)
        for n in sizes:
            flow.received(max(0, n))
            flow.consumed(max(0, n))


@fuzz(8_000)
@given(st.text(max_size=200) | frames_like(["t", "mac", "nonce", "reason", "id", "ts"],
                                           ["challenge", "proof", "admitted", "denied",
                                            "ping", "pong"]))
def test_admission_messages(text: str) -> None:
    CASES["n"] += 1
    with contextlib.suppress(ProtocolError, AdmissionDenied, HandshakeError):
        obj = admission.parse(text)
        sharer = admission.SharerAdmission(b"k" * 16, T)
        sharer.challenge()
        with contextlib.suppress(ProtocolError):
            sharer.receive(obj)
        admission.ConnectorAdmission(b"k" * 16, T).receive(obj)


@fuzz(22_000)
@given(st.binary(max_size=300))
def test_stun_and_turn_datagrams(raw: bytes) -> None:
    CASES["n"] += 1
    ports = count(40000)
    core = TurnCore(TurnConfig(secret=b"s", relay_ip="198.51.100.1"), RelayPolicy(),
                    lambda: next(ports))
    core.from_client(("udp", ("203.0.113.1", 1)), raw, 1e9)
    core.from_peer(40000, ("8.8.8.8", 1), raw, 1e9)
    with contextlib.suppress(stun.StunError):
        stun.StreamFramer().feed(raw)
    # the same bytes behind a valid header, so the attribute walk is exercised
    body = raw[: len(raw) // 4 * 4]
    core.from_client(("udp", ("203.0.113.1", 1)),
                     struct.pack("!HHI", 0x0003, len(body), stun.MAGIC) + b"t" * 12 + body, 1e9)


@fuzz(10_000)
@given(st.lists(st.tuples(st.integers(0, 0x802F), st.binary(max_size=24)), max_size=8),
       st.sampled_from([stun.ALLOCATE, stun.REFRESH, stun.CREATE_PERMISSION,
                        stun.CHANNEL_BIND, stun.SEND, stun.BINDING, 0x00A]),
       st.sampled_from([stun.REQUEST, stun.INDICATION]))
def test_turn_authenticated_requests(attrs: list[tuple[int, bytes]], method: int,
                                     cls: int) -> None:
    """A client with valid credentials sending every shape of request."""
    CASES["n"] += 1
    ports = count(40000)
    core = TurnCore(TurnConfig(secret=b"s", relay_ip="198.51.100.1"), RelayPolicy(),
                    lambda: next(ports))
    user, password = rest_credentials(b"s", "n", 1e9)
    client = ("udp", ("203.0.113.1", 1))
    first = core.from_client(client, stun.Message(stun.ALLOCATE, stun.REQUEST, b"a" * 12)
                             .encode(), 1e9)
    nonce = stun.parse(first[0].data).get(stun.NONCE) or b""  # type: ignore[union-attr]
    msg = stun.Message(method, cls, secrets.token_bytes(12), tuple(attrs)).with_attrs(
        (stun.USERNAME, user.encode()), (stun.REALM, b"mesh"), (stun.NONCE, nonce))
    core.from_client(client, msg.encode(key=stun.long_term_key(user, "mesh", password)), 1e9)


def test_zz_total_cases() -> None:
    """Runs last in this module: the suite above generated enough cases."""
    import os
    if float(os.environ.get("MESH_FUZZ_SCALE", "1")) >= 1 and CASES["n"]:
        assert CASES["n"] >= MIN_TOTAL, CASES
