import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.proto import frames as p
from mesh.proto.identity import Identity

NODE = Identity.from_seed(b"\x05" * 32).node_id


@pytest.mark.parametrize("frame", [
    p.Register(NODE, b"s" * 64), p.Send(NODE, b"payload", 7), p.Ping(),
])
def test_client_round_trip(frame: p.ClientFrame) -> None:
    assert p.parse_client_frame(p.encode(frame)) == frame


@pytest.mark.parametrize("frame", [
    p.Hello(1, b"n" * 32), p.Registered(NODE, ({"urls": ["stun:x"]},), "i1"),
    p.Registered(NODE, (), "i2", {"refuses": "loopback", "allows": ["10.0.0.0/8"]}),
    p.Deliver(NODE, b"x"), p.Error("unknown-destination", "gone", 3), p.Pong(),
])
def test_server_round_trip(frame: p.ServerFrame) -> None:
    assert p.parse_server_frame(p.encode(frame)) == frame


@pytest.mark.parametrize("text,code", [
    ("not json", "bad-frame"), ("[]", "bad-frame"), ('{"type": 1}', "bad-frame"),
    ('{"type": "register", "node": "x", "sig": ""}', "bad-frame"),
    (json.dumps({"type": "send", "to": NODE, "payload": "%%%"}), "bad-frame"),
    (json.dumps({"type": "send", "to": NODE, "payload": "", "ref": -1}), "bad-frame"),
    (json.dumps({"type": "send", "to": NODE.upper(), "payload": ""}), "bad-frame"),
    ("x" * (p.MAX_FRAME + 1), "too-large"),
    ("[" * 100000, "too-large"),
    ('{"type": "bogus"}', "bad-frame"),
])
def test_bad_client_frames(text: str, code: str) -> None:
    with pytest.raises(p.FrameError) as info:
        p.parse_client_frame(text)
    assert info.value.code == code


def test_deep_nesting_is_a_frame_error() -> None:
    with pytest.raises(p.FrameError):
        p.parse_client_frame("[" * 60000)


@given(st.text(max_size=300))
@settings(max_examples=500)
def test_fuzz_client_frames(text: str) -> None:
    with contextlib.suppress(p.FrameError):
        p.parse_client_frame(text)


@given(st.dictionaries(st.sampled_from(["type", "node", "sig", "to", "payload", "ref"]),
                       st.one_of(st.sampled_from(["register", "send", "ping", NODE]),
                                 st.text(max_size=20), st.integers(), st.none(),
                                 st.booleans(), st.lists(st.integers(), max_size=2))))
@settings(max_examples=1000)
def test_fuzz_structured_client_frames(obj: dict[str, object]) -> None:
    with contextlib.suppress(p.FrameError):
        p.parse_client_frame(json.dumps(obj))


@given(st.text(max_size=300))
@settings(max_examples=300)
def test_fuzz_server_frames(text: str) -> None:
    with contextlib.suppress(p.FrameError):
        p.parse_server_frame(text)


@pytest.mark.parametrize("relay", [[], "x", {"refuses": 1, "allows": []},
                                   {"refuses": "x", "allows": [1]}, {"refuses": "x"}])
def test_a_malformed_relay_policy_is_a_bad_frame(relay: object) -> None:
    text = json.dumps({"type": "registered", "node": NODE, "ice_servers": [],
                       "instance": "i", "relay": relay})
    with pytest.raises(p.FrameError):
        p.parse_server_frame(text)
