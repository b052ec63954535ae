"""Batches of UDP datagrams for segmentation offload: which go together, and apart again.

Sans-I/O. With Linux UDP GSO one ``sendmsg`` carries a buffer the kernel
cuts into datagrams of one size (the segment), the last one possibly
shorter; with UDP GRO one ``recvmsg`` returns such a run, its segment size in
a control message. ``runs`` groups a turn's datagrams, in order, into what
one call may carry; ``split`` cuts a received buffer back into datagrams.
"""

from __future__ import annotations

from collections.abc import Iterator


def runs(datagrams: list[bytes], max_bytes: int, max_segments: int
         ) -> Iterator[tuple[int, list[bytes]]]:
    """``(segment size, datagrams)`` in order: every datagram of a run has the
    segment size but the last, which may be shorter (and then ends the run);
    at most ``max_segments`` datagrams and ``max_bytes`` bytes per run."""
    run: list[bytes] = []
    size = total = 0
    for datagram in datagrams:
        length = len(datagram)
        if run and (length > size or len(run[-1]) < size or len(run) >= max_segments
                    or total + length > max_bytes):
            yield size, run
            run = []
        if not run:
            size, total = length, 0
        run.append(datagram)
        total += length
    if run:
        yield size, run


def split(buffer: bytes, segment: int) -> list[bytes]:
    """The datagrams of a coalesced receive (``segment`` 0 or more than the buffer: one)."""
    if segment <= 0 or segment >= len(buffer):
        return [buffer]
    return [buffer[i:i + segment] for i in range(0, len(buffer), segment)]
