"""The control machine (mesh/proto/control.py) through every transition, on a fake clock."""

from __future__ import annotations

import json

import pytest

from mesh.errors import AdmissionDenied, HandshakeError, ProtocolError
from mesh.proto import admission, control
from mesh.proto.control import Control, Role, State

T = admission.Transcript("s" * 52, "c" * 52, ("sha-256 AA",), ("sha-256 BB",))
SECRET = b"k" * 16
TIMINGS = control.Timings()


def pair(now: float = 0.0, secret: bytes = SECRET) -> tuple[Control, Control]:
    exp = int(now) + 3600
    sharer = Control(Role.SHARER, admission.SharerAdmission(admission.Keys(SECRET), T, now),
                     now)
    connector = Control(Role.CONNECTOR, admission.ConnectorAdmission(
        admission.ticket_secret(secret, exp), T, exp), now)
    return sharer, connector


def deliver(src: Control, dst: Control, now: float) -> list[str]:
    """Move every pending message from ``src`` to ``dst``; return them."""
    sent = src.messages_to_send()
    for text in sent:
        dst.receive(text, now)
    return sent


def events(machine: Control) -> list[control.Event]:
    out = []
    while (event := machine.next_event()) is not None:
        out.append(event)
    return out


def admit(now: float = 0.0) -> tuple[Control, Control]:
    sharer, connector = pair(now)
    sharer.channel_open(now)
    deliver(sharer, connector, now)   # challenge
    deliver(connector, sharer, now)   # proof
    deliver(sharer, connector, now)   # admitted + ping
    return sharer, connector


def test_admission_then_ready_with_a_round_trip() -> None:
    sharer, connector = pair()
    assert sharer.state is State.WAITING and connector.state is State.WAITING
    sharer.channel_open(0.0)
    assert sharer.state is State.CHALLENGED
    assert [json.loads(m)["t"] for m in deliver(sharer, connector, 0.0)] == ["challenge"]
    assert connector.state is State.PROVING
    assert [json.loads(m)["t"] for m in deliver(connector, sharer, 0.1)] == ["proof"]
    assert sharer.state is State.ADMITTED
    assert [json.loads(m)["t"] for m in deliver(sharer, connector, 0.2)] == ["admitted", "ping"]
    assert connector.state is State.ADMITTED
    assert events(sharer) == [control.Admitted()]
    assert events(connector) == [control.Admitted()]
    # the connector's own ping comes back: its round trip, then it is ready
    assert [json.loads(m)["t"] for m in deliver(connector, sharer, 0.2)] == ["ping", "pong"]
    deliver(sharer, connector, 0.25)
    assert events(connector) == [control.Ready(50.0)]
    deliver(connector, sharer, 0.3)   # the pong to the sharer's ping
    assert events(sharer) == [control.Ready(100.0)]


def test_sharer_reports_ready_after_a_bound_without_a_pong() -> None:
    sharer, _ = admit()
    events(sharer)
    assert sharer.get_timer() == pytest.approx(TIMINGS.ready_after)
    sharer.handle_timer(TIMINGS.ready_after)
    assert events(sharer) == [control.Ready(None)]


def test_pings_every_interval_and_death_after_silence() -> None:
    sharer, _ = admit()
    events(sharer)
    sharer.messages_to_send()
    now = 0.0
    for _ in range(3):
        now += TIMINGS.ping_interval
        sharer.handle_timer(now)
        pings = [json.loads(m) for m in sharer.messages_to_send()]
        assert [p["t"] for p in pings] == ["ping"] and pings[0]["ts"] == now
    sharer.handle_timer(TIMINGS.dead_after + 0.01)
    assert sharer.state is State.CLOSED
    assert events(sharer)[-1] == control.Dead("no answer for 8 s")
    assert sharer.get_timer() is None


def test_any_message_keeps_the_peer_alive() -> None:
    sharer, connector = admit()
    for now in (3.0, 6.0, 9.0, 12.0):
        connector.handle_timer(now)
        deliver(connector, sharer, now)
        sharer.handle_timer(now)
    assert sharer.state is State.ADMITTED


