"""The signaling wire protocol: frames, their codec, and registration proofs.

Transport: one WebSocket per node (``ws://host:port/``, or ``wss://``), text
frames of UTF-8 JSON objects, at most 64 KiB each. Every frame has ``type``.

Server -> client::

    {"type": "hello", "version": 1, "nonce": B64(32 bytes)}
    {"type": "registered", "node": NODE, "ice_servers": [ICE...], "instance": STR,
     "relay": {"refuses": TEXT, "allows": [CIDR...]}  (optional: the embedded relay's
     peer policy, for `mesh netcheck`)}
    {"type": "deliver", "from": NODE, "payload": B64}
    {"type": "error", "code": CODE, "message": TEXT, "ref": INT|null}
    {"type": "pong"}
    {"type": "name", "op": OP, "name": NAME, "owner": NODE|null,
     "gateway": {"node": NODE, "domain": STR, "url": STR}|null, "ref": INT,
     "roster": ROSTER (when the name has a pool), "online": [NODE, ...]}

Client -> server::

    {"type": "register", "node": NODE, "sig": B64(64 bytes)}
    {"type": "send", "to": NODE, "payload": B64, "ref": INT}
    {"type": "ping"}
    {"type": "name", "op": "claim"|"release"|"lookup"|"members", "name": NAME, "ref": INT,
     "roster": ROSTER (members only)}
    {"type": "gateway", "domain": STR, "url": STR}

Public names (``mesh share --public``, ``mesh gateway``): ``claim`` binds NAME
(a DNS label) to the registered node if nobody holds it, and is a no-op for its
holder; ``release`` unbinds it (holder only); ``lookup`` reads it. The answer
is a ``name`` frame with the holder (``owner``) and the gateway announced on
this server, or an error with the same ``ref``. ``members`` stores a pool's
roster (mesh/proto/roster.py: signed by the name's holder, seq growing); a
member of the roster may then ``claim`` the name too (the answer's ``owner``
stays the holder). Answers carry the stored roster and which of the holder and
members are ``online``. A ``gateway`` frame announces
the public gateway; the server accepts it only from the node ids its operator
pinned (``mesh signal --gateway NODE_ID``).

A session starts with ``hello``. The client proves it holds the key of NODE by
signing ``b"mesh-register-v1\\n" + nonce + NODE`` (Ed25519, detached); only
then may it ``send``. The server stamps ``from`` itself, so a node cannot send
as another. ``payload`` is opaque to the server (a sealed envelope, see
mesh/envelope.py); it only routes it. ``ref`` ties an ``error`` to the ``send``
that caused it. ICE entries are ``{"urls": [..], "username": .., "credential": ..}``.

Error codes: ``bad-frame`` (malformed; the server closes), ``too-large``
(closes), ``rate-limited``, ``not-registered``, ``bad-signature`` (closes),
``unknown-destination``, ``name-taken``, ``name-quota`` (the key holds as many
public names as it may), ``not-owner``, ``not-gateway``,
``replaced`` (no longer sent: kept for older clients), ``too-many-sessions`` (the
node key already holds the server's per-key session limit; the registration is
refused and the connection closed), ``too-many-connections``
(closes), ``shutting-down``. Several sessions may register one node id (two
processes with one key); a ``send`` reaches all of them.

Sans-I/O: parsing and building frames; no sockets here.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
from dataclasses import dataclass
from typing import Any

from .identity import NODE_ID_LEN, decode_node_id
from .names import valid_name

VERSION = 1
MAX_FRAME = 64 * 1024
REGISTER_CONTEXT = b"mesh-register-v1\n"
CLOSE_CODES = {"bad-frame", "too-large", "bad-signature", "replaced", "too-many-connections",
               "too-many-sessions"}


class FrameError(Exception):
    """A frame that breaks the protocol; ``code`` is what the error frame carries."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Register:
    node: str
    sig: bytes


@dataclass(frozen=True, slots=True)
class Send:
    to: str
    payload: bytes
    ref: int | None


@dataclass(frozen=True, slots=True)
class Ping:
    pass


@dataclass(frozen=True, slots=True)
class NameOp:
    op: str
    name: str
    ref: int | None
    roster: str | None = None


