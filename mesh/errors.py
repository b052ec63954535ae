"""The one error tree of mesh.

Every failure a user or a remote party can cause is raised as a subclass of
:class:`MeshError`. The message (``str(err)``) is the line shown to the user; the
class docstring says what the category means. Errors from aiortc, aiohttp and
zeroconf are translated into this tree where they enter (see ``translate``
helpers in the modules that wrap those libraries), and the CLI turns any
``MeshError`` into one line and the exit code given by ``exit_code``.
"""

from __future__ import annotations


class MeshError(Exception):
    """Something went wrong; the message says what."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(MeshError):
    """The command line, environment or configuration asks for something impossible."""

    exit_code = 2


class IdentityError(MeshError):
    """The node key could not be created, read or used."""


class TicketError(MeshError):
    """A ticket is malformed, tampered with, or expired."""

    exit_code = 3


class ProtocolError(MeshError):
    """A remote party sent something that breaks the protocol."""


class EnvelopeError(ProtocolError):
    """A signaling envelope failed to open or verify (tampered, replayed, misaddressed)."""


class EnvelopeKindError(EnvelopeError):
    """A valid envelope of a kind this side does not take (e.g. our own offer, seen by
    another process that shares our node key)."""


class SignalingError(MeshError):
    """The signaling server could not be reached or refused us."""

    exit_code = 4


class PeerUnreachable(SignalingError):
    """The signaling server does not know the peer we asked for (it is offline)."""


class ConnectError(MeshError):
    """The peer-to-peer connection could not be established."""

    exit_code = 5


class HandshakeError(ConnectError):
    """The peer's signed answer or its admission proof did not verify."""


class Refused(ConnectError):
    """The sharer declined the connection (not allowed, too many peers)."""


class AdmissionDenied(ConnectError):
    """The sharer refused to admit us."""


class ServiceError(MeshError):
    """The shared local service could not be reached."""


class AddressInUse(MeshError):
    """The local port asked for is already taken."""

    exit_code = 6


class NameTaken(MeshError):
    """A public name is held by another node key (first claim wins)."""

    exit_code = 7
