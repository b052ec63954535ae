"""Configuration of HTTP mode (``mesh share --http``) and of the proxy engine's limits.

Frozen and self-checking, like every configuration in mesh: a bad value is a
one-line ``ConfigError`` before any I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from mesh.errors import ConfigError
from mesh.proto.names import check_basic_auth, check_positive, parse_loopback

DEFAULT_INSPECT = "127.0.0.1:4040"


@dataclass(frozen=True)
class HttpConfig:
    """How the engine treats one client connection (``mesh share --http`` options and
    the gateway's limits)."""

    basic_auth: tuple[str, str] | None = None
    """Require these Basic credentials (checked by the sharer, never forwarded)."""
    host_header: str | None = None
    """``None`` keeps the client's Host, ``"rewrite"`` sends the service's host:port,
    anything else is sent as is."""
    inspect: str | None = "127.0.0.1:4040"
    """Address of the local inspector (loopback only); ``None`` disables it."""
    inspect_explicit: bool = False
    """``inspect`` was chosen by the user: if taken, fail rather than move on."""
    header_timeout: float = 10.0
    """Seconds a client has to finish a request head."""
    keepalive_timeout: float = 75.0
    """Seconds an idle keep-alive connection is kept."""
    body_timeout: float = 60.0
    """Seconds a request body may go silent before the request is abandoned with 408
    (nginx's client_body_timeout; the public gateway uses 10 s)."""
    max_head: int = 16 * 1024
    """Largest request head (request line and headers)."""
    body_cap: int = 128 * 1024
    """Bytes of each body kept for the inspector."""
    history: int = 200
    """Exchanges kept for the inspector."""
    upstream_timeout: float = 10.0
    """Seconds to connect to the upstream."""
    response_timeout: float | None = None
    """Seconds the upstream has to start its response (then 504); None: no limit."""
    max_body: int | None = None
    """Largest request body accepted (413 beyond it); None: no limit."""

    def __post_init__(self) -> None:
        if self.basic_auth is not None and not all(self.basic_auth):
            raise ConfigError("--basic-auth must be USER:PASS, both non-empty")
        if self.host_header is not None and (not self.host_header.strip() or any(
                c in self.host_header for c in "\r\n\0 ")):
            raise ConfigError("--host-header must be rewrite or a host[:port] without spaces")
        if self.inspect is not None:
            parse_loopback(self.inspect, "--inspect")  # the inspector can replay: loopback
        for what in ("header_timeout", "keepalive_timeout", "body_timeout",
                     "upstream_timeout"):
            check_positive(getattr(self, what), what)
        if self.max_head < 256 or self.body_cap < 0 or self.history < 0:
            raise ConfigError("max_head must be at least 256, body_cap and history >= 0")

    @classmethod
    def from_flags(cls, *, basic_auth: str | None = None, host_header: str | None = None,
                   inspect: str | None = None, no_inspect: bool = False) -> HttpConfig:
        """``--basic-auth``, ``--host-header``, ``--inspect`` (None: the default, which
        moves to the next free port when taken; an address given must be free) and
        ``--no-inspect``."""
        return cls(basic_auth=check_basic_auth(basic_auth, "--basic-auth")
                   if basic_auth is not None else None, host_header=host_header,
                   inspect=None if no_inspect else inspect or DEFAULT_INSPECT,
                   inspect_explicit=inspect is not None)
