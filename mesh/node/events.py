"""Events the Python API reports and the CLI prints.

Each event is a frozen dataclass with ``event`` (its name in ``--json``
output: a public contract scripts depend on; extend, never rename) and
``human()`` (the line shown without ``--json``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from mesh.http.capture import Exchange


@dataclass(frozen=True)
class Event:
    event: ClassVar[str] = "event"

    def to_json(self) -> dict[str, Any]:
        return {"event": self.event, **asdict(self)}

    def human(self) -> str:
        return self.event


@dataclass(frozen=True)
class Ready(Event):
    """A share is registered and can be connected to."""

    event: ClassVar[str] = "ready"
    ticket: str
    node_id: str
    name: str
    target: str
    signal_url: str
    proto: str = "tcp"
    """``tcp``, ``udp`` or ``tcp+udp``."""

    def human(self) -> str:
        what = self.target if self.proto == "tcp" else f"{self.target} ({self.proto})"
        return (f"sharing {what} as {self.name or 'share'!r} (node {self.node_id[:8]})\n"
                f"connect from another machine with:\n\n  mesh connect {self.ticket}\n")


@dataclass(frozen=True)
class SignalReady(Event):
    """The signaling server is serving."""

    event: ClassVar[str] = "ready"
    url: str
    stun: list[str] = field(default_factory=list)
    turn: list[str] = field(default_factory=list)

    def human(self) -> str:
        extra = f" (STUN {', '.join(self.stun)}; TURN {', '.join(self.turn)})" if self.stun else ""
        return f"mesh signaling server listening on {self.url}{extra}"


@dataclass(frozen=True)
class Listening(Event):
    event: ClassVar[str] = "listening"
    host: str
    port: int
    proto: str = "tcp"
    """``tcp`` or ``udp`` (a share carrying both: one event for each)."""

    def human(self) -> str:
        return f"listening on {self.host}:{self.port}" + (
            " (udp)" if self.proto == "udp" else "")


@dataclass(frozen=True)
class Connected(Event):
    """A peer connection is up and admitted (either side)."""

    event: ClassVar[str] = "connected"
    peer: str
    path: str
    local_candidate: str
    remote_candidate: str
    remote_addr: str
    rtt_ms: float | None
    connect_ms: float
    extra: dict[str, Any] = field(default_factory=dict)
    portmap: str | None = None
    """The router port mapping this side offered as a candidate (``ip:port``), if any."""

    def to_json(self) -> dict[str, Any]:
        data = super().to_json()
        data.update(data.pop("extra"))
        return data

    def human(self) -> str:
        rtt = f", rtt {self.rtt_ms:.1f} ms" if self.rtt_ms is not None else ""
        return (f"connected to {self.peer[:8]} via {self.path} "
                f"({self.local_candidate} -> {self.remote_candidate} {self.remote_addr}{rtt}, "
                f"set up in {self.connect_ms:.0f} ms)")


@dataclass(frozen=True)
class PathMtu(Event):
    """Path MTU discovery settled on a packet size for a peer connection."""

    event: ClassVar[str] = "path_mtu"
    peer: str
    packet: int
    """The largest SCTP packet now sent to this peer, in bytes."""

    def human(self) -> str:
        return f"packets to {self.peer[:8]} now up to {self.packet} bytes (path MTU discovery)"


@dataclass(frozen=True)
class Disconnected(Event):
    event: ClassVar[str] = "disconnected"
    peer: str
    reason: str
    waiting: int = 0
    """Tunnelled connections waiting for the peer to come back (``--resume-timeout``)."""

    def human(self) -> str:
        waiting = (f"; {self.waiting} connection{'s' * (self.waiting != 1)} waiting for it"
                   if self.waiting else "")
        return f"peer {self.peer[:8]} disconnected: {self.reason}{waiting}"


@dataclass(frozen=True)
class Tagged(Event):
    """An event of one entry of ``mesh up``: the entry's own, with ``tunnel`` added."""

    inner: Event
    tunnel: str

    def to_json(self) -> dict[str, Any]:
        return {**self.inner.to_json(), "tunnel": self.tunnel}

    def human(self) -> str:
        return f"[{self.tunnel}] {self.inner.human()}"


