"""Path MTU discovery for one association: mesh/proto/plpmtud.py's search, driven. Sans-I/O.

Probes are HEARTBEAT packets padded to the size under test (plpmtud.probe_packet),
sent outside the congestion window; their HEARTBEAT-ACKs confirm a size. This
class owns the probe and raise timers and reports what the association must
do: ``probes`` to send as they are, and ``changes`` of the packet size with
the don't-fragment setting the socket must have for it (a black hole drops
back to the base size with fragmentation allowed, so chunks already cut large
still arrive).
"""

from __future__ import annotations

from .. import plpmtud
from . import chunks as c


class PathMtu:
    def __init__(self, peer_max: int, port: int, remote_port: int, tag: int) -> None:
        self.search = plpmtud.Search(peer_max)
        self.port, self.remote_port, self.tag = port, remote_port, tag
        self.size = plpmtud.BASE
        self.probe_at: float | None = None
        self.raise_at: float | None = None
        self.probes: list[bytes] = []
        self.changes: list[tuple[int, bool]] = []

    def begin(self, now: float) -> None:
        self.changes.append((self.size, True))
        self._round(now)

    def timer(self, now: float) -> None:
        if self.probe_at is not None and now >= self.probe_at:
            self.probe_at = None
            self.search.timed_out()
            self._settle(now)
        if self.raise_at is not None and now >= self.raise_at:
            self.raise_at = None
            self.search.restart()
            self.changes.append((self.size, True))
            self._round(now)

    def heartbeat_ack(self, value: bytes, now: float) -> None:
        if len(value) < 4 + 16:
            return
        for kind, info in c.parse_params(value, 0):
            if kind == plpmtud.HB_INFO and self.search.acked(info) and not self.search.waiting:
                self.probe_at = None
                self._settle(now)

    def black_hole(self, now: float) -> None:
        """Packets of the current size stopped arriving (repeated T3 expiries)."""
        if self.size > plpmtud.BASE and self.search.black_hole():
            self.size = plpmtud.BASE
            self.changes.append((plpmtud.BASE, False))
            self.raise_at = now + plpmtud.RAISE_INTERVAL

    def stop(self) -> None:
        self.probe_at = self.raise_at = None

    def _round(self, now: float) -> None:
        for size, info in self.search.round():
            self.probes.append(plpmtud.probe_packet(self.port, self.remote_port, self.tag,
                                                    size, info))
        if self.search.waiting:
            self.probe_at = now + plpmtud.PROBE_TIMEOUT

    def _settle(self, now: float) -> None:
        search = self.search
        if search.current != self.size:
            self.size = search.current
            self.changes.append((self.size, True))
        if not search.done:
            self._round(now)
        elif not search.at_top:
            self.raise_at = now + plpmtud.RAISE_INTERVAL
