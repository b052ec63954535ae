"""Tunnel stream protocol: one data channel carries one TCP connection.

Binary messages are stream bytes, in order. Text messages are control, UTF-8
JSON objects with a ``t`` field::

    {"t": "ok"}                 sharer -> connector: the service accepted the connection
    {"t": "credit", "n": INT, "a": INT}
                                the receiver has consumed INT more bytes; send that many
                                more. ``a`` (optional): bytes consumed in all, so far: the
                                sender may forget them (they cannot be needed again)
    {"t": "fin"}                the sender will send no more bytes (TCP half-close)
    {"t": "error", "reason": S} the connection failed or was reset; abort it
    {"t": "end"}                resumable streams: the sender closed the stream on purpose
                                (the channel closing after it is not a lost connection)
    {"t": "resume", "rx": INT, "g": INT, "fin": BOOL, "ok": BOOL, "new": BOOL}
                                first message on a stream's new channel after the peer
                                connection changed (mesh/proto/resume.py): bytes received in
                                all, credit granted in all (the initial window included),
                                whether the peer's FIN arrived, whether ``ok`` was sent;
                                ``new`` (optional): the connector never heard from the sharer

Flow control is credit-based, like HTTP/2 windows: each side may have at most
its window of unacknowledged bytes in flight, and grants more as it writes
bytes to its local socket. This bounds memory on both sides whatever the
transfer size or how slowly the local application reads. A peer that sends
beyond its credit breaks the protocol and the stream is reset.

Windows start at ``WINDOW`` and tune themselves, as QUIC and HTTP/2
implementations do: a receiver whose grants follow each other within
``AUTOTUNE_INTERVAL`` (its application keeps up and the window, not the
reader, is what paces the sender) doubles its window, up to ``MAX_WINDOW``,
as long as the peer-wide ``WindowBudget`` has room; the growth is simply
granted as extra credit, so the wire format does not change.

Sans-I/O: ``Flow`` does the accounting; the asyncio bridge lives in tunnel.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from mesh.errors import ProtocolError

WINDOW = 256 * 1024
MAX_WINDOW = 4 * 1024 * 1024
AUTOTUNE_INTERVAL = 0.05
BUDGET = 64 * 1024 * 1024
"""Window growth allowed across all the streams of one peer connection."""
CHUNK = 64 * 1024
MAX_CONTROL = 1024


@dataclass(frozen=True, slots=True)
class Ok:
    pass


@dataclass(frozen=True, slots=True)
class Credit:
    n: int
    ack: int | None = None
    """Bytes the receiver consumed in all (None: not said)."""


@dataclass(frozen=True, slots=True)
class Fin:
    pass


@dataclass(frozen=True, slots=True)
class Reset:
    reason: str


@dataclass(frozen=True, slots=True)
class End:
    pass


@dataclass(frozen=True, slots=True)
class Resume:
    rx: int
    """Bytes received from the peer in all."""
    granted: int
    """Credit given to the peer in all: the most bytes it may send, in all."""
    fin: bool
    """The peer's FIN arrived."""
    ok: bool
    """This side sent ``ok`` (the sharer: the service took the connection)."""
    new: bool = False
    """The connector never heard from the sharer on this stream: its open may have been
    lost with the connection, so a sharer that does not know the stream opens it now."""


Control = Ok | Credit | Fin | Reset | End | Resume
MAX_OFFSET = 2**62


def encode(msg: Control) -> str:
    match msg:
        case Ok():
            return '{"t":"ok"}'
        case Credit(n, None):
            return json.dumps({"t": "credit", "n": n})
        case Credit(n, ack):
            return json.dumps({"t": "credit", "n": n, "a": ack})
        case Resume(rx, granted, fin, ok, new):
            fields = {"t": "resume", "rx": rx, "g": granted, "fin": fin, "ok": ok}
            return json.dumps({**fields, "new": True} if new else fields)
        case Fin():
            return '{"t":"fin"}'
        case End():
            return '{"t":"end"}'
        case Reset(reason):
            return json.dumps({"t": "error", "reason": reason[:300]})
    raise TypeError(msg)


