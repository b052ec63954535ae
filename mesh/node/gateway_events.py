"""The events of the public side: public names and pools, the gateway, certificates.

Part of the ``--json`` contract like every event in events.py (which re-exports
these, so ``events.Public`` etc. keep working).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from .events import Event


@dataclass(frozen=True)
class Public(Event):
    """A ``--public`` share holds its name; the gateway serves it at ``url``."""

    event: ClassVar[str] = "public"
    name: str
    url: str
    """``scheme://NAME.DOMAIN/`` (needs wildcard DNS for the domain)."""
    path_url: str
    """``GATEWAY/s/NAME/``: works without wildcard DNS."""

    def human(self) -> str:
        return f"public: {self.url} (or {self.path_url})"


@dataclass(frozen=True)
class Serving(Event):
    """``mesh serve``: signaling, STUN/TURN and the gateway are up in one process."""

    event: ClassVar[str] = "ready"
    url: str
    """The signaling URL sharers give as --signal."""
    gateway_url: str
    domain: str
    node_id: str
    """The gateway's key, pinned by the signaling server."""
    stun: list[str] = field(default_factory=list)
    turn: list[str] = field(default_factory=list)

    @property
    def share_command(self) -> str:
        return f"mesh share PORT --public --name NAME --signal {self.url}"

    def human(self) -> str:
        return (f"serving *.{self.domain} on {self.gateway_url} (signaling {self.url})\n"
                f"give sharers:\n\n  {self.share_command}\n")

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "share_command": self.share_command}


@dataclass(frozen=True)
class Certificate(Event):
    """The gateway got (or renewed) a certificate from its ACME server."""

    event: ClassVar[str] = "certificate"
    name: str
    not_after: str
    """ISO 8601, UTC."""

    def human(self) -> str:
        return f"certificate for {self.name} until {self.not_after}"


@dataclass(frozen=True)
class GatewayReady(Event):
    """``mesh gateway`` is serving."""

    event: ClassVar[str] = "ready"
    url: str
    node_id: str
    domain: str
    metrics_url: str | None = None
    """``--metrics``: where Prometheus reads the gateway's pools and cache."""

    def human(self) -> str:
        metrics = f"; metrics at {self.metrics_url}" if self.metrics_url else ""
        return (f"mesh gateway for *.{self.domain} listening on {self.url} "
                f"(node {self.node_id}; pin it with `mesh signal --gateway {self.node_id}`"
                f"{metrics})")


@dataclass(frozen=True)
class Released(Event):
    """`mesh release`: the public name is free again."""

    event: ClassVar[str] = "released"
    name: str

    def human(self) -> str:
        return f"released the public name {self.name!r}"


@dataclass(frozen=True)
class Members(Event):
    """`mesh name add|remove|show`: who may publish a public name, and who is online."""

    event: ClassVar[str] = "members"
    name: str
    owner: str
    members: tuple[str, ...]
    online: tuple[str, ...]

    def human(self) -> str:
        def row(role: str, node: str) -> str:
            return f"  {role:7} {node}  {'online' if node in self.online else 'offline'}"
        lines = [f"public name {self.name!r}:", row("owner", self.owner)]
        lines += [row("member", node) for node in self.members]
        if not self.members:
            lines.append("  (no other members: `mesh name add NAME NODE_ID`)")
        return "\n".join(lines)
