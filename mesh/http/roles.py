"""What the share proxy and the connect guard decide about each request (the gateway's
role is mesh/node/gateway.py). Each is a ``Role`` of the engine in proxy.py.

- ``ShareRole`` (``mesh share --http``): Basic auth, then the header policy of
  policy.py, and the request goes to the shared service;
- ``GuardRole`` (``mesh connect --http``): a Host other than this listener is
  refused (421, DNS rebinding) before anything enters the tunnel.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import h11

from .policy import (
    Headers,
    Refusal,
    ShareHttpPolicy,
    framing,
    host_guard,
    is_upgrade,
    strip_hop_by_hop,
)
from .proxy import Opener, Route


@dataclass(frozen=True)
class ShareRole:
    """The sharing side of one admitted peer."""

    policy: ShareHttpPolicy
    dial: Opener
    """Opens a connection to the shared service."""
    peer: str
    """The admitted peer's node id (sent as X-Mesh-Peer)."""
    client: str
    """The peer's address (appended to X-Forwarded-For)."""
    trusted: bool = False
    """The peer is the tier's gateway: keep the caller it names in X-Forwarded-*."""
    on_error: Callable[[str], None] = field(default=lambda text: None)

    async def route(self, request: h11.Request, headers: Headers) -> Route | Refusal:
        refusal = self.policy.check(headers)
        if refusal is not None:
            return refusal
        out = self.policy.upstream_headers(headers, peer=self.peer, client=self.client,
                                           upgrade=is_upgrade(headers), trusted=self.trusted)
        return Route(key="service", opener=self.dial, target=request.target, headers=out,
                     peer=self.peer)

    def upstream_failed(self, text: str) -> None:
        self.on_error(text)


@dataclass(frozen=True)
class GuardRole:
    """The connecting side's local listener in HTTP mode."""

    port: int
    """The listener's port: the only one a Host may name."""
    tunnel: Opener
    """Opens a stream through the tunnel."""

    async def route(self, request: h11.Request, headers: Headers) -> Route | Refusal:
        refusal = host_guard(headers, self.port)
        if refusal is not None:
            return refusal
        out = strip_hop_by_hop(headers, keep_upgrade=is_upgrade(headers)) + framing(headers)
        return Route(key="tunnel", opener=self.tunnel, target=request.target, headers=out)

    def upstream_failed(self, text: str) -> None:
        pass
