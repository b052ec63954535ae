"""The link machine (mesh/proto/link.py) through every transition, on a fake clock."""

from __future__ import annotations

import random

from mesh.errors import Refused
from mesh.proto import link
from mesh.proto.link import (
    Attempt,
    Cancel,
    Failed,
    Install,
    Link,
    LinkTimings,
    Lost,
    Retire,
    State,
    Warn,
)

T = LinkTimings()


def drain(machine: Link) -> list[link.Command]:
    out = []
    while (cmd := machine.next_command()) is not None:
        out.append(cmd)
    return out


def started(udp_ok: bool = True, has_relay: bool = True, relay_only: bool = False) -> Link:
    machine = Link(T, relay_only=relay_only, rng=random.Random(1))
    machine.start(0.0, udp_ok=udp_ok, has_relay=has_relay)
    return machine


def test_direct_wins_before_the_relay_starts() -> None:
    m = started()
    assert drain(m) == [Attempt(1, "direct")]
    assert m.get_timer() == T.relay_after
    m.attempt_up(1, "direct", 0.5)
    assert drain(m) == [Install(1, "direct", 0.0)]
    assert m.state is State.UP and m.link == 1 and m.path == "direct"
    assert m.get_timer() is None  # direct: no upgrade to try


def test_relay_races_after_relay_after_and_the_first_up_wins() -> None:
    m = started()
    drain(m)
    m.handle_timer(T.relay_after)
    assert drain(m) == [Attempt(2, "relay")]
    m.attempt_up(2, "relay", 2.5)
    assert drain(m) == [Cancel(1), Install(2, "relay", 0.0)]
    m.attempt_up(1, "direct", 3.0)  # the loser came up late: close it
    assert drain(m) == [Retire(1)]


def test_blocked_udp_starts_the_relay_at_once() -> None:
    m = started(udp_ok=False)
    assert drain(m) == [Attempt(1, "direct"), Attempt(2, "relay")]


def test_direct_failure_starts_the_relay_early() -> None:
    m = started()
    drain(m)
    m.attempt_failed(1, "ICE failed", 0.4)
    assert drain(m) == [Attempt(2, "relay")]


def test_no_relay_and_direct_fails_is_the_error() -> None:
    m = started(has_relay=False)
    drain(m)
    assert m.get_timer() == T.connect_timeout
    m.attempt_failed(1, "could not establish a peer-to-peer path", 1.0)
    assert drain(m) == [Failed("could not establish a peer-to-peer path")]
    assert m.state is State.FAILED and m.get_timer() is None


def test_both_fail_reports_the_last_error() -> None:
    m = started()
    drain(m)
    m.handle_timer(T.relay_after)
    m.attempt_failed(1, "direct failed", 3.0)
    m.attempt_failed(2, "relay refused", 4.0)
    assert drain(m)[-1] == Failed("relay refused")


def test_a_refusal_fails_the_first_connect_at_once() -> None:
    m = started()
    drain(m)
    m.handle_timer(T.relay_after)
    drain(m)
    refusal = Refused("the sharer refused: not allowed")
    m.attempt_failed(1, refusal, 3.0, fatal=True)
    assert drain(m) == [Cancel(2), Failed(str(refusal), refusal)]


def test_timeout_of_the_first_connect() -> None:
    m = started()
    drain(m)
    m.handle_timer(T.relay_after)
    drain(m)
    m.handle_timer(T.connect_timeout)
    cmds = drain(m)
    assert cmds[:2] == [Cancel(1), Cancel(2)]
    assert isinstance(cmds[2], Failed) and "within 20 s" in cmds[2].error


def test_lost_link_rebuilds_at_once_then_backs_off() -> None:
    m = started()
    drain(m)
    m.attempt_up(1, "direct", 0.1)
    drain(m)
    m.lost("no answer for 8 s", 100.0)
    assert drain(m) == [Lost("no answer for 8 s"), Retire(1), Attempt(2, "direct")]
    assert m.state is State.CONNECTING
    m.attempt_failed(2, "ICE failed", 100.5)
    assert drain(m) == [Attempt(3, "relay")]
    m.attempt_failed(3, "relay failed", 101.0)
    cmds = drain(m)
    assert cmds == [Warn("reconnecting: relay failed")] and m.state is State.WAITING
    retry = m.get_timer()
    assert retry is not None and 101.0 + 0.8 * T.backoff_min <= retry <= 101.0 + 1.2
    m.handle_timer(retry)
    assert drain(m) == [Attempt(4, "direct")]
    # the backoff doubles, with jitter, up to its cap
    waits = []
    now = retry
    for attempt in range(4, 12, 2):
        m.attempt_failed(attempt, "down", now)
        m.attempt_failed(attempt + 1, "down", now)
        drain(m)
        nxt = m.get_timer()
        assert nxt is not None
        waits.append(nxt - now)
        now = nxt
        m.handle_timer(now)
        drain(m)
    assert waits[0] < waits[1] < waits[2]
    assert max(waits) <= T.backoff_max * 1.2
    # a rebuild that works installs and resets the backoff
    m.attempt_up(12, "direct", now + 0.1)
    assert drain(m) == [Install(12, "direct", now)]


