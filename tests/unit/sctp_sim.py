"""Two data-channel cores over a simulated link, on a fake clock (no sockets).

The link loses, duplicates and reorders datagrams with a seeded random source,
delays each by ``latency`` plus up to ``jitter``, and enforces a path MTU: a
packet larger than ``mtu`` is dropped when its sender has DF set (the core says
so with ``PacketSize``), and passes (as IP fragments would) when it has not.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field
from typing import Any

from mesh.proto.sctp import channels as ch
from mesh.proto.sctp.association import ESTABLISHED
from mesh.proto.sctp.events import PacketSize


@dataclass
class Side:
    core: ch.DataChannels
    name: str
    events: list[Any] = field(default_factory=list)
    received: dict[int, list[bytes | str]] = field(default_factory=dict)
    df: bool = False
    sizes: list[int] = field(default_factory=list)
    opened: list[ch.Channel] = field(default_factory=list)
    closed: list[int] = field(default_factory=list)


@dataclass
class Link:
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    latency: float = 0.005
    jitter: float = 0.0
    mtu: int = 1 << 20
    seed: int = 1
    sent: int = 0
    dropped: int = 0
    largest: int = 0


class Sim:
    def __init__(self, link: Link | None = None, *, discover: bool = True,
                 window: int = 4 * 1024 * 1024, max_message: int = 256 * 1024,
                 initial_tsn: int | None = None) -> None:
        self.link = link or Link()
        self.rng = random.Random(self.link.seed)
        self.now = 0.0
        self.a = Side(ch.DataChannels(client=True, now=0.0, discover=discover, window=window,
                                      max_message=max_message, initial_tsn=initial_tsn), "a")
        self.b = Side(ch.DataChannels(client=False, now=0.0, discover=discover, window=window,
                                      max_message=max_message, initial_tsn=initial_tsn), "b")
        self._queue: list[tuple[float, int, Side, bytes]] = []
        self._seq = 0
        self.a.core.start(0.0)

    def peer(self, side: Side) -> Side:
        return self.b if side is self.a else self.a

    def _send(self, side: Side) -> None:
        link = self.link
        for packet in side.core.datagrams_to_send(self.now):
            link.sent += 1
            link.largest = max(link.largest, len(packet))
            if len(packet) > link.mtu and side.df:
                link.dropped += 1
                continue
            if self.rng.random() < link.loss:
                link.dropped += 1
                continue
            copies = 2 if self.rng.random() < link.duplicate else 1
            for _ in range(copies):
                delay = link.latency + self.rng.random() * link.jitter
                if self.rng.random() < link.reorder:
                    delay += link.latency * 2
                self._seq += 1
                heapq.heappush(self._queue, (self.now + delay, self._seq, self.peer(side),
                                             packet))

    def _collect(self, side: Side) -> None:
        while (event := side.core.next_event()) is not None:
            side.events.append(event)
            if isinstance(event, ch.Message):
                side.received.setdefault(event.channel_id, []).append(event.data)
            elif isinstance(event, PacketSize):
                side.df = event.dont_fragment
                side.sizes.append(event.size)
            elif isinstance(event, ch.Opened):
                side.opened.append(event.channel)
            elif isinstance(event, ch.ChannelClosed):
                side.closed.append(event.channel_id)

    def step(self, limit: float = float("inf")) -> bool:
        """Advance to the next thing that happens, if it is before ``limit``; False when
        nothing is left before it."""
        for side in (self.a, self.b):
            self._send(side)
            self._collect(side)
        timers = [t for t in (self.a.core.get_timer(), self.b.core.get_timer())
                  if t is not None]
        nxt = min(([self._queue[0][0]] if self._queue else []) + timers + [float("inf")])
        if nxt == float("inf") or nxt > limit:
            return False
        self.now = max(self.now, nxt)
        batch: dict[int, list[bytes]] = {}
        while self._queue and self._queue[0][0] <= self.now:
            _, _, side, packet = heapq.heappop(self._queue)
            batch.setdefault(id(side), []).append(packet)
        for side in (self.a, self.b):
            for packet in batch.get(id(side), []):
                side.core.receive_datagram(packet, self.now)
            timer = side.core.get_timer()
            if timer is not None and timer <= self.now:
                side.core.handle_timer(self.now)
            self._collect(side)
        return True

    def run(self, until: float = 60.0, done: Any = None) -> None:
        while self.now < until:
            if done is not None and done():
                return
            if not self.step(until):
                self.now = max(self.now, until)
                return

    def established(self) -> bool:
        return all(s.core.association.state == ESTABLISHED for s in (self.a, self.b)) and (
            self.a.core.ready and self.b.core.ready)
