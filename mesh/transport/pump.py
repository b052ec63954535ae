"""The asyncio glue of the control machine (mesh/proto/control.py): a pump and one timer.

``ControlPump`` feeds a ``Control`` what arrives on the ``mesh-ctl`` data
channel and the passing of time (one ``loop.call_at``, re-armed after every
input), sends what the machine produced, and hands its events to
``on_event``. Nothing else happens here: every decision is the machine's.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from mesh.proto import control

from .channel import Channel


class ControlPump:
    def __init__(self, machine: control.Control,
                 on_event: Callable[[control.Event], None]) -> None:
        self.machine = machine
        self._on_event = on_event
        self._loop = asyncio.get_running_loop()
        self._channel: Channel | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._arm()

    @property
    def now(self) -> float:
        return self._loop.time()

    def attach(self, channel: Channel) -> None:
        """The control channel is there: take its messages (the sharer challenges now)."""
        self._channel = channel
        channel.on("message", self.receive)
        self.machine.channel_open(self.now)
        self.flush()

    def receive(self, message: str | bytes) -> None:
        self.machine.receive(message, self.now)
        self.flush()

    def flush(self) -> None:
        channel = self._channel
        for text in self.machine.messages_to_send():
            if channel is not None and channel.readyState == "open":
                with contextlib.suppress(ConnectionError, ValueError):
                    channel.send(text)
        while (event := self.machine.next_event()) is not None:
            self._on_event(event)
        self._arm()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._channel is not None:
            self._channel.remove_listener("message", self.receive)

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        when = self.machine.get_timer()
        self._timer = None if when is None else self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self.machine.handle_timer(self.now)
        self.flush()
