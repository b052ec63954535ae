"""TURN server core (RFC 8656) and STUN binding (RFC 8489), sans-I/O.

Fed datagrams/frames from clients (``from_client``) and from peers on a relay
port (``from_peer``), and the time; returns what to send (``ToClient``,
``ToPeer``) and relay ports to close (``Release``). Relay ports are obtained
through the ``bind_relay`` callable passed in (the glue binds a socket).

Authentication: long-term credentials (RFC 8489 section 9.2) in the TURN REST
form: username ``"<expiry unix time>:<node id>"``, password
``base64(HMAC-SHA1(shared secret, username))``. Nonces are stateless
(``<hex time>-<HMAC>``); an old one gets 438 Stale Nonce.

Errors: 400 bad request, 401 unauthenticated (missing, wrong or expired
credentials), 403 peer address refused by the relay policy (policy.py),
420 unknown comprehension-required attribute, 437 allocation mismatch,
438 stale nonce, 440 address family, 442 transport not UDP, 486 quota
(allocations per user or in total), 508 no relay port.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from mesh.proto import stun as s
from mesh.proto.limits import TokenBucket
from mesh.proto.names import is_number

from .policy import RelayPolicy

log = logging.getLogger("mesh.turn")

ClientKey = tuple[str, s.Address]
"""(transport, address): "udp", "udp-alt" (the second STUN port) or "tcp:<connection id>",
and the client's address."""


@dataclass(frozen=True)
class TurnConfig:
    secret: bytes
    """Shared secret for TURN REST credentials."""
    relay_ip: str
    """Address advertised in XOR-RELAYED-ADDRESS."""
    realm: str = "mesh"
    """Authentication realm."""
    default_lifetime: int = 600
    max_lifetime: int = 3600
    permission_lifetime: int = 300
    channel_lifetime: int = 600
    nonce_lifetime: int = 600
    max_allocations_per_user: int = 10
    """Allocations one node may hold at once (whatever the expiry in its username)."""
    max_allocations_per_address: int = 50
    """Allocations the clients at one IP address may hold at once."""
    max_allocations: int = 1000
    """Allocations in total."""
    bandwidth: int = 16 * 1024 * 1024
    """Bytes per second one allocation may relay (each direction); excess is dropped."""
    software: str = "mesh-turn"


@dataclass(frozen=True)
class ToClient:
    client: ClientKey
    data: bytes


@dataclass(frozen=True)
class ToPeer:
    relay_port: int
    peer: s.Address
    data: bytes


@dataclass(frozen=True)
class Release:
    relay_port: int


Output = ToClient | ToPeer | Release


@dataclass
class Allocation:
    client: ClientKey
    username: str
    key: bytes
    relay_port: int
    expires: float
    txid: bytes
    permissions: dict[str, float] = field(default_factory=dict)
    channels: dict[int, tuple[s.Address, float]] = field(default_factory=dict)
    peer_channels: dict[s.Address, int] = field(default_factory=dict)
    up: TokenBucket | None = None
    down: TokenBucket | None = None
    bytes_up: int = 0
    bytes_down: int = 0


def rest_password(secret: bytes, username: str) -> str:
    return base64.b64encode(hmac.new(secret, username.encode(), hashlib.sha1).digest()).decode()


def rest_credentials(secret: bytes, node: str, now: float, ttl: int = 24 * 3600) -> tuple[str, str]:
    username = f"{int(now + ttl)}:{node}"
    return username, rest_password(secret, username)


class _Reject(Exception):
    def __init__(self, code: int, reason: str, extra: tuple[tuple[int, bytes], ...] = ()) -> None:
        self.code, self.reason, self.extra = code, reason, extra


