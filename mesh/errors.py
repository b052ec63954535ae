"""The one error tree of mesh.

Every failure a user or a remote party can cause is raised as a subclass of
:class:`MeshError`. The message (``str(err)``) is the line shown to the user; the
class docstring says what the category means. Errors from aiortc, aiohttp and
zeroconf are translated into this tree where they enter (see ``translate``
helpers in the modules that wrap those libraries), and the CLI turns any
``MeshError`` into one line and the exit code given by ``exit_code``.

Exit codes (``EXIT_CODES``; the README has the same table):

====  =============================================================
0     stopped by SIGTERM, or done
1     other error
2     bad configuration (a flag, a variable, a file)
3     bad ticket (malformed, tampered, expired)
4     signaling server unreachable or refusing, or the share offline
5     peer connection or admission failed
6     a local address or port is in use
7     a public name is held by another key (ownership)
70    internal error (a bug: one line; details with ``-v``)
130   interrupted (Ctrl-C)
====  =============================================================

This module imports nothing of mesh: every layer may raise these.
"""

from __future__ import annotations

INTERNAL = 70
INTERRUPTED = 130


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


class RelayRefused(ConnectError):
    """The TURN relay refused every address of the peer (its policy, e.g. loopback)."""


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


class NotOwner(NameTaken):
    """This node key does not hold the public name it tried to change."""


EXIT_CODES: dict[int, str] = {
    0: "stopped by SIGTERM, or done",
    1: "other error",
    2: "bad configuration",
    3: "bad ticket",
    4: "signaling server unreachable, or the share offline",
    5: "peer connection or admission failed",
    6: "a local address or port is in use",
    7: "a public name is held by another key",
    INTERNAL: "internal error",
    INTERRUPTED: "interrupted (Ctrl-C)",
}