@dataclass(frozen=True)
class UpReady(Event):
    """``mesh up`` started every tunnel of its file."""

    event: ClassVar[str] = "up"
    file: str
    tunnels: list[str]

    def human(self) -> str:
        return f"{self.file}: {len(self.tunnels)} tunnels up ({', '.join(self.tunnels)})"


@dataclass(frozen=True)
class Reloaded(Event):
    """``mesh up`` read its file again (SIGHUP)."""

    event: ClassVar[str] = "reloaded"
    added: list[str]
    removed: list[str]
    changed: list[str]
    kept: list[str]
    failed: list[str]

    def human(self) -> str:
        parts = [f"{k} {', '.join(v)}" for k, v in (
            ("added", self.added), ("removed", self.removed), ("changed", self.changed),
            ("kept", self.kept), ("failed", self.failed)) if v]
        return "reloaded: " + ("; ".join(parts) or "nothing changed")


@dataclass(frozen=True)
class Resumed(Event):
    """Tunnelled connections carried on over a new peer connection."""

    event: ClassVar[str] = "resumed"
    peer: str
    streams: int
    gap_ms: float
    """The longest time one of them waited (loss, or the move to a better path, to resume)."""

    def human(self) -> str:
        return (f"resumed {self.streams} connection{'s' * (self.streams != 1)} with peer "
                f"{self.peer[:8]} after {self.gap_ms:.0f} ms")


@dataclass(frozen=True)
class Rejected(Event):
    """The sharer refused a peer (wrong secret, not allowed, too many peers)."""

    event: ClassVar[str] = "rejected"
    peer: str
    reason: str

    def human(self) -> str:
        return f"refused peer {self.peer[:8]}: {self.reason}"


@dataclass(frozen=True)
class Signal(Event):
    """The signaling session changed state (registered, disconnected)."""

    event: ClassVar[str] = "signal"
    state: str
    url: str
    lan: bool = False
    """A share's own LAN endpoint (its built-in signaling on the LAN), not a server the
    user named."""

    def human(self) -> str:
        where = f"the share's LAN endpoint {self.url}" if self.lan else (
            f"signaling server {self.url}")
        return f"{where}: {self.state}"


@dataclass(frozen=True)
class Warning(Event):
    event: ClassVar[str] = "warning"
    message: str

    def human(self) -> str:
        return f"warning: {self.message}"


@dataclass(frozen=True)
class TicketRenewed(Event):
    """The share's ticket expired (connections it admitted go on); the new one to hand out."""

    event: ClassVar[str] = "ticket"
    ticket: str
    expires: int
    """Unix seconds."""

    def human(self) -> str:
        return ("new ticket (the previous one expired); connect with:\n\n"
                f"  mesh connect {self.ticket}\n")


@dataclass(frozen=True)
class Request(Event):
    """One HTTP exchange through a ``--http`` share (logged when it ends)."""

    event: ClassVar[str] = "request"
    id: int
    method: str
    path: str
    status: int | None
    duration_ms: float | None
    bytes_in: int
    """Request body bytes (client to service)."""
    bytes_out: int
    """Response body bytes (service to client)."""
    peer: str
    client: str
    state: str = "complete"
    """complete, upgraded (WebSocket and other protocol switches) or error."""
    replay_of: int | None = None
    error: str | None = None
    refused: str | None = None
    """Why mesh answered the request itself (401, 408, 431, ...) instead of forwarding it."""
    member: str | None = None
    """At a gateway: the pool member (node id) that served it."""
    cache: str | None = None
    """At a gateway with ``--cache-size``: hit, miss, revalidated, or None (not cacheable)."""
    retries: int = 0
    """At a gateway: 1 if the request went to a second member after the first failed."""

    @classmethod
    def from_exchange(cls, ex: Exchange) -> Request:
        return cls(id=ex.id, method=ex.method, path=ex.target, status=ex.status,
                   duration_ms=ex.duration_ms, bytes_in=ex.request_body.size,
                   bytes_out=ex.response_body.size, peer=ex.peer, client=ex.client,
                   state=ex.state, replay_of=ex.replay_of, error=ex.error, refused=ex.refused,
                   member=ex.member, cache=ex.cache, retries=ex.retries)

    def human(self) -> str:
        status = self.status if self.status is not None else "---"
        ms = f"{self.duration_ms:.1f} ms" if self.duration_ms is not None else "-"
        extra = f" (replay of #{self.replay_of})" if self.replay_of else ""
        extra += f" [{self.state}]" if self.state not in ("complete",) else ""
        extra += f": {self.error}" if self.error else ""
        extra += f" (refused: {self.refused})" if self.refused else ""
        extra += f" via {self.member[:12]}" if self.member else ""
        extra += f" cache {self.cache}" if self.cache else ""
        extra += " (retried)" if self.retries else ""
        return (f"{self.method} {self.path} {status} {ms} "
                f"{_size(self.bytes_in)} in {_size(self.bytes_out)} out{extra}")


