"""The receiving half of an SCTP association: TSNs, gaps, reassembly, what to acknowledge.

Owns RFC 9260 section 6.2 (acknowledging DATA), 6.5-6.6 (ordered and
unordered delivery), 6.9 (reassembly) and RFC 3758's FORWARD-TSN on the
receiving side. Everything here is bounded, and a peer that goes past a bound
gets a ``Violation`` (the association aborts with a cause):

- a message larger than ``max_message``, counted fragment by fragment as they
  arrive in any order, before the message is complete;
- data held for delivery beyond the receive ``window`` (plus ``SLACK``): a
  peer must not send beyond the window it was told.

A TSN too far ahead to be reported in a gap block (``MAX_AHEAD``) is dropped
unacknowledged, as RFC 9260 allows: the sender sends it again, and the set of
out-of-order TSNs stays bounded.

Sans-I/O, written for mypyc.
"""

from __future__ import annotations

from .chunks import FLAG_BEGIN, FLAG_END, FLAG_UNORDERED, DataChunk, SackChunk

MOD = 1 << 32
HALF = 1 << 31
MAX_DUPLICATES = 16
MAX_GAP_BLOCKS = 64
MAX_AHEAD = 65535
"""The furthest a TSN may be ahead of the cumulative one (gap offsets are 16-bit)."""
SLACK = 64 * 1024


class Violation(Exception):
    """The peer broke a limit this receiver announced; the text is the ABORT's cause."""


def after(a: int, b: int) -> bool:
    """``a`` comes after ``b`` in serial number arithmetic (RFC 1982)."""
    return a != b and ((a - b) % MOD) < HALF


class Message:
    """A complete user message."""

    __slots__ = ("data", "ppid", "stream_id")

    def __init__(self, stream_id: int, ppid: int, data: bytes) -> None:
        self.stream_id = stream_id
        self.ppid = ppid
        self.data = data


class _InStream:
    __slots__ = ("held", "next_ssn")

    def __init__(self) -> None:
        self.next_ssn = 0
        self.held: dict[int, Message] = {}
        """Ordered messages complete but waiting for an earlier SSN."""


