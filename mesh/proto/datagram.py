"""UDP over a data channel: the frames, the flow table and the counters. Sans-I/O.

A UDP share carries every datagram as one message on one ``udp`` data channel
per peer connection, opened by the connector unordered with no retransmission
(a lost datagram stays lost, as UDP's would; a late one is not waited for).
A *flow* is one client address on the connect side; the sharer gives each flow
its own socket toward the service, so the service sees distinct clients and
each reply goes back to the client that asked.

Frames (integers big-endian)::

    DATA   0x00  flow u32  payload      one datagram, boundaries kept
    CLOSE  0x01  flow u32  reason u8    the flow ended on the sender's side

Reasons: 1 idle, 2 refused (over ``--max-flows``), 3 the service is unreachable,
4 the sharer could not open a socket. The connector numbers flows (1, 2, ...,
never 0, wrapping at 2**32 past numbers still in use); a DATA frame for a flow
the sharer does not know opens it. CLOSE is advice: it is sent unreliably like
everything else, and both sides also end a flow after ``idle`` seconds without
a datagram either way. A frame that does not parse is dropped and counted.

``FlowTable`` keeps the flows of one side in the order of their last datagram,
so idle ones are found at its front; the clock is an argument (``now``).
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from mesh.errors import ProtocolError

DATA = 0x00
CLOSE = 0x01
HEADER = 5
"""Bytes a DATA frame adds to a datagram."""

IDLE = 1
REFUSED = 2
UNREACHABLE = 3
NO_SOCKET = 4
REASONS = {IDLE: "idle", REFUSED: "too many flows (--max-flows)",
           UNREACHABLE: "the service is unreachable", NO_SOCKET: "no socket for the flow"}

MAX_DATAGRAM = 65535
"""The largest payload a frame may carry (the largest UDP datagram)."""

_HEAD = struct.Struct("!BI")
_CLOSE = struct.Struct("!BIB")
_MAX_FLOW = 0xFFFFFFFF


class DatagramError(ProtocolError):
    """A frame on the ``udp`` channel does not parse."""


@dataclass(frozen=True)
class Data:
    flow: int
    payload: bytes


@dataclass(frozen=True)
class Close:
    flow: int
    reason: int

    @property
    def why(self) -> str:
        return REASONS.get(self.reason, f"reason {self.reason}")


def encode_data(flow: int, payload: bytes) -> bytes:
    return _HEAD.pack(DATA, flow) + payload


def encode_close(flow: int, reason: int) -> bytes:
    return _CLOSE.pack(CLOSE, flow, reason)


def decode(frame: bytes | str) -> Data | Close:
    """One frame; ``DatagramError`` for anything else (text, short, unknown, oversized)."""
    if isinstance(frame, str):
        raise DatagramError("a text message on the udp channel")
    if len(frame) < HEADER:
        raise DatagramError(f"a {len(frame)}-byte frame is too short")
    kind, flow = _HEAD.unpack_from(frame)
    if flow == 0:
        raise DatagramError("flow 0 is never used")
    if kind == DATA:
        if len(frame) - HEADER > MAX_DATAGRAM:
            raise DatagramError(f"a {len(frame) - HEADER}-byte datagram is over 65535")
        return Data(flow, frame[HEADER:])
    if kind == CLOSE and len(frame) == _CLOSE.size:
        return Close(flow, frame[HEADER])
    raise DatagramError(f"unknown frame type {kind:#x} ({len(frame)} bytes)")


@dataclass
class UdpCounters:
    """What one side moved; ``in`` is toward the local end (client or service)."""

    flows_total: int = 0
    flows_refused: int = 0
    datagrams_in: int = 0
    datagrams_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    drops_in: int = 0
    """Datagrams from the peer not delivered (unknown flow, malformed, socket error)."""
    drops_out: int = 0
    """Datagrams not sent to the peer (no path, queue full, over the message limit)."""
    drop_reasons: dict[str, int] = field(default_factory=dict)

    def drop(self, outward: bool, reason: str) -> None:
        if outward:
            self.drops_out += 1
        else:
            self.drops_in += 1
        self.drop_reasons[reason] = self.drop_reasons.get(reason, 0) + 1

    def as_dict(self, flows_open: int) -> dict[str, object]:
        return {"flows_open": flows_open, "flows_total": self.flows_total,
                "flows_refused": self.flows_refused, "datagrams_in": self.datagrams_in,
                "datagrams_out": self.datagrams_out, "bytes_in": self.bytes_in,
                "bytes_out": self.bytes_out, "drops_in": self.drops_in,
                "drops_out": self.drops_out, "drop_reasons": dict(self.drop_reasons)}


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Flow(Generic[K, V]):
    """One flow: its number, its key (client address, or the number), what it holds."""

    __slots__ = ("flow", "key", "last", "value")

    def __init__(self, flow: int, key: K, value: V, now: float) -> None:
        self.flow = flow
        self.key = key
        self.value = value
        self.last = now


class FlowTable(Generic[K, V]):
    """The open flows of one side, the cap on them, and their idle deadlines."""

    def __init__(self, idle: float, max_flows: int, counters: UdpCounters | None = None
                 ) -> None:
        if idle <= 0 or max_flows < 1:
            raise ValueError("idle must be positive and max_flows at least 1")
        self.idle = idle
        self.max_flows = max_flows
        self.counters = counters or UdpCounters()
        self._by_key: OrderedDict[K, Flow[K, V]] = OrderedDict()
        self._by_flow: dict[int, Flow[K, V]] = {}
        self._next = 1

    def __len__(self) -> int:
        return len(self._by_key)

    def __iter__(self) -> Iterator[Flow[K, V]]:
        return iter(list(self._by_key.values()))

    def get(self, key: K) -> Flow[K, V] | None:
        return self._by_key.get(key)

    def by_flow(self, flow: int) -> Flow[K, V] | None:
        return self._by_flow.get(flow)

    def next_number(self) -> int:
        """A flow number not in use (the connector's numbering)."""
        while True:
            number = self._next
            self._next = 1 if number >= _MAX_FLOW else number + 1
            if number not in self._by_flow:
                return number

    def open(self, key: K, value: V, now: float, flow: int | None = None) -> Flow[K, V] | None:
        """A new flow, or None (counted as refused) when ``max_flows`` are open."""
        if len(self._by_key) >= self.max_flows:
            self.counters.flows_refused += 1
            return None
        number = self.next_number() if flow is None else flow
        entry = Flow(number, key, value, now)
        self._by_key[key] = entry
        self._by_flow[number] = entry
        self.counters.flows_total += 1
        return entry

    def touch(self, entry: Flow[K, V], now: float) -> None:
        """A datagram went through ``entry``: its idle deadline starts again."""
        entry.last = now
        self._by_key.move_to_end(entry.key)

    def remove(self, entry: Flow[K, V]) -> bool:
        """Forget ``entry``; False if it was already gone."""
        if self._by_key.get(entry.key) is not entry:
            return False
        del self._by_key[entry.key]
        del self._by_flow[entry.flow]
        return True

    def expire(self, now: float) -> list[Flow[K, V]]:
        """The flows idle for ``idle`` seconds, removed."""
        out = []
        while self._by_key:
            entry = next(iter(self._by_key.values()))
            if entry.last + self.idle > now:
                break
            self.remove(entry)
            out.append(entry)
        return out

    def deadline(self) -> float | None:
        """When the next flow goes idle (None: no flows)."""
        if not self._by_key:
            return None
        return next(iter(self._by_key.values())).last + self.idle