class TurnCore:
    def __init__(self, config: TurnConfig, policy: RelayPolicy,
                 bind_relay: Callable[[], int | None]) -> None:
        self.config = config
        self.policy = policy
        self._bind_relay = bind_relay
        self._nonce_key = secrets.token_bytes(16)
        self.allocations: dict[ClientKey, Allocation] = {}
        self._by_port: dict[int, Allocation] = {}
        self.stats = {"allocations_total": 0, "bytes_relayed": 0, "rejected": 0}
        self.service_ports: set[int] = set()
        """The server's own STUN/TURN ports (set by the server once bound)."""

    def _allowed(self, peer: s.Address, permission: bool = False) -> bool:
        """Whether the relay may exchange datagrams with ``peer``. On the server's own
        address (RFC 8656 section 21): another allocation's relayed address yes (two
        relayed peers), the STUN/TURN ports never, other ports (services on this
        host) only where --relay-allow names the address. A permission is per IP, so
        for the server's own address it is granted and each datagram is checked."""
        host, port = peer
        if not self.policy.is_own(host):
            return self.policy.permitted(host)
        if permission:
            return True
        if port in self.service_ports:
            return False
        return port in self._by_port or self.policy.explicit(host)

    # -- entry points ----------------------------------------------------------------
    def from_client(self, client: ClientKey, data: bytes, now: float) -> list[Output]:
        if s.is_channel_data(data):
            return self._channel_data(client, data, now)
        try:
            msg = s.parse(data)
        except s.StunError:
            return []
        if msg.cls == s.REQUEST:
            return self._request(client, data, msg, now)
        if msg.cls == s.INDICATION and msg.method == s.SEND:
            return self._send_indication(client, msg, now)
        return []

    def from_peer(self, relay_port: int, peer: s.Address, data: bytes, now: float
                  ) -> list[Output]:
        alloc = self._by_port.get(relay_port)
        if alloc is None or alloc.expires < now:
            return []
        if alloc.permissions.get(peer[0], 0) < now or not self._allowed(peer):
            return []
        if alloc.down is not None and not alloc.down.take(now, len(data)):
            return []
        alloc.bytes_down += len(data)
        self.stats["bytes_relayed"] += len(data)
        channel = alloc.peer_channels.get(peer)
        if channel is not None and alloc.channels.get(channel, (None, 0.0))[1] >= now:
            tcp = alloc.client[0].startswith("tcp")
            return [ToClient(alloc.client, s.channel_data(channel, data, pad=tcp))]
        txid = secrets.token_bytes(12)
        ind = s.Message(s.DATA, s.INDICATION, txid, (
            (s.XOR_PEER_ADDRESS, s.xor_address(peer, txid)), (s.DATA_ATTR, data)))
        return [ToClient(alloc.client, ind.encode())]

    def expire(self, now: float) -> list[Output]:
        out: list[Output] = []
        for key, alloc in list(self.allocations.items()):
            if alloc.expires < now:
                out += self._delete(key)
                continue
            alloc.permissions = {ip: t for ip, t in alloc.permissions.items() if t >= now}
            for ch, (peer, t) in list(alloc.channels.items()):
                if t + 300 < now:  # a channel stays reserved 5 min after expiry (section 12)
                    del alloc.channels[ch]
                    alloc.peer_channels.pop(peer, None)
        return out

    def client_gone(self, client: ClientKey) -> list[Output]:
        """A TCP client disconnected: its allocation ends with it (RFC 6062 spirit)."""
        return self._delete(client) if client in self.allocations else []

    # -- helpers ---------------------------------------------------------------------
    def _delete(self, key: ClientKey) -> list[Output]:
        alloc = self.allocations.pop(key)
        self._by_port.pop(alloc.relay_port, None)
        return [Release(alloc.relay_port)]

    def _nonce(self, now: float) -> str:
        stamp = f"{int(now):x}"
        mac = hmac.new(self._nonce_key, stamp.encode(), hashlib.sha256).hexdigest()[:16]
        return f"{stamp}-{mac}"

    def _nonce_state(self, nonce: str, now: float) -> str:
        stamp, _, mac = nonce.partition("-")
        want = hmac.new(self._nonce_key, stamp.encode(), hashlib.sha256).hexdigest()[:16]
        if not hmac.compare_digest(mac.encode(), want.encode()):
            return "invalid"
        try:
            issued = int(stamp, 16)
        except ValueError:
            return "invalid"
        return "stale" if now - issued > self.config.nonce_lifetime else "ok"

    def _response(self, msg: s.Message, attrs: tuple[tuple[int, bytes], ...],
                  key: bytes | None) -> bytes:
        out = s.Message(msg.method, s.SUCCESS, msg.txid,
                        attrs + ((s.SOFTWARE, self.config.software.encode()),))
        return out.encode(key=key, fingerprint=True)

    def _error(self, msg: s.Message, code: int, reason: str, now: float,
               extra: tuple[tuple[int, bytes], ...] = (), key: bytes | None = None) -> bytes:
        self.stats["rejected"] += 1
        attrs = ((s.ERROR_CODE, s.error_code(code, reason)),) + extra
        if code in (401, 438):
            attrs += ((s.REALM, self.config.realm.encode()),
                      (s.NONCE, self._nonce(now).encode()))
        out = s.Message(msg.method, s.ERROR, msg.txid,
                        attrs + ((s.SOFTWARE, self.config.software.encode()),))
        return out.encode(key=key, fingerprint=True)

    def _authenticate(self, data: bytes, msg: s.Message, now: float) -> tuple[str, bytes]:
        if msg.integrity_offset is None:
            raise _Reject(401, "Unauthorized")
        username, realm, nonce = (s.text(msg.get(a)) for a in (s.USERNAME, s.REALM, s.NONCE))
        if username is None or realm is None or nonce is None:
            raise _Reject(400, "Bad Request")
        state = self._nonce_state(nonce, now)
        if state == "invalid":
            raise _Reject(401, "Unauthorized")
        expiry, sep, _node = username.partition(":")
        if not sep or not is_number(expiry) or int(expiry) < now:
            raise _Reject(401, "Unauthorized")
        key = s.long_term_key(username, realm, rest_password(self.config.secret, username))
        if realm != self.config.realm or not s.check_integrity(data, msg, key):
            raise _Reject(401, "Unauthorized")
        if state == "stale":
            raise _Reject(438, "Stale Nonce")
        return username, key

    def _request(self, client: ClientKey, data: bytes, msg: s.Message, now: float
                 ) -> list[Output]:
        unknown = [a for a, _ in msg.attrs if a < 0x8000 and a not in
                   s.COMPREHENSION_REQUIRED_KNOWN]
        if unknown:
            extra = ((s.UNKNOWN_ATTRIBUTES, b"".join(struct.pack("!H", a) for a in unknown[:8])),)
            return [ToClient(client, self._error(msg, 420, "Unknown Attribute", now, extra))]
        if msg.method == s.BINDING:
            binding: tuple[tuple[int, bytes], ...] = (
                (s.XOR_MAPPED_ADDRESS, s.xor_address(client[1], msg.txid)),
                (s.MAPPED_ADDRESS, s.plain_address(client[1])))
            return [ToClient(client, self._response(msg, binding, None))]
        handlers = {s.ALLOCATE: self._allocate, s.REFRESH: self._refresh,
                    s.CREATE_PERMISSION: self._permission, s.CHANNEL_BIND: self._bind}
        handler = handlers.get(msg.method)
        if handler is None:
            return [ToClient(client, self._error(msg, 400, "Bad Request", now))]
        key: bytes | None = None
        try:
            username, key = self._authenticate(data, msg, now)
            attrs, extra_out = handler(client, msg, username, key, now)
        except _Reject as rej:
            log.debug("TURN %s from %s: %d %s %s", msg.method, client, rej.code, rej.reason,
                      [hex(a) for a, _ in msg.attrs])
            signed = key if rej.code not in (400, 401, 438) else None
            return [ToClient(client, self._error(msg, rej.code, rej.reason, now, rej.extra,
                                                 signed))]
        except s.StunError as exc:
            log.debug("TURN %s from %s: malformed: %s", msg.method, client, exc)
            return [ToClient(client, self._error(msg, 400, "Bad Request", now, (), key))]
        return [ToClient(client, self._response(msg, attrs, key)), *extra_out]

    Attrs = tuple[tuple[int, bytes], ...]

    def _allocate(self, client: ClientKey, msg: s.Message, username: str, key: bytes,
                  now: float) -> tuple[Attrs, list[Output]]:
        cfg = self.config
        existing = self.allocations.get(client)
        if existing is not None:
            if existing.txid == msg.txid:  # a retransmission: same answer
                return self._allocated(existing, client, msg, now), []
            raise _Reject(437, "Allocation Mismatch")
        transport = msg.get(s.REQUESTED_TRANSPORT)
        if transport is None or len(transport) != 4:
            raise _Reject(400, "Bad Request")
        if transport[0] != 17:
            raise _Reject(442, "Unsupported Transport Protocol")
        family = msg.get(s.REQUESTED_ADDRESS_FAMILY)
        if family is not None and family[:1] != b"\x01":
            raise _Reject(440, "Address Family not Supported")
        if len(self.allocations) >= cfg.max_allocations:
            raise _Reject(486, "Allocation Quota Reached")
        # by node and by address: a REST username carries a fresh expiry with each
        # registration, so counting usernames let one key take every allocation
        node, ip = username.partition(":")[2], client[1][0]
        if sum(1 for a in self.allocations.values()
               if a.username.partition(":")[2] == node) >= cfg.max_allocations_per_user:
            raise _Reject(486, "Allocation Quota Reached")
        if sum(1 for a in self.allocations.values()
               if a.client[1][0] == ip) >= cfg.max_allocations_per_address:
            raise _Reject(486, "Allocation Quota Reached")
        port = self._bind_relay()
        if port is None:
            raise _Reject(508, "Insufficient Capacity")
        lifetime = self._lifetime(msg, cfg.default_lifetime)
        alloc = Allocation(client, username, key, port, now + lifetime, msg.txid,
                           up=TokenBucket(cfg.bandwidth, cfg.bandwidth),
                           down=TokenBucket(cfg.bandwidth, cfg.bandwidth))
        self.allocations[client] = alloc
        self._by_port[port] = alloc
        self.stats["allocations_total"] += 1
        return self._allocated(alloc, client, msg, now), []

    def _allocated(self, alloc: Allocation, client: ClientKey, msg: s.Message, now: float
                   ) -> Attrs:
        return ((s.XOR_RELAYED_ADDRESS, s.xor_address((self.config.relay_ip, alloc.relay_port),
                                                      msg.txid)),
                (s.LIFETIME, s.u32(max(0, int(alloc.expires - now)))),
                (s.XOR_MAPPED_ADDRESS, s.xor_address(client[1], msg.txid)))

    def _lifetime(self, msg: s.Message, default: int) -> int:
        raw = msg.get(s.LIFETIME)
        requested = s.parse_u32(raw) if raw is not None else default
        return min(requested, self.config.max_lifetime)

    def _owned(self, client: ClientKey, username: str) -> Allocation:
        alloc = self.allocations.get(client)
        if alloc is None or alloc.username != username:
            raise _Reject(437, "Allocation Mismatch")
        return alloc

    def _refresh(self, client: ClientKey, msg: s.Message, username: str, key: bytes,
                 now: float) -> tuple[Attrs, list[Output]]:
        alloc = self._owned(client, username)
        lifetime = self._lifetime(msg, self.config.default_lifetime)
        if lifetime == 0:
            return ((s.LIFETIME, s.u32(0)),), self._delete(client)
        alloc.expires = now + lifetime
        return ((s.LIFETIME, s.u32(lifetime)),), []

    def _peer(self, msg: s.Message, value: bytes, permission: bool = False) -> s.Address:
        peer = s.parse_xor_address(value, msg.txid)
        if not self._allowed(peer, permission):
            raise _Reject(403, "Forbidden")
        return peer

    def _permission(self, client: ClientKey, msg: s.Message, username: str, key: bytes,
                    now: float) -> tuple[Attrs, list[Output]]:
        alloc = self._owned(client, username)
        values = msg.get_all(s.XOR_PEER_ADDRESS)
        if not values:
            raise _Reject(400, "Bad Request")
        peers = [self._peer(msg, v, permission=True) for v in values]  # all or nothing
        for peer in peers:
            alloc.permissions[peer[0]] = now + self.config.permission_lifetime
        return (), []

    def _bind(self, client: ClientKey, msg: s.Message, username: str, key: bytes,
              now: float) -> tuple[Attrs, list[Output]]:
        alloc = self._owned(client, username)
        raw_ch, raw_peer = msg.get(s.CHANNEL_NUMBER), msg.get(s.XOR_PEER_ADDRESS)
        if raw_ch is None or raw_peer is None or len(raw_ch) != 4:
            raise _Reject(400, "Bad Request")
        channel = struct.unpack("!H", raw_ch[:2])[0]
        if not s.CHANNEL_MIN <= channel <= s.CHANNEL_MAX:
            raise _Reject(400, "Bad Request")
        peer = self._peer(msg, raw_peer)
        bound = alloc.channels.get(channel)
        if (bound is not None and bound[0] != peer) or alloc.peer_channels.get(
                peer, channel) != channel:
            raise _Reject(400, "Bad Request")
        alloc.channels[channel] = (peer, now + self.config.channel_lifetime)
        alloc.peer_channels[peer] = channel
        alloc.permissions[peer[0]] = now + self.config.permission_lifetime
        return (), []

    def _send_indication(self, client: ClientKey, msg: s.Message, now: float) -> list[Output]:
        alloc = self.allocations.get(client)
        raw_peer, data = msg.get(s.XOR_PEER_ADDRESS), msg.get(s.DATA_ATTR)
        if alloc is None or raw_peer is None or data is None or alloc.expires < now:
            return []
        try:
            peer = s.parse_xor_address(raw_peer, msg.txid)
        except s.StunError:
            return []
        return self._relay_out(alloc, peer, data, now)

    def _channel_data(self, client: ClientKey, data: bytes, now: float) -> list[Output]:
        alloc = self.allocations.get(client)
        if alloc is None or alloc.expires < now:
            return []
        try:
            channel, payload = s.parse_channel_data(data)
        except s.StunError:
            return []
        bound = alloc.channels.get(channel)
        if bound is None or bound[1] < now:
            return []
        return self._relay_out(alloc, bound[0], payload, now)

    def _relay_out(self, alloc: Allocation, peer: s.Address, data: bytes, now: float
                   ) -> list[Output]:
        if alloc.permissions.get(peer[0], 0) < now or not self._allowed(peer):
            return []
        if alloc.up is not None and not alloc.up.take(now, len(data)):
            return []
        alloc.bytes_up += len(data)
        self.stats["bytes_relayed"] += len(data)
        return [ToPeer(alloc.relay_port, peer, data)]
