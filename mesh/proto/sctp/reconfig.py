"""Stream resets (RFC 6525): how a data channel closes. Sans-I/O.

Our side: streams to reset wait until every byte queued on them has been sent
once, then go out in one Outgoing SSN Reset Request (sequence numbers start at
our initial TSN), retransmitted unchanged until the peer answers "performed".
The peer's side: its request is carried out (our incoming streams start their
sequence numbers over) once every DATA up to its "last TSN" has arrived;
until then it is answered "in progress" and the peer asks again. A request
carried out before is answered again without resetting twice.
"""

from __future__ import annotations

from struct import pack, unpack_from

from . import chunks as c
from .events import Event, StreamsReset
from .receiver import MOD, Receiver, after
from .sender import Sender

PERFORMED = 1
IN_PROGRESS = 6


class Resets:
    def __init__(self, initial_tsn: int) -> None:
        self.seq = initial_tsn
        self.peer_initial_tsn = 0
        self.retry_at: float | None = None
        self._ask: list[int] = []
        self._pending: tuple[int, list[int], bytes] | None = None
        self._peer_seq: int | None = None
        self._waiting: list[tuple[int, int, list[int]]] = []
        self._performed: set[int] = set()

    def ask(self, streams: list[int]) -> None:
        self._ask += [s for s in streams if s not in self._ask]

    def request(self, now: float, sender: Sender) -> bytes | None:
        """Our next request, if one may go out now."""
        if not self._ask or self._pending is not None:
            return None
        ready = [s for s in self._ask if s not in sender.streams or (
            not sender.streams[s].queue and sender.streams[s].buffered == 0)]
        if not ready:
            return None
        self._ask = [s for s in self._ask if s not in ready]
        seq, self.seq = self.seq, (self.seq + 1) % MOD
        answered = (self._peer_seq if self._peer_seq is not None
                    else self.peer_initial_tsn - 1) % MOD
        value = pack("!III", seq, answered, (sender.next_tsn - 1) % MOD) + b"".join(
            pack("!H", s) for s in ready)
        chunk = c.value_chunk(c.RECONFIG, [(c.PARAM_OUTGOING_RESET, value)]).encode()
        self._pending = (seq, ready, chunk)
        self.retry_at = now + max(sender.rto, 0.5)
        return chunk

    def timer(self, now: float, rto: float) -> bytes | None:
        """The same request again once its answer is overdue."""
        if self._pending is None or self.retry_at is None or now < self.retry_at:
            return None
        self.retry_at = now + min(2 * max(rto, 0.5), 30.0)
        return self._pending[2]

    def receive(self, params: list[tuple[int, bytes]], receiver: Receiver,
                sender: Sender) -> tuple[list[bytes], list[Event]]:
        control: list[bytes] = []
        events: list[Event] = []
        for kind, value in params:
            if kind == c.PARAM_OUTGOING_RESET and len(value) >= 12:
                seq, _, last_tsn = unpack_from("!III", value, 0)
                streams = [int(unpack_from("!H", value, pos)[0])
                           for pos in range(12, len(value) - 1, 2)]
                self._peer_seq = seq
                done = seq in self._performed or not after(last_tsn, receiver.cumulative)
                control.append(c.value_chunk(c.RECONFIG, [(c.PARAM_RECONFIG_RESPONSE, pack(
                    "!II", seq, PERFORMED if done else IN_PROGRESS))]).encode())
                if seq in self._performed:
                    continue
                if done:
                    events.append(self._perform(seq, streams, receiver))
                elif all(w[0] != seq for w in self._waiting):
                    self._waiting.append((seq, last_tsn, streams))
            elif kind == c.PARAM_RECONFIG_RESPONSE and len(value) >= 8:
                seq, result = unpack_from("!II", value, 0)
                pending = self._pending
                if pending is not None and seq == pending[0] and result == PERFORMED:
                    self._pending = None
                    self.retry_at = None
                    for sid in pending[1]:
                        sender.reset_stream(sid)
                    events.append(StreamsReset(pending[1], incoming=False))
        return control, events

    def check(self, receiver: Receiver) -> list[Event]:
        """Carry out the peer's requests whose last TSN has arrived by now."""
        if not self._waiting:
            return []
        events: list[Event] = []
        waiting = []
        for seq, last_tsn, streams in self._waiting:
            if after(last_tsn, receiver.cumulative):
                waiting.append((seq, last_tsn, streams))
            else:
                events.append(self._perform(seq, streams, receiver))
        self._waiting = waiting
        return events

    def _perform(self, seq: int, streams: list[int], receiver: Receiver) -> Event:
        self._performed.add(seq)
        for sid in streams:
            receiver.reset_stream(sid)
        return StreamsReset(streams, incoming=True)