def parse(text: str) -> Control:
    """Parse a control message; raises ProtocolError on anything malformed."""
    if len(text) > MAX_CONTROL:
        raise ProtocolError("stream control message too long")
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError("stream control message is not JSON") from exc
    if not isinstance(obj, dict):
        raise ProtocolError("stream control message is not an object")
    kind = obj.get("t")
    if kind == "ok":
        return Ok()
    if kind == "fin":
        return Fin()
    if kind == "end":
        return End()
    if kind == "credit":
        n = obj.get("n")
        if isinstance(n, bool) or not isinstance(n, int) or not 0 < n <= 2**31:
            raise ProtocolError("stream credit is malformed")
        ack = obj.get("a")
        if ack is not None and not _offset(ack):
            raise ProtocolError("stream credit's acknowledgement is malformed")
        return Credit(n, ack)
    if kind == "resume":
        rx, granted, fin, ok = (obj.get(k) for k in ("rx", "g", "fin", "ok"))
        new = obj.get("new", False)
        if not (isinstance(rx, int) and isinstance(granted, int) and _offset(rx)
                and _offset(granted) and isinstance(fin, bool) and isinstance(ok, bool)
                and isinstance(new, bool)):
            raise ProtocolError("stream resume message is malformed")
        return Resume(rx, granted, fin, ok, new)
    if kind == "error":
        reason = obj.get("reason", "")
        return Reset(reason if isinstance(reason, str) else "reset")
    raise ProtocolError("unknown stream control message")


def _offset(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < MAX_OFFSET


class WindowBudget:
    """Receive-window growth shared by the streams of one peer connection."""

    def __init__(self, total: int = BUDGET) -> None:
        self.left = total

    def take(self, n: int) -> bool:
        if n > self.left:
            return False
        self.left -= n
        return True

    def give(self, n: int) -> None:
        self.left += n


class Flow:
    """Credit accounting for one stream, both directions, and the byte offsets a resume
    needs (``sent_total``, ``received_total``, ``granted_total``, ``consumed_total``)."""

    def __init__(self, window: int = WINDOW, max_window: int | None = None,
                 budget: WindowBudget | None = None) -> None:
        self.window = window
        """Our receive window: the most bytes the peer may have in flight to us."""
        self.initial = window
        self.max_window = max(window, max_window or window)
        self.budget = budget
        self.send_credit = window
        """Bytes we may still send before the peer grants more."""
        self._recv_allowed = window
        """Bytes the peer may still send us."""
        self._consumed = 0
        """Bytes written locally since the last grant."""
        self._last_grant: float | None = None
        self.sent_total = 0
        self.received_total = 0
        self.granted_total = window
        """Credit given to the peer in all, the initial window included."""
        self.consumed_total = 0

    def sent(self, n: int) -> None:
        self.send_credit -= n
        self.sent_total += n

    def granted(self, n: int) -> None:
        self.send_credit += n
        if self.send_credit > 4 * self.max_window:
            raise ProtocolError("peer granted more credit than a window")

    def received(self, n: int) -> None:
        """Account for ``n`` bytes from the peer; raise if it overran its credit."""
        self._recv_allowed -= n
        self.received_total += n
        if self._recv_allowed < 0:
            raise ProtocolError("peer sent beyond its flow-control credit")

    def consumed(self, n: int, now: float | None = None) -> int:
        """``n`` bytes left our buffers; returns the credit to grant now (0: none yet).

        ``now`` (a monotonic clock) enables window tuning; without it the window stays.
        """
        self._consumed += n
        self.consumed_total += n
        if self._consumed < self.window // 4:
            return 0
        grant, self._consumed = self._consumed, 0
        if (now is not None and self._last_grant is not None
                and now - self._last_grant < AUTOTUNE_INTERVAL
                and self.window < self.max_window):
            extra = min(self.window, self.max_window - self.window)
            if self.budget is None or self.budget.take(extra):
                self.window += extra
                grant += extra
        if now is not None:
            self._last_grant = now
        self._recv_allowed += grant
        self.granted_total += grant
        return grant

    def resume_message(self, fin: bool, ok: bool, new: bool = False) -> Resume:
        """What this side tells the peer on a stream's new channel."""
        return Resume(self.received_total, self.granted_total, fin, ok, new)

    def resumed(self, peer: Resume) -> None:
        """The peer's ``resume``: credit from what it says it granted in all (grants lost
        with the old connection are not lost to us). ``ProtocolError`` if it contradicts
        what we sent: it received more than we sent, or granted less than we used."""
        if peer.rx > self.sent_total:
            raise ProtocolError(f"the peer says it received {peer.rx} bytes of "
                                f"{self.sent_total} sent")
        if not self.sent_total <= peer.granted <= self.sent_total + 4 * self.max_window:
            raise ProtocolError("the peer's resume grants an impossible credit")
        self.send_credit = peer.granted - self.sent_total

    def close(self) -> None:
        """The stream ended: return its window growth to the budget."""
        if self.budget is not None:
            self.budget.give(self.window - self.initial)
            self.window = self.initial
