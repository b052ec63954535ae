"""Tunnel stream protocol: one data channel carries one TCP connection.

Binary messages are stream bytes, in order. Text messages are control, UTF-8
JSON objects with a ``t`` field::

    {"t": "ok"}                 sharer -> connector: the service accepted the connection
    {"t": "credit", "n": INT}   the receiver has consumed INT more bytes; send that many more
    {"t": "fin"}                the sender will send no more bytes (TCP half-close)
    {"t": "error", "reason": S} the connection failed or was reset; abort it

Flow control is credit-based, like HTTP/2 windows: each side may have at most
``WINDOW`` unacknowledged bytes in flight, and grants more as it writes bytes
to its local socket. This bounds memory on both sides whatever the transfer
size or how slowly the local application reads. A peer that sends beyond its
credit breaks the protocol and the stream is reset.

Sans-I/O: ``Flow`` does the accounting; the asyncio bridge lives in tunnel.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .errors import ProtocolError

WINDOW = 256 * 1024
CHUNK = 32 * 1024
MAX_CONTROL = 1024


@dataclass(frozen=True, slots=True)
class Ok:
    pass


@dataclass(frozen=True, slots=True)
class Credit:
    n: int


@dataclass(frozen=True, slots=True)
class Fin:
    pass


@dataclass(frozen=True, slots=True)
class Reset:
    reason: str


Control = Ok | Credit | Fin | Reset


def encode(msg: Control) -> str:
    match msg:
        case Ok():
            return '{"t":"ok"}'
        case Credit(n):
            return json.dumps({"t": "credit", "n": n})
        case Fin():
            return '{"t":"fin"}'
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
    if kind == "credit":
        n = obj.get("n")
        if isinstance(n, bool) or not isinstance(n, int) or not 0 < n <= 2**31:
            raise ProtocolError("stream credit is malformed")
        return Credit(n)
    if kind == "error":
        reason = obj.get("reason", "")
        return Reset(reason if isinstance(reason, str) else "reset")
    raise ProtocolError("unknown stream control message")


class Flow:
    """Credit accounting for one stream, both directions."""

    def __init__(self, window: int = WINDOW) -> None:
        self.window = window
        self.send_credit = window
        """Bytes we may still send before the peer grants more."""
        self._recv_allowed = window
        """Bytes the peer may still send us."""
        self._consumed = 0
        """Bytes written locally since the last grant."""

    def sent(self, n: int) -> None:
        self.send_credit -= n

    def granted(self, n: int) -> None:
        self.send_credit += n
        if self.send_credit > 4 * self.window:
            raise ProtocolError("peer granted more credit than a window")

    def received(self, n: int) -> None:
        """Account for ``n`` bytes from the peer; raise if it overran its credit."""
        self._recv_allowed -= n
        if self._recv_allowed < 0:
            raise ProtocolError("peer sent beyond its flow-control credit")

    def consumed(self, n: int) -> int:
        """``n`` bytes left our buffers; returns the credit to grant now (0: none yet)."""
        self._consumed += n
        if self._consumed >= self.window // 4:
            grant, self._consumed = self._consumed, 0
            self._recv_allowed += grant
            return grant
        return 0