def test_wrong_secret_is_refused_and_closed_after_the_grace() -> None:
    sharer, connector = pair(secret=b"x" * 16)
    sharer.channel_open(0.0)
    deliver(sharer, connector, 0.0)
    deliver(connector, sharer, 0.0)
    assert sharer.state is State.DENYING
    assert events(sharer) == [control.Refused("wrong ticket secret")]
    deliver(sharer, connector, 0.0)
    failed = events(connector)
    assert len(failed) == 1 and isinstance(failed[0], control.Failed)
    assert isinstance(failed[0].error, AdmissionDenied)
    assert connector.state is State.CLOSED
    assert sharer.get_timer() == pytest.approx(TIMINGS.deny_grace)
    sharer.handle_timer(TIMINGS.deny_grace)
    assert events(sharer) == [control.Closed()] and sharer.state is State.CLOSED


def test_a_sharer_that_cannot_prove_the_secret_fails_the_connector() -> None:
    sharer, connector = pair()
    sharer.channel_open(0.0)
    deliver(sharer, connector, 0.0)
    connector.messages_to_send()
    connector.receive(json.dumps({"t": "admitted", "mac": "00" * 32}), 0.1)
    [failed] = events(connector)
    assert isinstance(failed, control.Failed) and isinstance(failed.error, HandshakeError)


def test_admission_times_out_on_both_sides() -> None:
    sharer, connector = pair()
    for machine in (sharer, connector):
        assert machine.get_timer() == pytest.approx(TIMINGS.admit_timeout)
        machine.handle_timer(TIMINGS.admit_timeout)
        [failed] = events(machine)
        assert isinstance(failed, control.Failed) and "not admitted" in str(failed.error)
        assert machine.state is State.CLOSED


@pytest.mark.parametrize("role,state,message", [
    (Role.SHARER, "waiting", {"t": "proof", "mac": "00" * 32}),
    (Role.SHARER, "challenged", {"t": "ping", "id": 1, "ts": 0.0}),
    (Role.CONNECTOR, "waiting", {"t": "admitted", "mac": "00" * 32}),
    (Role.CONNECTOR, "waiting", {"t": "pong", "id": 1, "ts": 0.0}),
    (Role.CONNECTOR, "proving", {"t": "challenge", "nonce": "00" * 32}),
])
def test_messages_out_of_order_end_the_session(role: Role, state: str,
                                               message: dict[str, object]) -> None:
    sharer, connector = pair()
    machine = sharer if role is Role.SHARER else connector
    if state == "challenged":
        sharer.channel_open(0.0)
    if state == "proving":
        sharer.channel_open(0.0)
        deliver(sharer, connector, 0.0)
    machine.messages_to_send()
    machine.receive(json.dumps(message), 0.1)
    [failed] = events(machine)[-1:]
    assert isinstance(failed, control.Failed) and isinstance(failed.error, ProtocolError)
    assert machine.state is State.CLOSED
    machine.receive(json.dumps({"t": "ping"}), 0.2)  # nothing after the end
    assert machine.next_event() is None and machine.messages_to_send() == []


@pytest.mark.parametrize("text", [b"binary", "not json", "[1]", '{"t": 5}', "x" * 5000])
def test_malformed_control_messages_fail(text: str | bytes) -> None:
    sharer, _ = pair()
    sharer.channel_open(0.0)
    sharer.receive(text, 0.0)
    [failed] = events(sharer)
    assert isinstance(failed, control.Failed)


def test_an_unadmitted_peer_gets_one_try() -> None:
    sharer, connector = pair(secret=b"x" * 16)
    sharer.channel_open(0.0)
    deliver(sharer, connector, 0.0)
    proof = connector.messages_to_send()[0]
    sharer.receive(proof, 0.0)
    sharer.receive(proof, 0.1)  # ignored: the refusal is already on its way
    assert events(sharer) == [control.Refused("wrong ticket secret")]
    assert sharer.state is State.DENYING


def test_a_bogus_pong_timestamp_is_ignored() -> None:
    _, connector = admit()
    events(connector)
    connector.receive(json.dumps({"t": "pong", "id": 1, "ts": -1e9}), 1.0)
    connector.receive(json.dumps({"t": "pong", "id": 1, "ts": True}), 1.0)
    assert events(connector) == [] and connector.rtt_ms is None
    assert connector.state is State.ADMITTED
