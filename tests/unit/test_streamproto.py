import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.errors import ProtocolError
from mesh.proto import stream as sp


@pytest.mark.parametrize("msg", [sp.Ok(), sp.Fin(), sp.Credit(1), sp.Credit(2**31),
                                 sp.Reset("service refused the connection")])
def test_round_trip(msg: sp.Control) -> None:
    assert sp.parse(sp.encode(msg)) == msg


@pytest.mark.parametrize("text", ["", "[]", "{}", '{"t":"credit"}', '{"t":"credit","n":0}',
                                  '{"t":"credit","n":-5}', '{"t":"credit","n":true}',
                                  '{"t":"nope"}', "x" * 5000])
def test_malformed(text: str) -> None:
    with pytest.raises(ProtocolError):
        sp.parse(text)


@given(st.text(max_size=200))
@settings(max_examples=500)
def test_fuzz(text: str) -> None:
    with contextlib.suppress(ProtocolError):
        sp.parse(text)


def test_flow_window_bounds_the_sender() -> None:
    f = sp.Flow(window=100)
    f.sent(100)
    assert f.send_credit == 0
    f.granted(40)
    assert f.send_credit == 40


def test_flow_receiver_detects_overrun_and_grants() -> None:
    f = sp.Flow(window=100)
    f.received(100)
    with pytest.raises(ProtocolError):
        f.received(1)
    g = sp.Flow(window=100)
    g.received(100)
    assert g.consumed(10) == 0
    assert g.consumed(20) == 30  # a quarter window consumed: grant it
    g.received(30)
    with pytest.raises(ProtocolError):
        g.received(1)


def test_flow_refuses_absurd_grants() -> None:
    f = sp.Flow(window=100)
    with pytest.raises(ProtocolError):
        f.granted(1000)


@given(st.lists(st.integers(1, 50), max_size=100))
def test_flow_conserves_credit(chunks: list[int]) -> None:
    """Sender and receiver agree: in-flight bytes never exceed the window."""
    snd, rcv = sp.Flow(window=64), sp.Flow(window=64)
    for n in chunks:
        n = min(n, snd.send_credit)
        if n == 0:
            continue
        snd.sent(n)
        rcv.received(n)
        grant = rcv.consumed(n)
        if grant:
            snd.granted(grant)
        assert 0 <= snd.send_credit <= 64


def test_window_grows_when_grants_come_fast_and_stays_for_a_slow_reader() -> None:
    fast = sp.Flow(window=100, max_window=800)
    t = 0.0
    windows = []
    for _ in range(8):
        n = fast.window // 4
        fast.received(n)
        grant = fast.consumed(n, now=t)  # a quarter window, every 10 ms
        assert grant >= n
        windows.append(fast.window)
        t += 0.01
    assert windows[0] == 100 and windows[-1] == 800  # doubled up to the cap, no further
    slow = sp.Flow(window=100, max_window=800)
    for i in range(8):
        slow.received(25)
        slow.consumed(25, now=i * 1.0)  # one grant a second: the reader paces the sender
    assert slow.window == 100


def test_window_growth_is_granted_as_credit_and_bounded_by_the_budget() -> None:
    budget = sp.WindowBudget(total=300)
    a = sp.Flow(window=100, max_window=1000, budget=budget)
    b = sp.Flow(window=100, max_window=1000, budget=budget)
    sender = sp.Flow(window=100, max_window=1000)
    for i in range(6):
        n = a.window // 4
        sender.sent(n)
        a.received(n)
        sender.granted(a.consumed(n, now=i * 0.01))
    assert a.window == 400 and budget.left == 0
    # the sender may now have the whole grown window in flight, and the receiver accepts it
    assert sender.send_credit == a.window
    a.received(sender.send_credit)
    with pytest.raises(ProtocolError):
        a.received(1)
    for i in range(4):  # the budget is spent: b cannot grow
        b.received(25)
        b.consumed(25, now=i * 0.01)
    assert b.window == 100
    a.close()
    assert budget.left == 300 and a.window == 100