@dataclass(frozen=True, slots=True)
class Announce:
    domain: str
    url: str


@dataclass(frozen=True, slots=True)
class NameResult:
    op: str
    name: str
    owner: str | None
    gateway: dict[str, str] | None
    ref: int | None
    roster: str | None = None
    online: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Hello:
    version: int
    nonce: bytes


@dataclass(frozen=True, slots=True)
class Registered:
    node: str
    ice_servers: tuple[dict[str, Any], ...]
    instance: str
    relay: dict[str, Any] | None = None
    """The embedded relay's peer policy: what it refuses, which ranges it allows."""


@dataclass(frozen=True, slots=True)
class Deliver:
    sender: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class Error:
    code: str
    message: str
    ref: int | None


@dataclass(frozen=True, slots=True)
class Pong:
    pass


ClientFrame = Register | Send | Ping | NameOp | Announce
ServerFrame = Hello | Registered | Deliver | Error | Pong | NameResult

NAME_OPS = ("claim", "release", "lookup", "members")
MAX_ROSTER = 4096


def _name(value: Any) -> str:
    if not valid_name(value):
        raise FrameError("bad-frame", "name must be a lower-case DNS label (a-z, 0-9, -)")
    return str(value)


def _short_text(value: Any, what: str, limit: int = 256) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise FrameError("bad-frame", f"{what} must be text of at most {limit} characters")
    return value


