"""What an SCTP association reports to its user (mesh/proto/sctp/association.py)."""

from __future__ import annotations

from .receiver import Message


class Established:
    """The association is up."""


class Delivered:
    __slots__ = ("message",)

    def __init__(self, message: Message) -> None:
        self.message = message


class StreamsReset:
    """Streams reset: ``incoming`` by the peer, or our ``outgoing`` ones confirmed."""

    def __init__(self, streams: list[int], incoming: bool) -> None:
        self.streams = streams
        self.incoming = incoming


class BufferedLow:
    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id


class PacketSize:
    """The largest packet now sent; ``dont_fragment``: what the socket's DF must be."""

    def __init__(self, size: int, dont_fragment: bool) -> None:
        self.size = size
        self.dont_fragment = dont_fragment


class Closed:
    def __init__(self, reason: str, by_peer: bool = False) -> None:
        self.reason = reason
        self.by_peer = by_peer
        """The peer ended it (ABORT or SHUTDOWN), rather than a failure or our close."""


Event = Established | Delivered | StreamsReset | BufferedLow | PacketSize | Closed
