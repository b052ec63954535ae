"""Configuration of the node roles: share, connect, gateway. Frozen, and self-checking.

Each class checks every field in ``__post_init__`` (with mesh/proto/names.py)
and raises ``ConfigError`` with a one-line message, before any I/O; the
command line, the Python API and ``mesh.toml`` build these same classes, so
they accept and refuse the same things with the same words. Defaults that
come from the environment (``MESH_ICE_ADDRESSES``, ``MESH_PLPMTUD``) are read
through environ.py.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from mesh.errors import ConfigError
from mesh.http.config import HttpConfig
from mesh.http.edge import EdgePolicy
from mesh.proto import names
from mesh.proto.ticket import Ticket
from mesh.transport.settings import IceSettings

from . import environ
from .pool import check_balance
from .routes import Rule


def ice_from_env() -> IceSettings:
    return IceSettings(host_addresses=environ.ice_addresses(),
                       plpmtud=environ.plpmtud_enabled(),
                       udp_offload=environ.udp_offload_enabled(),
                       portmap=environ.portmap_enabled())


def _positive(obj: object, *fields: str, zero_ok: bool = False) -> None:
    for name in fields:
        names.check_positive(getattr(obj, name), name.replace("_", "-"), zero_ok=zero_ok)


@dataclass(frozen=True)
class ShareConfig:
    port: int
    """Port of the service to share."""
    host: str = "127.0.0.1"
    """Host of the service to share (the sharer dials only host:port)."""
    name: str = ""
    """Name of the share (a DNS label); empty: ``<hostname>-<port>``."""
    signal_urls: tuple[str, ...] = ()
    """Signaling servers to register with, in order of preference."""
    ttl: float = 7 * 24 * 3600
    """Seconds the ticket stays valid (at least 60)."""
    allow: frozenset[str] | None = None
    """If set, only these peer node ids are admitted."""
    max_peers: int = 64
    """Admitted peers connected at once."""
    max_streams: int = 4096
    """Concurrent tunnelled connections per peer."""
    handshake_timeout: float = 15.0
    """Seconds a peer has from its offer to admission."""
    dial_timeout: float = 10.0
    """Seconds to connect to the shared service."""
    idle_timeout: float = 0.0
    """Close a tunnelled connection idle this many seconds (0: never)."""
    control_socket: bool = True
    """Answer `mesh status` on a local Unix socket."""
    persist_secret: bool = True
    """Keep the admission secret per share name, so tickets survive restarts."""
    new_ticket: bool = False
    """Replace the kept secret: every older ticket for this name stops working."""
    lan: bool = True
    """Serve signaling on the LAN and advertise the share with mDNS."""
    lan_host: str = "0.0.0.0"
    """Address the LAN signaling endpoint listens on."""
    lan_open: bool = False
    """Admit LAN peers that connect by name, without the ticket (always so when no
    signaling server is configured: LAN-only mode)."""
    http: HttpConfig | None = None
    """Speak HTTP/1.1 to the service: request log, inspector, auth (``--http``)."""
    public: bool = False
    """Claim ``name`` and let the signaling tier's gateway serve it (``--public``)."""
    public_auth: tuple[str, str] | None = None
    """Basic credentials the gateway demands from public callers (``--public-auth``)."""
    udp: bool = False
    """Share a UDP service (``--udp``): datagrams on unreliable, unordered channels."""
    tcp: bool | None = None
    """Share TCP too (``--tcp``); unset: TCP unless ``udp``."""
    udp_idle: float = 60.0
    """Seconds a UDP flow lives without a datagram either way."""
    max_flows: int = 256
    """UDP flows (client addresses, each its own socket toward the service) per peer."""
    resume_timeout: float = 60.0
    """Seconds a tunnelled connection waits for its peer to come back after the peer
    connection is lost (0: connections end with the peer connection)."""
    ice: IceSettings = field(default_factory=ice_from_env)
    """Which local addresses ICE uses, and path MTU discovery."""

    def __post_init__(self) -> None:
        if self.tcp is None:
            object.__setattr__(self, "tcp", not self.udp)
        if not (self.tcp or self.udp):
            raise ConfigError("share TCP, UDP or both (--tcp, --udp)")
        if self.udp and (self.http is not None or self.public):
            flag = "--public" if self.public else "--http"
            raise ConfigError(f"--udp cannot go with {flag}: HTTP and the public gateway "
                              "run over TCP")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not (
                1 <= self.port <= 65535):
            raise ConfigError(f"cannot share port {self.port!r}: ports are 1-65535")
        names.check_host(self.host, "host")
        if self.name:
            names.check_name(self.name)
        else:
            object.__setattr__(self, "name", names.default_share_name(socket.gethostname(),
                                                                       self.port))
        for url in self.signal_urls:
            names.check_signal_url(url)
        if not self.signal_urls and not self.lan:
            raise ConfigError("no signaling server and LAN mode is off: pass --signal "
                              "ws://HOST:PORT/ or set MESH_SIGNAL (start one with "
                              "`mesh signal`)")
        if not 60 <= self.ttl <= 10 * 365 * 24 * 3600:
            raise ConfigError(f"--ttl {self.ttl:g}: a ticket lives from 60 s to 10 years")
        for key in self.allow or ():
            names.check_node_id(key, "--allow")
        for what in ("max_peers", "max_streams"):
            if getattr(self, what) < 1:
                raise ConfigError(f"--{what.replace('_', '-')} must be at least 1")
        _positive(self, "handshake_timeout", "dial_timeout", "udp_idle")
        _positive(self, "idle_timeout", "resume_timeout", zero_ok=True)
        if self.max_flows < 1:
            raise ConfigError("--max-flows must be at least 1")
        if self.public_auth is not None and not self.public:
            raise ConfigError("--public-auth needs --public")
        if self.public:
            if not self.signal_urls:
                raise ConfigError("--public needs --signal URL (a server whose operator "
                                  "runs `mesh gateway`)")
            if self.http is None:
                object.__setattr__(self, "http", HttpConfig())

    @property
    def target(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def protos(self) -> str:
        """``tcp``, ``udp`` or ``tcp+udp``."""
        return "+".join(p for p, on in (("tcp", self.tcp), ("udp", self.udp)) if on)


@dataclass(frozen=True)
class ConnectConfig:
    ticket: Ticket
    """The share to connect to."""
    port: int = 0
    """Local port to listen on; 0 picks a free one."""
    host: str = "127.0.0.1"
    """Local address to listen on."""
    listen: bool = True
    """Open the local listener (the gateway uses the tunnel without one)."""
    signal_urls: tuple[str, ...] = ()
    """Signaling servers to use instead of the ticket's."""
    answer_timeout: float = 15.0
    """Seconds to wait for the sharer's answer."""
    connect_timeout: float = 20.0
    """Seconds to wait for a path (ICE and DTLS), all attempts together."""
    relay_after: float = 2.0
    """Seconds after which a relay-only attempt races the direct one."""
    admission_timeout: float = 10.0
    """Seconds to wait for admission."""
    wait_for_path: float = 45.0
    """Seconds a new local connection waits for a (re)built peer connection."""
    upgrade_interval: float = 30.0
    """Seconds between attempts to move from the relay to a direct path."""
    max_streams: int = 4096
    """Local connections tunnelled at once; more are refused."""
    idle_timeout: float = 0.0
    """Close a tunnelled connection idle this many seconds (0: never)."""
    control_socket: bool = True
    """Answer `mesh status` on a local Unix socket."""
    use_lan_hints: bool = True
    """Try the ticket's LAN endpoints (2 s each) before its signaling servers."""
    by_name: bool = False
    """The ticket was made from a LAN advert (`mesh connect NAME`), not given."""
    http: bool = False
    """Parse local requests as HTTP/1.1 and refuse a foreign Host with 421 (``--http``);
    on by itself when the ticket says the share is in HTTP mode."""
    no_http_guard: bool = False
    """Do not apply the guard an HTTP share's ticket asks for (``--no-http-guard``)."""
    relay_only: bool = False
    """Connect only through the TURN relay: the sharer never learns this machine's
    addresses (``--relay-only``); no direct attempt, no upgrade."""
    udp_idle: float = 60.0
    """Seconds a UDP flow (one local client address) lives without a datagram."""
    max_flows: int = 1024
    """UDP flows (local client addresses) at once; datagrams of more are dropped."""
    resume_timeout: float = 60.0
    """Seconds a tunnelled connection waits for a new peer connection to resume on after
    the path is lost (0: connections end with the peer connection)."""
    ice: IceSettings = field(default_factory=ice_from_env)
    """Which local addresses ICE uses, and path MTU discovery."""

    def __post_init__(self) -> None:
        names.check_port(self.port, "--port", zero_ok=True)
        if self.http and not self.ticket.tcp:
            raise ConfigError(f"share {self.ticket.name or 'share'!r} carries UDP only; "
                              "--http needs a TCP share")
        if self.max_flows < 1:
            raise ConfigError("--max-flows must be at least 1")
        names.check_host(self.host, "--bind")
        for url in self.signal_urls:
            names.check_signal_url(url)
        if self.max_streams < 1:
            raise ConfigError("--max-streams must be at least 1")
        if self.http and self.no_http_guard:
            raise ConfigError("--http and --no-http-guard contradict each other")
        _positive(self, "answer_timeout", "connect_timeout", "admission_timeout",
                  "wait_for_path", "upgrade_interval", "udp_idle")
        _positive(self, "relay_after", "idle_timeout", "resume_timeout", zero_ok=True)

    @property
    def guard_http(self) -> bool:
        """Whether local requests go through the HTTP Host guard."""
        return self.http or (self.ticket.http and not self.no_http_guard)


@dataclass(frozen=True)
class GatewayConfig:
    domain: str
    """Shares are served as NAME.DOMAIN."""
    signal_urls: tuple[str, ...]
    """Signaling servers (at least one)."""
    host: str = "0.0.0.0"
    port: int = 8080
    tls_cert: str | None = None
    tls_key: str | None = None
    public_url: str | None = None
    """Base URL shares print (default: from the domain, the scheme and the port)."""
    max_body: int = 10 * 1024 * 1024
    """Largest request body (413 beyond)."""
    max_head: int = 16 * 1024
    header_timeout: float = 10.0
    idle_timeout: float = 30.0
    """Seconds a keep-alive connection may stay silent."""
    body_timeout: float = 10.0
    """Seconds a request body may stay silent (the request is abandoned)."""
    max_requests_per_client: int = 32
    """Requests one client address may have open at once (503 beyond): half a share's
    stream limit, so one address cannot take all of a share's streams."""
    max_conns_per_client: int = 64
    """Connections one client address may hold open (refused beyond)."""
    share_timeout: float = 30.0
    """Seconds a share has to start its response (then 504)."""
    rate_per_share: float = 100.0
    burst_per_share: float = 200.0
    rate_per_client: float = 50.0
    burst_per_client: float = 200.0
    max_streams_per_share: int = 64
    resolve_timeout: float = 5.0
    recheck: float = 30.0
    acme_email: str | None = None
    """Get certificates automatically from an ACME server (``--acme-email``)."""
    acme_directory: str = "https://acme-v02.api.letsencrypt.org/directory"
    acme_ca_bundle: str | None = None
    """CA bundle that verifies the ACME server itself (a test or private CA)."""
    acme_renew_fraction: float = 2 / 3
    """Renew a certificate this far into its lifetime."""
    http_host: str = "0.0.0.0"
    http_port: int = 80
    """With ACME: the plain HTTP listener (challenges, and HTTP for every share)."""
    balance: str = "least"
    """How a pool's requests spread: least, round-robin, cookie or hash:HEADER."""
    health_path: str | None = None
    """Probe each pool member's PATH every ``health_interval`` seconds."""
    health_interval: float = 5.0
    routes: tuple[Rule, ...] = ()
    """``--routes`` rules (routes.py), first match wins."""
    edge: EdgePolicy = field(default_factory=EdgePolicy)
    """The response policy where no route sets its own: compression, headers, CORS."""
    cache_size: float = 0.0
    """Megabytes of HTTP cache (0: no cache)."""
    cache_debug: bool = False
    """Send ``X-Cache: HIT|MISS|REVALIDATED``."""
    metrics_host: str | None = None
    metrics_port: int = 0
    """``--metrics HOST:PORT``: Prometheus ``/metrics`` of the gateway (None: off)."""
    ice: IceSettings = field(default_factory=ice_from_env)

    def __post_init__(self) -> None:
        object.__setattr__(self, "domain", names.check_domain(self.domain))
        if self.acme_email is not None:
            if self.tls_cert or self.tls_key:
                raise ConfigError("--acme-email gets certificates itself: it cannot go "
                                  "with --tls-cert/--tls-key")
            local, at, host = self.acme_email.partition("@")
            if not (local and at and "." in host) or any(c in self.acme_email for c in
                                                           " \r\n<>"):
                raise ConfigError(f"--acme-email {self.acme_email!r} is not an email address")
            names.check_http_url(self.acme_directory.replace("https://", "http://", 1),
                                 "--acme-directory")
            if not self.acme_directory.startswith("https://"):
                raise ConfigError("--acme-directory must be an https:// URL")
            names.check_host(self.http_host, "--http-listen")
            names.check_port(self.http_port, "--http-listen", zero_ok=True)
            if not 0 < self.acme_renew_fraction < 1:
                raise ConfigError("the renewal point must be between 0 and 1 of a lifetime")
        elif self.acme_ca_bundle is not None:
            raise ConfigError("--acme-ca-bundle needs --acme-email")
        problem = check_balance(self.balance)
        if problem is not None:
            raise ConfigError(problem)
        if self.health_path is not None and not (
                self.health_path.startswith("/") and self.health_path.isascii()
                and not any(c in self.health_path for c in " \r\n\0")):
            raise ConfigError(f"--health-path {self.health_path!r} must be a path starting "
                              "with /")
        if self.metrics_host is not None:
            names.check_host(self.metrics_host, "--metrics")
            names.check_port(self.metrics_port, "--metrics", zero_ok=True)
        if not 0 <= self.cache_size <= 64 * 1024:
            raise ConfigError("--cache-size is megabytes, 0 (off) to 65536")
        if not self.signal_urls:
            raise ConfigError("the gateway needs --signal URL (or MESH_SIGNAL)")
        for url in self.signal_urls:
            names.check_signal_url(url)
        names.check_host(self.host, "--listen")
        names.check_port(self.port, "--listen", zero_ok=True)
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("--tls-cert and --tls-key go together")
        if self.public_url is not None:
            names.check_http_url(self.public_url, "--public-url")
        if self.max_body < 0 or self.max_streams_per_share < 1:
            raise ConfigError("--max-body must be >= 0 and --max-streams-per-share >= 1")
        if self.max_requests_per_client < 1 or self.max_conns_per_client < 1:
            raise ConfigError("--max-requests-per-client and --max-conns-per-client must be "
                              "at least 1")
        _positive(self, "header_timeout", "idle_timeout", "body_timeout", "share_timeout",
                  "rate_per_share",
                  "burst_per_share", "rate_per_client", "burst_per_client",
                  "resolve_timeout", "recheck", "health_interval")
