import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.errors import EnvelopeError
from mesh.proto.envelope import MAX_SKEW, Opener, ReplayCache, seal_envelope
from mesh.proto.identity import Identity

A = Identity.from_seed(b"\x0a" * 32)  # connector
B = Identity.from_seed(b"\x0b" * 32)  # sharer
C = Identity.from_seed(b"\x0c" * 32)  # someone else
NOW = 1_700_000_000.0


def offer(sender: Identity = A, to: Identity = B, kind: str = "offer", now: float = NOW) -> bytes:
    return seal_envelope(sender, to.node_id, kind, "s1", {"sdp": "v=0"}, now)


def test_round_trip() -> None:
    env = Opener(B, frozenset({"offer"})).open(offer(), A.node_id, NOW)
    assert (env.kind, env.sender, env.recipient, env.session, env.body) == (
        "offer", A.node_id, B.node_id, "s1", {"sdp": "v=0"})


def test_server_cannot_read_it() -> None:
    assert b"v=0" not in offer()


def test_every_flipped_byte_is_refused() -> None:
    blob = offer()
    for i in range(0, len(blob), 3):
        bad = bytearray(blob)
        bad[i] ^= 1
        with pytest.raises(EnvelopeError):
            Opener(B, frozenset({"offer"})).open(bytes(bad), A.node_id, NOW)


def test_replay_refused() -> None:
    opener = Opener(B, frozenset({"offer"}))
    blob = offer()
    opener.open(blob, A.node_id, NOW)
    with pytest.raises(EnvelopeError, match="replayed"):
        opener.open(blob, A.node_id, NOW + 1)


def test_wrong_recipient_cannot_open() -> None:
    with pytest.raises(EnvelopeError, match="does not open"):
        Opener(C, frozenset({"offer"})).open(offer(), A.node_id, NOW)


def test_misaddressed_inner_refused() -> None:
    # Sealed to B, but the signed inner message says it is for C: B must refuse.
    import json

    from mesh.proto.identity import seal
    inner = json.dumps({"v": 1, "kind": "offer", "from": A.node_id, "to": C.node_id,
                        "ts": NOW, "nonce": "n" * 32, "session": "s", "body": {}}).encode()
    blob = seal(B.node_id, A.sign(inner) + inner)
    with pytest.raises(EnvelopeError, match="another node"):
        Opener(B, frozenset({"offer"})).open(blob, A.node_id, NOW)


def test_spoofed_routing_sender_refused() -> None:
    with pytest.raises(EnvelopeError, match="spoofed"):
        Opener(B, frozenset({"offer"})).open(offer(), C.node_id, NOW)


def test_forged_signature_refused() -> None:
    # C signs a message claiming to be from A.
    import json

    from mesh.proto.identity import seal
    inner = json.dumps({"v": 1, "kind": "offer", "from": A.node_id, "to": B.node_id,
                        "ts": NOW, "nonce": "n" * 32, "session": "s", "body": {}}).encode()
    blob = seal(B.node_id, C.sign(inner) + inner)
    with pytest.raises(EnvelopeError, match="signature"):
        Opener(B, frozenset({"offer"})).open(blob, A.node_id, NOW)


def test_direction_tag_blocks_reflection() -> None:
    # An answer B sent to A cannot be fed back to B as if A sent it.
    with pytest.raises(EnvelopeError, match="kind"):
        Opener(B, frozenset({"offer"})).open(offer(kind="answer"), A.node_id, NOW)


@pytest.mark.parametrize("delta", [MAX_SKEW + 1, -(MAX_SKEW + 1), 10_000])
def test_stale_or_future_refused(delta: float) -> None:
    with pytest.raises(EnvelopeError, match="stale"):
        Opener(B, frozenset({"offer"})).open(offer(now=NOW + delta), A.node_id, NOW)


def test_replay_cache_is_bounded_and_expires() -> None:
    cache = ReplayCache(max_age=10, size=100)
    for i in range(1000):
        assert cache.check_and_add(str(i), NOW)
    assert len(cache) <= 100
    assert cache.check_and_add("x", NOW)
    assert not cache.check_and_add("x", NOW + 5)
    assert cache.check_and_add("x", NOW + 30)  # expired from the cache, and stale anyway


@given(st.binary(max_size=2000))
@settings(max_examples=300)
def test_fuzz_garbage_only_raises_envelope_error(blob: bytes) -> None:
    with contextlib.suppress(EnvelopeError):
        Opener(B, frozenset({"offer"})).open(blob, A.node_id, NOW)


@given(st.dictionaries(st.sampled_from(["v", "kind", "from", "to", "ts", "nonce", "session",
                                        "body"]),
                       st.one_of(st.none(), st.integers(), st.floats(), st.text(max_size=60),
                                 st.booleans(), st.dictionaries(st.text(max_size=3),
                                                                st.integers(), max_size=2))))
@settings(max_examples=300)
def test_fuzz_inner_fields_signed_by_sender(fields: dict[str, object]) -> None:
    import json

    from mesh.proto.identity import seal
    inner = json.dumps(fields).encode()
    blob = seal(B.node_id, A.sign(inner) + inner)
    with contextlib.suppress(EnvelopeError):
        Opener(B, frozenset({"offer"})).open(blob, A.node_id, NOW)
