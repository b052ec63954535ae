"""The connector's tunnelled streams: opened on the current peer connection, and moved
to the next one when it is lost or replaced (mesh/proto/resume.py).

Each stream gets an id (the data channel's protocol, ``id=<hex>``). When the link
machine installs a new peer connection (a rebuild after a loss, or the direct
path replacing the relay), every stream still on another one gets a
``tcp-resume`` channel there; when all of them have exchanged ``resume`` with
the sharer, one ``resumed`` event reports them. With ``resume_timeout`` 0 streams
are not resumable: they live and die with the connection they started on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mesh.proto import resume as rs
from mesh.transport.stream import Counters, Stream

from .dialer import Link


class Streams:
    def __init__(self, resume_timeout: float, counters: Counters,
                 on_resumed: Callable[[int, float], None]) -> None:
        self.resume_timeout = resume_timeout
        self.counters = counters
        self._on_resumed = on_resumed
        self._streams: dict[str, Stream] = {}
        self._on_link: dict[str, Link] = {}
        self._batch: list[float] = []
        self._batch_size = 0

    def __len__(self) -> int:
        return len(self._streams)

    def open(self, current: Link) -> Stream:
        """A new stream on ``current``."""
        if self.resume_timeout <= 0:
            current.streams += 1  # the link stays up until its streams end

            def done() -> None:
                current.streams -= 1

            return Stream(current.peer.open_channel("tcp"), self.counters, on_end=done)
        sid = rs.new_id()

        def forget() -> None:
            self._streams.pop(sid, None)
            self._on_link.pop(sid, None)

        stream = Stream(current.peer.open_channel("tcp", protocol=rs.protocol(sid)),
                        self.counters, on_end=forget, sid=sid,
                        resume_timeout=self.resume_timeout, on_resumed=self._resumed)
        self._streams[sid] = stream
        self._on_link[sid] = current
        return stream

    def move(self, established: Link) -> None:
        """Carry every resumable stream on to ``established``: a ``tcp-resume`` channel
        each (the stream leaves its old channel, if it still has one)."""
        moving = [(sid, self._streams[sid]) for sid, on in self._on_link.items()
                   if on is not established]
        if not moving:
            return
        self._batch, self._batch_size = [], 0
        for sid, stream in moving:
            channel = established.peer.open_channel(rs.RESUME_LABEL, protocol=rs.protocol(sid))
            if stream.resume(channel):
                self._on_link[sid] = established
                self._batch_size += 1

    def _resumed(self, stream: Stream, gap: float) -> None:
        self._batch.append(gap)
        if len(self._batch) == self._batch_size:
            self._on_resumed(len(self._batch), round(max(self._batch) * 1000, 1))

    def abort_all(self, reason: str) -> None:
        for stream in list(self._streams.values()):
            stream.abort(reason)

    def snapshot(self) -> dict[str, Any]:
        return {"streams_waiting": sum(1 for s in self._streams.values() if s.waiting),
                "resume_held_bytes": sum(s.held_bytes for s in self._streams.values())}