def _gateway(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise FrameError("bad-frame", "gateway must be an object")
    return {"node": _node(value.get("node"), "gateway node"),
            "domain": _short_text(value.get("domain", ""), "domain"),
            "url": _short_text(value.get("url", ""), "url")}


def register_message(nonce: bytes, node: str) -> bytes:
    return REGISTER_CONTEXT + nonce + node.encode("ascii")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: Any, what: str, limit: int) -> bytes:
    if not isinstance(value, str) or len(value) > limit * 4 // 3 + 4:
        raise FrameError("bad-frame", f"{what} must be base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise FrameError("bad-frame", f"{what} is not valid base64") from exc


def _node(value: Any, what: str) -> str:
    if not isinstance(value, str) or len(value) != NODE_ID_LEN or not _is_node_id(value):
        raise FrameError("bad-frame", f"{what} is not a node id")
    return value


@functools.lru_cache(maxsize=65536)
def _is_node_id(value: str) -> bool:
    """Node ids repeat on every frame; decode each distinct one once."""
    try:
        decode_node_id(value)
    except ValueError:
        return False
    return True


def _load(text: str | bytes) -> dict[str, Any]:
    if len(text) > MAX_FRAME:
        raise FrameError("too-large", f"frame exceeds {MAX_FRAME} bytes")
    try:
        obj = json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise FrameError("bad-frame", "frame is not JSON") from exc
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise FrameError("bad-frame", "frame must be an object with a 'type'")
    return obj


def _ref(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**53:
        raise FrameError("bad-frame", "ref must be a non-negative integer")
    return value


def parse_client_frame(text: str | bytes) -> ClientFrame:
    obj = _load(text)
    kind = obj["type"]
    if kind == "register":
        sig = _unb64(obj.get("sig"), "sig", 64)
        if len(sig) != 64:
            raise FrameError("bad-frame", "sig must be 64 bytes")
        return Register(_node(obj.get("node"), "node"), sig)
    if kind == "send":
        return Send(
            _node(obj.get("to"), "to"), _unb64(obj.get("payload"), "payload", MAX_FRAME),
            _ref(obj.get("ref")),
        )
    if kind == "ping":
        return Ping()
    if kind == "name":
        op = obj.get("op")
        if op not in NAME_OPS:
            raise FrameError("bad-frame", "op must be claim, release, lookup or members")
        roster = obj.get("roster")
        if op == "members" and roster is None:
            raise FrameError("bad-frame", "members needs a roster")
        return NameOp(str(op), _name(obj.get("name")), _ref(obj.get("ref")),
                      None if roster is None else _short_text(roster, "roster", MAX_ROSTER))
    if kind == "gateway":
        return Announce(_short_text(obj.get("domain"), "domain"),
                        _short_text(obj.get("url"), "url"))
    raise FrameError("bad-frame", f"unknown frame type {kind[:32]!r}")


def parse_server_frame(text: str | bytes) -> ServerFrame:
    obj = _load(text)
    kind = obj["type"]
    if kind == "hello":
        nonce = _unb64(obj.get("nonce"), "nonce", 64)
        version = obj.get("version")
        if not isinstance(version, int) or len(nonce) < 16:
            raise FrameError("bad-frame", "hello is malformed")
        return Hello(version, nonce)
    if kind == "registered":
        ice = obj.get("ice_servers", [])
        if not isinstance(ice, list) or not all(isinstance(x, dict) for x in ice):
            raise FrameError("bad-frame", "ice_servers must be a list of objects")
        inst = obj.get("instance", "")
        relay = obj.get("relay")
        if relay is not None and not (
                isinstance(relay, dict) and isinstance(relay.get("refuses"), str)
                and isinstance(relay.get("allows"), list)
                and all(isinstance(c, str) for c in relay["allows"])):
            raise FrameError("bad-frame", "relay must be {refuses: text, allows: [cidr]}")
        return Registered(_node(obj.get("node"), "node"), tuple(ice), str(inst), relay)
    if kind == "deliver":
        return Deliver(_node(obj.get("from"), "from"),
                       _unb64(obj.get("payload"), "payload", MAX_FRAME))
    if kind == "error":
        code, message = obj.get("code"), obj.get("message", "")
        if not isinstance(code, str) or not isinstance(message, str):
            raise FrameError("bad-frame", "error frame is malformed")
        return Error(code[:64], message[:512], _ref(obj.get("ref")))
    if kind == "pong":
        return Pong()
    if kind == "name":
        owner = obj.get("owner")
        op = obj.get("op")
        if op not in NAME_OPS:
            raise FrameError("bad-frame", "op must be claim, release, lookup or members")
        roster, online = obj.get("roster"), obj.get("online", [])
        if not isinstance(online, list) or len(online) > 64:
            raise FrameError("bad-frame", "online must be a list of node ids")
        return NameResult(str(op), _name(obj.get("name")),
                          None if owner is None else _node(owner, "owner"),
                          _gateway(obj.get("gateway")), _ref(obj.get("ref")),
                          None if roster is None else _short_text(roster, "roster", MAX_ROSTER),
                          tuple(_node(n, "online") for n in online))
    raise FrameError("bad-frame", f"unknown frame type {kind[:32]!r}")


def encode(frame: ClientFrame | ServerFrame) -> str:
    obj: dict[str, Any]
    match frame:
        case Register(node, sig):
            obj = {"type": "register", "node": node, "sig": _b64(sig)}
        case Send(to, payload, ref):
            obj = {"type": "send", "to": to, "payload": _b64(payload), "ref": ref}
        case Ping():
            obj = {"type": "ping"}
        case Hello(version, nonce):
            obj = {"type": "hello", "version": version, "nonce": _b64(nonce)}
        case Registered(node, ice, instance, relay):
            obj = {"type": "registered", "node": node, "ice_servers": list(ice),
                   "instance": instance}
            if relay is not None:
                obj["relay"] = relay
        case Deliver(sender, payload):
            obj = {"type": "deliver", "from": sender, "payload": _b64(payload)}
        case Error(code, message, ref):
            obj = {"type": "error", "code": code, "message": message, "ref": ref}
        case Pong():
            obj = {"type": "pong"}
        case NameOp(op, name, ref, roster):
            obj = {"type": "name", "op": op, "name": name, "ref": ref}
            if roster is not None:
                obj["roster"] = roster
        case Announce(domain, url):
            obj = {"type": "gateway", "domain": domain, "url": url}
        case NameResult(op, name, owner, gateway, ref, roster, online):
            obj = {"type": "name", "op": op, "name": name, "owner": owner, "gateway": gateway,
                   "ref": ref}
            if roster is not None:
                obj["roster"] = roster
            if online:
                obj["online"] = list(online)
    return json.dumps(obj, separators=(",", ":"))