def test_rebuild_round_timeout_waits_and_retries() -> None:
    m = started(has_relay=False)
    drain(m)
    m.attempt_up(1, "direct", 0.0)
    drain(m)
    m.lost("peer connection failed", 10.0)
    drain(m)
    m.handle_timer(10.0 + T.connect_timeout)
    cmds = drain(m)
    assert cmds[0] == Cancel(2) and isinstance(cmds[1], Warn)
    assert m.state is State.WAITING


def test_upgrade_from_relay_to_direct() -> None:
    m = started(udp_ok=True)
    drain(m)
    m.handle_timer(T.relay_after)
    m.attempt_up(2, "relay", 3.0)
    drain(m)
    assert m.get_timer() == 3.0 + T.upgrade_interval
    m.handle_timer(3.0 + T.upgrade_interval)
    assert drain(m) == [Attempt(3, "direct")]
    m.attempt_up(3, "direct", 34.0)
    assert drain(m) == [Install(3, "upgrade", 34.0), Retire(2)]
    assert m.link == 3 and m.path == "direct" and m.get_timer() is None


def test_failed_or_slow_upgrade_is_tried_again_later() -> None:
    m = started()
    drain(m)
    m.handle_timer(T.relay_after)
    m.attempt_up(2, "relay", 3.0)
    drain(m)
    m.handle_timer(33.0)
    drain(m)
    m.attempt_failed(3, "ICE failed", 34.0)
    assert drain(m) == [] and m.get_timer() == 34.0 + T.upgrade_interval
    m.handle_timer(64.0)
    assert drain(m) == [Attempt(4, "direct")]
    m.handle_timer(64.0 + T.upgrade_timeout)
    assert drain(m) == [Cancel(4)] and m.link == 2
    m.handle_timer(64.0 + T.upgrade_timeout + T.upgrade_interval)
    assert drain(m) == [Attempt(5, "direct")]
    m.attempt_up(5, "relay", 110.0)  # ICE found only the relay again: keep the old one
    assert drain(m) == [Retire(5)] and m.link == 2


def test_no_upgrade_without_udp_or_when_relay_only() -> None:
    for m in (started(udp_ok=False), started(relay_only=True)):
        cmds = drain(m)
        relay = next(c for c in cmds if isinstance(c, Attempt) and c.mode == "relay")
        m.attempt_up(relay.id, "relay", 1.0)
        drain(m)
        assert m.get_timer() is None


def test_relay_only_never_tries_direct() -> None:
    m = started(relay_only=True)
    assert drain(m) == [Attempt(1, "relay")]
    m.attempt_failed(1, "relay refused", 1.0)
    assert drain(m) == [Failed("relay refused")]


def test_losing_the_link_during_an_upgrade_cancels_it() -> None:
    m = started()
    drain(m)
    m.handle_timer(T.relay_after)
    m.attempt_up(2, "relay", 3.0)
    m.handle_timer(33.0)
    drain(m)
    m.lost("peer connection failed", 34.0)
    cmds = drain(m)
    assert cmds[:3] == [Lost("peer connection failed"), Retire(2), Cancel(3)]


def test_close_from_every_state_cancels_and_retires() -> None:
    m = started()
    drain(m)
    m.close()
    assert drain(m) == [Cancel(1)] and m.state is State.CLOSED
    m = started()
    drain(m)
    m.attempt_up(1, "direct", 0.1)
    drain(m)
    m.close()
    assert drain(m) == [Retire(1)]
    m.close()
    assert drain(m) == []
    m.attempt_up(7, "direct", 1.0)  # anything late after close is retired
    assert drain(m) == [Retire(7)]


def test_inputs_in_the_wrong_state_do_nothing() -> None:
    m = Link(T)
    m.lost("x", 0.0)
    m.attempt_failed(3, "x", 0.0)
    m.handle_timer(100.0)
    assert drain(m) == [] and m.state is State.IDLE
    m.start(0.0, udp_ok=True, has_relay=False)
    m.start(1.0, udp_ok=True, has_relay=False)  # twice: once
    assert drain(m) == [Attempt(1, "direct")]