class Receiver:
    def __init__(self, initial_tsn: int, window: int, max_message: int) -> None:
        self.cumulative = (initial_tsn - 1) % MOD
        """The last TSN received with every earlier one."""
        self.window = window
        self.max_message = max_message
        self.highest = self.cumulative
        self._ahead: set[int] = set()
        """TSNs received beyond ``cumulative`` (the gaps are between them)."""
        self._fragments: dict[int, DataChunk] = {}
        """Fragments of messages not yet complete, by TSN."""
        self._run_end: dict[int, tuple[int, int]] = {}
        """Runs of held fragments: first TSN -> (last TSN, bytes)."""
        self._run_start: dict[int, int] = {}
        """Runs of held fragments: last TSN -> first TSN."""
        self._streams: dict[int, _InStream] = {}
        self._duplicates: list[int] = []
        self.held_bytes = 0
        """Bytes received and not yet delivered (fragments and held messages)."""
        self.delivered: list[Message] = []
        self.sack_needed = False
        self.out_of_order = False
        """Something arrived out of order since the last SACK: acknowledge at once."""
        self.data_packets = 0
        """Packets with DATA since the last SACK (delayed acknowledgement, 6.2)."""

    # -- DATA -----------------------------------------------------------------------------
    def receive(self, chunk: DataChunk) -> None:
        tsn = chunk.tsn
        self.sack_needed = True
        if not after(tsn, self.cumulative) or tsn in self._ahead:
            if len(self._duplicates) < MAX_DUPLICATES:
                self._duplicates.append(tsn)
            self.out_of_order = True
            return
        if (tsn - self.cumulative) % MOD > MAX_AHEAD:
            return  # dropped, not acknowledged: it comes again
        in_order = tsn == (self.cumulative + 1) % MOD
        if in_order and not self._ahead:
            self.cumulative = tsn
            self.highest = tsn
        else:
            self._ahead.add(tsn)
            if after(tsn, self.highest):
                if tsn != (self.highest + 1) % MOD:
                    self.out_of_order = True
                self.highest = tsn
            else:
                self.out_of_order = True  # it fills a gap
            self._advance()
        flags = chunk.flags
        if flags & FLAG_BEGIN and flags & FLAG_END:
            self._complete(Message(chunk.stream_id, chunk.ppid, chunk.user_data),
                           not flags & FLAG_UNORDERED, chunk.ssn)
            return
        self._fragment(tsn, chunk)

    def _advance(self) -> None:
        ahead = self._ahead
        nxt = (self.cumulative + 1) % MOD
        while nxt in ahead:
            ahead.discard(nxt)
            self.cumulative = nxt
            nxt = (nxt + 1) % MOD

    def _stream(self, sid: int) -> _InStream:
        stream = self._streams.get(sid)
        if stream is None:
            stream = self._streams[sid] = _InStream()
        return stream

    # -- reassembly -----------------------------------------------------------------------------
    # A message's fragments have consecutive TSNs (RFC 9260 6.9). Fragments held are
    # kept as runs of consecutive TSNs that never cross a message boundary, indexed by
    # both ends, so each arriving fragment joins its neighbours in constant time, the
    # size of the message it belongs to is known at once (checked against the maximum
    # before the message is complete), and a run from a BEGIN to an END is a message.
    def _fragment(self, tsn: int, chunk: DataChunk) -> None:
        frags = self._fragments
        frags[tsn] = chunk
        size = len(chunk.user_data)
        self.held_bytes += size
        if self.held_bytes > self.window + SLACK:
            raise Violation("the peer sent beyond the receive window")
        first = last = tsn
        if not chunk.flags & FLAG_BEGIN:
            prev = (tsn - 1) % MOD
            if prev in self._run_start and not frags[prev].flags & FLAG_END:
                first = self._run_start.pop(prev)
                size += self._run_end.pop(first)[1]
        if not chunk.flags & FLAG_END:
            nxt = (tsn + 1) % MOD
            if nxt in self._run_end and not frags[nxt].flags & FLAG_BEGIN:
                later, later_size = self._run_end.pop(nxt)
                del self._run_start[later]
                last = later
                size += later_size
        if size > self.max_message:
            raise Violation(f"a message over the maximum of {self.max_message} bytes")
        head = frags[first]
        if head.flags & FLAG_BEGIN and frags[last].flags & FLAG_END:
            parts = []
            cur = first
            for _ in range((last - first) % MOD + 1):
                parts.append(frags.pop(cur).user_data)
                cur = (cur + 1) % MOD
            self.held_bytes -= size
            self._complete(Message(head.stream_id, head.ppid, b"".join(parts)),
                           not head.flags & FLAG_UNORDERED, head.ssn)
            return
        self._run_end[first] = (last, size)
        self._run_start[last] = first

    def _complete(self, message: Message, ordered: bool, ssn: int) -> None:
        if len(message.data) > self.max_message:
            raise Violation(f"a message over the maximum of {self.max_message} bytes")
        if not ordered:
            self.delivered.append(message)
            return
        stream = self._stream(message.stream_id)
        if ssn != stream.next_ssn:
            if ((ssn - stream.next_ssn) % 65536) < 32768 and ssn not in stream.held:
                stream.held[ssn] = message
                self.held_bytes += len(message.data)
                if self.held_bytes > self.window + SLACK:
                    raise Violation("the peer sent beyond the receive window")
            return
        self.delivered.append(message)
        stream.next_ssn = (ssn + 1) % 65536
        self._release(stream)

    def _release(self, stream: _InStream) -> None:
        """Deliver the held messages that are next in order."""
        while stream.next_ssn in stream.held:
            held = stream.held.pop(stream.next_ssn)
            self.held_bytes -= len(held.data)
            self.delivered.append(held)
            stream.next_ssn = (stream.next_ssn + 1) % 65536

    # -- FORWARD-TSN (RFC 3758) and stream reset --------------------------------------------
    def forward(self, new_cumulative: int, streams: list[tuple[int, int]]) -> None:
        """The sender abandoned everything up to ``new_cumulative``."""
        self.sack_needed = True
        if not after(new_cumulative, self.cumulative):
            return
        if (new_cumulative - self.cumulative) % MOD > MAX_AHEAD:
            raise Violation("FORWARD-TSN far beyond anything sent")
        advance = (new_cumulative - self.cumulative) % MOD
        if advance < len(self._ahead):
            for i in range(1, advance + 1):
                self._ahead.discard((self.cumulative + i) % MOD)
        else:
            self._ahead = {t for t in self._ahead if after(t, new_cumulative)}
        self._drop_runs(new_cumulative)
        self.cumulative = new_cumulative
        if after(new_cumulative, self.highest):
            self.highest = new_cumulative
        self._advance()
        for sid, ssn in streams:
            stream = self._stream(sid)
            if ((ssn - stream.next_ssn) % 65536) < 32768:  # skip up to and past ssn
                for skipped in [s for s in stream.held if ((ssn - s) % 65536) < 32768]:
                    self.held_bytes -= len(stream.held.pop(skipped).data)
                stream.next_ssn = (ssn + 1) % 65536
                self._release(stream)

    def _drop_runs(self, new_cumulative: int) -> None:
        """Drop partial messages missing a TSN the sender abandoned (RFC 3758 3.6)."""
        frags = self._fragments
        for first, (last, size) in list(self._run_end.items()):
            if after(first, new_cumulative):
                continue
            if frags[first].flags & FLAG_BEGIN and not after(new_cumulative, last):
                continue  # all it misses comes after the new cumulative TSN
            del self._run_end[first]
            del self._run_start[last]
            cur = first
            for _ in range((last - first) % MOD + 1):
                del frags[cur]
                cur = (cur + 1) % MOD
            self.held_bytes -= size

    def reset_stream(self, sid: int) -> None:
        """The peer reset its outgoing stream ``sid``: sequence numbers start over."""
        stream = self._streams.pop(sid, None)
        if stream is not None:
            for held in stream.held.values():
                self.held_bytes -= len(held.data)

    # -- SACK ---------------------------------------------------------------------------------
    def a_rwnd(self) -> int:
        return max(0, self.window - self.held_bytes)

    def sack(self) -> SackChunk:
        gaps: list[tuple[int, int]] = []
        if self._ahead:
            base = self.cumulative
            offsets = sorted((t - base) % MOD for t in self._ahead)  # all <= MAX_AHEAD
            start = prev = offsets[0]
            for off in offsets[1:]:
                if off != prev + 1:
                    gaps.append((start, prev))
                    if len(gaps) >= MAX_GAP_BLOCKS:
                        break
                    start = off
                prev = off
            else:
                gaps.append((start, prev))
        dups, self._duplicates = self._duplicates, []
        self.sack_needed = self.out_of_order = False
        self.data_packets = 0
        return SackChunk(self.cumulative, self.a_rwnd(), gaps, dups)