@dataclass(frozen=True)
class InspectorReady(Event):
    """The local request inspector of a ``--http`` share is serving."""

    event: ClassVar[str] = "inspector"
    url: str

    def human(self) -> str:
        return f"inspector: {self.url}"


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n / 1024 / 1024:.1f} MiB"


@dataclass(frozen=True)
class ErrorEvent(Event):
    event: ClassVar[str] = "error"
    message: str

    def human(self) -> str:
        return f"mesh: error: {self.message}"


@dataclass(frozen=True)
class NetcheckEvent(Event):
    event: ClassVar[str] = "netcheck"
    signal_url: str
    signal_rtt_ms: float | None
    stun_server: str | None
    udp: bool
    public_addr: str | None
    mapping: str
    stun_rtt_ms: float | None
    turn_udp: bool | None
    turn_tcp: bool | None
    notes: list[str]
    relay_policy: dict[str, Any] | None = None
    """The embedded relay's peer policy as the server told it (None: not told)."""
    portmap: dict[str, Any] | None = None
    """What the router offers: ``gateway``, ``pcp``, ``nat_pmp``, ``upnp`` (each True if
    it granted a mapping), ``mapped`` (``ip:port``), ``protocol`` (the one mesh uses);
    None with ``--no-portmap``."""

    def human(self) -> str:
        def yn(v: bool | None) -> str:
            return "n/a" if v is None else "yes" if v else "NO"

        nat = {"endpoint-independent": "endpoint-independent mapping (cone NAT or none): "
                                       "direct connections likely",
               "endpoint-dependent": "endpoint-dependent mapping (symmetric NAT): "
                                     "expect the relay"}.get(self.mapping, "unknown")
        lines = [
            f"signaling      {self.signal_url}  rtt {self.signal_rtt_ms} ms",
            f"UDP            {yn(self.udp)}" + (f" (STUN {self.stun_server}, rtt "
                                               f"{self.stun_rtt_ms} ms)" if self.udp else ""),
            f"public address {self.public_addr or '-'}",
            f"NAT            {nat}",
            f"TURN over UDP  {yn(self.turn_udp)}",
            f"TURN over TCP  {yn(self.turn_tcp)}",
        ]
        if self.portmap is not None:
            lines.append(f"port mapping   {_portmap_line(self.portmap)}")
        if self.relay_policy is not None:
            allows = ", ".join(self.relay_policy.get("allows") or []) or "nothing more"
            lines.append(f"relay refuses  {self.relay_policy.get('refuses')}; "
                         f"--relay-allow opens: {allows}")
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


def _portmap_line(report: dict[str, Any]) -> str:
    if report.get("gateway") is None:
        return "no IPv4 default gateway"
    offers = ", ".join(f"{name} {'yes' if report.get(key) else 'no'}" for name, key in
                       (("PCP", "pcp"), ("NAT-PMP", "nat_pmp"), ("UPnP", "upnp")))
    mapped = report.get("mapped")
    return f"{offers} (router {report['gateway']}" + (f", mapped {mapped})" if mapped
                                                      else ")")


OnEvent = Callable[[Event], None]


def ignore(_: Event) -> None:
    pass


# the public side's events (gateway, names) live beside; every event is importable here
from .gateway_events import Certificate as Certificate  # noqa: E402
from .gateway_events import GatewayReady as GatewayReady  # noqa: E402
from .gateway_events import Members as Members  # noqa: E402
from .gateway_events import Public as Public  # noqa: E402
from .gateway_events import Released as Released  # noqa: E402
from .gateway_events import Serving as Serving  # noqa: E402
