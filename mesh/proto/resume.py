"""Resumable streams: what lets a tunnelled TCP connection move to a new peer connection.

A stream is named by an id the connector draws (``new_id``: 64 random bits,
16 hex digits) and sends as the data channel's protocol, ``id=<hex>``: label
``tcp`` opens a new stream, label ``tcp-resume`` (``RESUME_LABEL``) asks the
sharer to move that stream onto the new channel. The sharer looks streams up
by (the admitted peer's node id, stream id), so a resume from another key, or
for another peer's stream, finds nothing and is refused.

Each side keeps the bytes it sent that the peer has not yet consumed
(``Retained``), acknowledged by the ``a`` field of ``credit``; the peer's
window bounds them. On the new channel both sides first send ``resume``
(mesh/proto/stream.py) with the bytes they received in all; each then sends
again what the other lacks (``Retained.since``), and its FIN if the other
missed it. Sans-I/O.
"""

from __future__ import annotations

import secrets
from collections import deque

from mesh.errors import ProtocolError

RESUME_LABEL = "tcp-resume"
_HEX = frozenset("0123456789abcdef")


def new_id() -> str:
    return secrets.token_hex(8)


def protocol(sid: str) -> str:
    """The data channel protocol that names stream ``sid``."""
    return f"id={sid}"


def parse_protocol(text: str) -> str | None:
    """The stream id a channel's protocol names, or None (none, or malformed)."""
    if not text.startswith("id="):
        return None
    sid = text[3:]
    return sid if len(sid) == 16 and set(sid) <= _HEX else None


class Retained:
    """Bytes sent and not yet acknowledged, by offset in the stream."""

    def __init__(self) -> None:
        self.base = 0
        """Offset of the first byte kept."""
        self.size = 0
        self._chunks: deque[bytes] = deque()

    @property
    def end(self) -> int:
        """Offset of the next byte to be sent."""
        return self.base + self.size

    def add(self, data: bytes) -> None:
        if data:
            self._chunks.append(data)
            self.size += len(data)

    def ack(self, upto: int) -> None:
        """Forget the bytes below offset ``upto`` (the peer has them)."""
        if upto > self.end:
            raise ProtocolError(f"acknowledgement of byte {upto} beyond the {self.end} sent")
        drop = upto - self.base
        while drop > 0:
            head = self._chunks[0]
            if len(head) <= drop:
                self._chunks.popleft()
                cut = len(head)
            else:
                self._chunks[0] = head[drop:]
                cut = drop
            drop -= cut
            self.base += cut
            self.size -= cut

    def since(self, offset: int) -> list[bytes]:
        """The bytes from ``offset`` on, after forgetting those before it."""
        if offset < self.base:
            raise ProtocolError(f"byte {offset} was acknowledged already (kept from "
                                f"{self.base})")
        self.ack(offset)
        return list(self._chunks)
