"""One `mesh signal` process: signaling plus the embedded STUN/TURN server.

With ``turn_urls`` (``--turn``) the embedded relay stays off and nodes get
credentials for the external TURN servers (e.g. coturn with
``use-auth-secret``), computed with the same shared secret.
"""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
from dataclasses import dataclass, field, replace

from mesh.errors import ConfigError
from mesh.proto import names

from . import gctune
from .policy import RelayPolicy
from .server import ServerConfig, SignalServer
from .turn import TurnConfig
from .turn_server import TurnServer

RELAY_POLICY = {"refuses": "loopback, private (RFC 1918), CGNAT, link-local, multicast, "
                           "reserved, benchmarking and documentation addresses, and this "
                           "server's own services"}
"""What the embedded relay refuses (policy.py), told to every node for mesh netcheck."""


@dataclass(frozen=True)
class RendezvousConfig:
    signal: ServerConfig
    """The signaling part."""
    stun_port: int | None = 3478
    """UDP/TCP port of the embedded STUN/TURN server; None disables it; 0 picks one."""
    public_ip: str | None = None
    """Address advertised for STUN/TURN (default: the listen address)."""
    turn_urls: tuple[str, ...] = ()
    """External TURN URLs to hand out instead of the embedded relay."""
    turn_secret: bytes | None = None
    """Shared secret for TURN REST credentials (random if unset and embedded)."""
    relay_allow: tuple[str, ...] = ()
    """CIDR ranges the relay may reach although denied by default."""
    max_allocations: int = 1000
    max_allocations_per_user: int = 10
    relay_bandwidth: int = 16 * 1024 * 1024
    extra_stun: tuple[str, ...] = field(default=())
    redis_url: str | None = None
    """Share presence and routing with other instances through this Redis."""
    presence_ttl: float = 15.0
    """Seconds after which a silent instance's nodes vanish from presence."""

    def __post_init__(self) -> None:
        if self.stun_port is not None:
            names.check_port(self.stun_port, "--stun-port", zero_ok=True)
        if self.public_ip is not None:
            names.check_ip(self.public_ip, "--public-ip")
        if self.turn_urls and not self.turn_secret:
            raise ConfigError("--turn needs --turn-secret (the TURN server's shared secret)")
        for url in self.turn_urls:
            if not url.startswith(("turn:", "turns:")):
                raise ConfigError(f"--turn URL must start with turn: or turns: ({url!r})")
        for cidr in self.relay_allow:
            names.check_cidr(cidr, "--relay-allow")
        if self.redis_url is not None and not self.redis_url.startswith(
                ("redis://", "rediss://", "unix://")):
            raise ConfigError(f"--redis {self.redis_url!r} must be a redis:// URL")
        if min(self.max_allocations, self.max_allocations_per_user) < 1 or (
                self.relay_bandwidth < 1024):
            raise ConfigError("--max-allocations and --max-allocations-per-user must be at "
                              "least 1, --relay-bandwidth at least 1024")
        names.check_positive(self.presence_ttl, "--presence-ttl")


def _url_host(host: str) -> str:
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]"
    except ValueError:
        pass
    return host


class Rendezvous:
    def __init__(self, config: RendezvousConfig) -> None:
        self.config = config
        self.turn: TurnServer | None = None
        self.signal: SignalServer | None = None
        self._gc: asyncio.Task[None] | None = None

    async def start(self) -> str:
        cfg = self.config
        sig_cfg = cfg.signal
        secret = cfg.turn_secret or secrets.token_bytes(32)
        stun_urls: tuple[str, ...] = ()
        turn_urls: tuple[str, ...] = ()
        if cfg.turn_urls:
            turn_urls = cfg.turn_urls
            first = cfg.turn_urls[0].split(":", 1)[1].split("?", 1)[0]
            stun_urls = (f"stun:{first}",)
        elif cfg.stun_port is not None:
            host = sig_cfg.host if sig_cfg.host not in ("0.0.0.0", "::") else "127.0.0.1"
            public = cfg.public_ip or host
            relay_host = sig_cfg.host if sig_cfg.host not in ("::",) else "0.0.0.0"
            self.turn = TurnServer(
                TurnConfig(secret=secret, relay_ip=public, max_allocations=cfg.max_allocations,
                           max_allocations_per_user=cfg.max_allocations_per_user,
                           bandwidth=cfg.relay_bandwidth),
                RelayPolicy(cfg.relay_allow, own=(public, sig_cfg.host)), sig_cfg.host,
                cfg.stun_port, relay_host)
            await self.turn.start()
            where = f"{_url_host(public)}:{self.turn.port}"
            stun_urls = (f"stun:{where}",)
            turn_urls = (f"turn:{where}?transport=udp", f"turn:{where}?transport=tcp")
        sig_cfg = replace(sig_cfg, stun_urls=stun_urls + cfg.extra_stun, turn_urls=turn_urls,
                          turn_secret=secret if turn_urls else None,
                          relay_policy=RELAY_POLICY | {"allows": list(cfg.relay_allow)}
                          if self.turn is not None else None)
        instance = secrets.token_hex(6)
        broker = None
        if cfg.redis_url:
            from .redis_broker import RedisBroker

            broker = RedisBroker(cfg.redis_url, instance, ttl=cfg.presence_ttl,
                                 max_sessions=sig_cfg.max_sessions_per_key,
                                 names=sig_cfg.names)
        self.signal = SignalServer(sig_cfg, broker, instance=instance)
        self.signal.extra_metrics = self._turn_metrics
        try:
            url = await self.signal.start()
            self._gc = asyncio.create_task(gctune.tune())
            return url
        except BaseException:
            if self.turn:
                await self.turn.stop()
            raise

    def _turn_metrics(self) -> dict[str, float]:
        if self.turn is None:
            return {}
        core = self.turn.core
        return {
            "mesh_turn_allocations": len(core.allocations),
            "mesh_turn_allocations_total": core.stats["allocations_total"],
            "mesh_turn_relayed_bytes_total": core.stats["bytes_relayed"],
            "mesh_turn_rejections_total": core.stats["rejected"],
        }

    async def stop(self) -> None:
        if self._gc is not None:
            self._gc.cancel()
        if self.signal:
            await self.signal.stop()
        if self.turn:
            await self.turn.stop()
