"""Envelopes: sealed, signed signaling payloads (SDP offers and answers).

The signaling server routes envelopes between node ids but can neither read
nor alter them: the inner message is signed by the sender's Ed25519 key and
the result is sealed (X25519 sealed box) to the recipient's key. Because the
SDP inside carries the DTLS fingerprints, and aiortc enforces them in the DTLS
handshake, a server that swaps fingerprints breaks the signature instead.

Wire form of one envelope (bytes; base64 inside a signaling frame)::

    sealed_box_to(recipient, signature(64) || inner)

``inner`` is UTF-8 JSON::

    {"v": 1, "kind": "offer"|"answer"|..., "from": <node id>, "to": <node id>,
     "ts": <unix seconds, float>, "nonce": <32 hex chars>, "session": <str>,
     "body": {...}}

Opening checks, in order: size, sealed box opens, signature by ``from``,
``from`` equals the node the server says sent it, ``to`` is us, ``kind`` is one
this side accepts (the direction tag: a sharer accepts offers, a connector
answers, so an envelope cannot be reflected back), ``ts`` within the allowed
skew, and ``nonce`` unseen (replay cache, bounded, entries expire with skew).

Sans-I/O: time is always an argument.
"""

from __future__ import annotations

import json
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from mesh.errors import EnvelopeError, EnvelopeKindError

from .identity import Identity, decode_node_id, seal, verify

MAX_SEALED = 44 * 1024
MAX_SKEW = 120.0
REPLAY_CACHE_SIZE = 65536


@dataclass(frozen=True)
class Envelope:
    """One opened, verified envelope."""

    kind: str
    sender: str
    recipient: str
    session: str
    body: dict[str, Any]
    ts: float
    nonce: str


def seal_envelope(
    identity: Identity,
    recipient: str,
    kind: str,
    session: str,
    body: dict[str, Any],
    now: float,
) -> bytes:
    """Sign as ``identity`` and seal to ``recipient``."""
    inner = json.dumps(
        {
            "v": 1,
            "kind": kind,
            "from": identity.node_id,
            "to": recipient,
            "ts": now,
            "nonce": secrets.token_hex(16),
            "session": session,
            "body": body,
        },
        separators=(",", ":"),
    ).encode()
    blob = seal(recipient, identity.sign(inner) + inner)
    if len(blob) > MAX_SEALED:
        raise ValueError("envelope too large")
    return blob


class ReplayCache:
    """Remembers nonces until they are too old to be accepted anyway."""

    def __init__(self, max_age: float = MAX_SKEW * 2, size: int = REPLAY_CACHE_SIZE) -> None:
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._max_age = max_age
        self._size = size

    def check_and_add(self, nonce: str, now: float) -> bool:
        """False if ``nonce`` was seen before (a replay)."""
        while self._seen:
            _oldest, at = next(iter(self._seen.items()))
            if now - at <= self._max_age and len(self._seen) < self._size:
                break
            self._seen.popitem(last=False)
        if nonce in self._seen:
            return False
        self._seen[nonce] = now
        return True

    def __len__(self) -> int:
        return len(self._seen)


class Opener:
    """Opens envelopes addressed to one identity, enforcing direction and freshness."""

    def __init__(
        self,
        identity: Identity,
        accept_kinds: frozenset[str],
        max_skew: float = MAX_SKEW,
    ) -> None:
        self._identity = identity
        self._kinds = accept_kinds
        self._skew = max_skew
        self._replay = ReplayCache(max_age=max_skew * 2)

    def open(self, blob: bytes, claimed_sender: str, now: float) -> Envelope:
        if len(blob) > MAX_SEALED:
            raise EnvelopeError("envelope too large")
        try:
            raw = self._identity.unseal(blob)
        except ValueError as exc:
            raise EnvelopeError("envelope does not open (tampered or not for us)") from exc
        if len(raw) < 65:
            raise EnvelopeError("envelope is truncated")
        sig, inner = raw[:64], raw[64:]
        msg = _parse_inner(inner)
        sender = msg["from"]
        if not verify(sender, inner, sig):
            raise EnvelopeError("envelope signature does not verify (tampered)")
        if sender != claimed_sender:
            raise EnvelopeError("envelope sender does not match its routing (spoofed)")
        if msg["to"] != self._identity.node_id:
            raise EnvelopeError("envelope is addressed to another node")
        if msg["kind"] not in self._kinds:
            raise EnvelopeKindError(f"unexpected envelope kind {msg['kind']!r}")
        if abs(now - msg["ts"]) > self._skew:
            raise EnvelopeError("envelope is stale or from the future (check the clocks)")
        if not self._replay.check_and_add(msg["nonce"], now):
            raise EnvelopeError("envelope was replayed")
        return Envelope(
            kind=msg["kind"],
            sender=sender,
            recipient=msg["to"],
            session=msg["session"],
            body=msg["body"],
            ts=float(msg["ts"]),
            nonce=msg["nonce"],
        )


def _parse_inner(inner: bytes) -> dict[str, Any]:
    try:
        msg = json.loads(inner)
    except (UnicodeDecodeError, ValueError) as exc:
        raise EnvelopeError("envelope content is not JSON") from exc
    if not isinstance(msg, dict) or msg.get("v") != 1:
        raise EnvelopeError("envelope version is not supported")
    checks = {
        "kind": str,
        "from": str,
        "to": str,
        "nonce": str,
        "session": str,
        "body": dict,
    }
    for key, typ in checks.items():
        if not isinstance(msg.get(key), typ):
            raise EnvelopeError(f"envelope field {key!r} is missing or malformed")
    ts = msg.get("ts")
    if isinstance(ts, bool) or not isinstance(ts, int | float) or ts != ts:
        raise EnvelopeError("envelope timestamp is malformed")
    try:
        decode_node_id(msg["from"])
    except ValueError as exc:
        raise EnvelopeError("envelope sender is not a node id") from exc
    if len(msg["nonce"]) > 64 or len(msg["session"]) > 64 or len(msg["kind"]) > 32:
        raise EnvelopeError("envelope field too long")
    return msg
