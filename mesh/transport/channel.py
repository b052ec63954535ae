"""A data channel as the layers above see it (the shape of the browser's RTCDataChannel).

``label``, ``id``, ``ordered``, ``readyState`` (``connecting``, ``open``,
``closing``, ``closed``), ``bufferedAmount`` and
``bufferedAmountLowThreshold``; ``send(bytes | str)`` and ``close()``; and the
events ``open``, ``message``, ``close`` and ``bufferedamountlow`` through
``on``/``remove_listener``. The channel itself only keeps that state: the
data plane (datapath.py) moves its messages through the SCTP core.

Messages that arrive while nobody listens for ``message`` (the peer answered
before the code that opened the channel got round to listening: a loop turn
is enough) are held and handed in order to the first listener, one loop turn
after it registers. What all the channels of one connection hold together is
bounded (``HELD_MAX``, counted by the data path), and a channel that is closing
holds nothing: a peer cannot park data in channels nobody reads.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .datapath import DataPath

log = logging.getLogger("mesh.channel")

HELD_MAX = 256 * 1024
"""Bytes of messages held, across one connection's channels, for want of a listener."""


class ChannelClosedError(ConnectionError):
    """The channel is not open (it is still connecting, or it has closed)."""


class Channel:
    def __init__(self, path: DataPath, label: str, *, protocol: str = "", ordered: bool = True,
                 max_retransmits: int | None = None,
                 max_packet_life_time: float | None = None) -> None:
        self._path = path
        self.label = label
        self.protocol = protocol
        self.ordered = ordered
        self.max_retransmits = max_retransmits
        self.max_packet_life_time = max_packet_life_time
        """Seconds a message may be retried before it is abandoned."""
        self.id: int | None = None
        self.readyState = "connecting"
        self._threshold = 0
        self._listeners: dict[str, list[Callable[..., Any]]] = {}
        self._held: deque[bytes | str] = deque()
        self._held_bytes = 0
        self._releasing = False

    # -- state ----------------------------------------------------------------------
    @property
    def bufferedAmount(self) -> int:
        return self._path.buffered(self)

    @property
    def bufferedAmountLowThreshold(self) -> int:
        return self._threshold

    @bufferedAmountLowThreshold.setter
    def bufferedAmountLowThreshold(self, value: int) -> None:
        if value < 0:
            raise ValueError("the threshold cannot be negative")
        self._threshold = value
        self._path.set_threshold(self, value)

    # -- actions --------------------------------------------------------------------
    def send(self, data: bytes | str) -> None:
        if self.readyState != "open":
            raise ChannelClosedError(f"the data channel {self.label!r} is {self.readyState}")
        self._path.send(self, data)

    def close(self) -> None:
        if self.readyState in ("closing", "closed"):
            return
        self._drop_held()
        self._path.close_channel(self)

    # -- events ---------------------------------------------------------------------
    def on(self, event: str, callback: Callable[..., Any]) -> None:
        self._listeners.setdefault(event, []).append(callback)
        if event == "message" and self._held and not self._releasing:
            self._releasing = True
            asyncio.get_running_loop().call_soon(self._release)

    def remove_listener(self, event: str, callback: Callable[..., Any]) -> None:
        listeners = self._listeners.get(event)
        if listeners and callback in listeners:
            listeners.remove(callback)

    def emit(self, event: str, *args: Any) -> None:
        if event == "message" and (self._held or not self._listeners.get("message")):
            self._hold(args[0])
            return
        if event == "close":
            self._drop_held()
        for callback in list(self._listeners.get(event, ())):
            callback(*args)

    def _hold(self, message: bytes | str) -> None:
        size = len(message)
        path = self._path
        if self.readyState in ("closing", "closed"):
            return  # closed from this side: what the peer still sends is not wanted
        if path.held + size > HELD_MAX:
            log.warning("data channel %r: nobody reads it; a %d-byte message dropped",
                        self.label, size)
            return
        self._held.append(message)
        self._held_bytes += size
        path.held += size

    def _drop_held(self) -> None:
        self._path.held -= self._held_bytes
        self._held.clear()
        self._held_bytes = 0

    def _release(self) -> None:
        """Hand the held messages, oldest first, to whoever listens now."""
        self._releasing = False
        held = self._held
        while held and (listeners := self._listeners.get("message")):
            message = held.popleft()
            self._held_bytes -= len(message)
            self._path.held -= len(message)
            for callback in list(listeners):
                try:
                    callback(message)
                except Exception as exc:  # as DataPath._emit: a listener's bug stays its own
                    log.error("data channel %r: message listener failed: %r", self.label, exc)

    def __repr__(self) -> str:
        return f"Channel({self.label!r}, id={self.id}, {self.readyState})"
