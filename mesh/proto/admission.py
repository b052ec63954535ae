"""Admission: the connecting peer proves it holds the ticket's secret.

Runs on the ``mesh-ctl`` data channel, i.e. inside the DTLS session whose
certificates both sides pinned through the signed offer and answer. The proof
is an HMAC keyed by the admission secret over a transcript that binds both
node ids, both DTLS fingerprints and a fresh sharer nonce, so the secret never
crosses the signaling server and a proof cannot be replayed into another
session. The sharer answers with its own MAC over the same transcript, so the
connector also learns that the sharer holds the secret.

A ticket's secret is derived from the share's master secret and the ticket's
expiry (``ticket_secret``); the proof names that expiry and its MAC covers it.
The sharer derives the key from the expiry the connector names, so naming a
later one than the ticket's gives a wrong key, and refuses an expiry in the
past: an expired ticket is refused by the sharer itself (a client that skips
its own check gets nowhere), and a restarted share, with the same master
secret, does not revive it. The LAN's derivable "open" secret is a key only
where the caller passes it (offers that came through the LAN endpoint).

Messages (UTF-8 JSON text on ``mesh-ctl``)::

    sharer -> connector   {"t": "challenge", "nonce": HEX(32 bytes)}
    connector -> sharer   {"t": "proof", "mac": HEX(32 bytes), "exp": UNIX SECONDS}
    sharer -> connector   {"t": "admitted", "mac": HEX(32 bytes)}
                        | {"t": "denied", "reason": TEXT}

Afterwards the same channel carries ``{"t": "ping", "id": N, "ts": F}`` and
``{"t": "pong", "id": N, "ts": F}`` for round-trip time.

Sans-I/O: plain functions and two small state machines fed parsed messages.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass
from typing import Any

from mesh.errors import AdmissionDenied, HandshakeError, ProtocolError

_FP = re.compile(r"^a=fingerprint:(\S+) ([0-9A-Fa-f:]+)\s*$", re.MULTILINE)
MAX_CTL = 2048


def fingerprints(sdp: str) -> tuple[str, ...]:
    """The DTLS fingerprints an SDP pins, normalised and sorted."""
    return tuple(sorted(f"{alg.lower()} {fp.upper()}" for alg, fp in _FP.findall(sdp)))


@dataclass(frozen=True)
class Transcript:
    sharer: str
    connector: str
    offer_fps: tuple[str, ...]
    answer_fps: tuple[str, ...]

    def bytes(self, nonce: bytes, role: bytes, expires: int) -> bytes:
        parts = [b"mesh-admit-v2", role, self.sharer.encode(), self.connector.encode(),
                 "|".join(self.offer_fps).encode(), "|".join(self.answer_fps).encode(), nonce,
                 str(expires).encode()]
        return b"\n".join(parts)


def mac(secret: bytes, transcript: Transcript, nonce: bytes, role: bytes,
        expires: int) -> bytes:
    return hmac.new(secret, transcript.bytes(nonce, role, expires), hashlib.sha256).digest()


def ticket_secret(master: bytes, expires: int, size: int = 16) -> bytes:
    """The secret a ticket expiring at ``expires`` carries."""
    label = b"mesh-ticket-v1\n" + str(expires).encode()
    return hmac.new(master, label, hashlib.sha256).digest()[:size]


@dataclass(frozen=True)
class Keys:
    """What a sharer admits with."""

    master: bytes | None = None
    """Tickets: each one's secret is ``ticket_secret(master, its expiry)``."""
    open: bytes | None = None
    """The LAN's derivable secret (advert.open_secret), for offers from the LAN endpoint
    of a share open to it; None everywhere else."""


def parse(text: str) -> dict[str, Any]:
    if len(text) > MAX_CTL:
        raise ProtocolError("control message too long")
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError("control message is not JSON") from exc
    if not isinstance(obj, dict) or not isinstance(obj.get("t"), str):
        raise ProtocolError("control message has no type")
    return obj


def _hex(obj: dict[str, Any], key: str, size: int) -> bytes:
    value = obj.get(key)
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != size:
        raise ProtocolError(f"control field {key!r} is malformed")
    return raw


class SharerAdmission:
    """The sharer's side: challenge, check the proof, answer."""

    def __init__(self, keys: Keys, transcript: Transcript, now: float) -> None:
        self._keys = keys
        self._now = now
        self._t = transcript
        self._nonce = secrets.token_bytes(32)
        self.admitted = False
        self.done = False

    def challenge(self) -> str:
        return json.dumps({"t": "challenge", "nonce": self._nonce.hex()})

    def receive(self, obj: dict[str, Any]) -> str:
        """Handle the connector's proof; returns the reply to send."""
        if self.done or obj.get("t") != "proof":
            raise ProtocolError("expected an admission proof")
        self.done = True
        got = _hex(obj, "mac", 32)
        expires = obj.get("exp")
        if not isinstance(expires, int) or isinstance(expires, bool) or not (
                0 <= expires < 1 << 32):
            raise ProtocolError("control field 'exp' is malformed")
        keys = [] if self._keys.open is None else [self._keys.open]
        expired = self._keys.master is not None and expires < self._now
        if self._keys.master is not None and not expired:
            keys.append(ticket_secret(self._keys.master, expires))
        for key in keys:
            if hmac.compare_digest(got, mac(key, self._t, self._nonce, b"connector", expires)):
                self.admitted = True
                return json.dumps({"t": "admitted", "mac": mac(
                    key, self._t, self._nonce, b"sharer", expires).hex()})
        reason = "the ticket has expired" if expired else "wrong ticket secret"
        return json.dumps({"t": "denied", "reason": reason})


class ConnectorAdmission:
    """The connector's side: answer the challenge, check the sharer's MAC."""

    def __init__(self, secret: bytes, transcript: Transcript, expires: int) -> None:
        self._secret = secret
        self._t = transcript
        self._expires = expires
        self._nonce: bytes | None = None
        self.admitted = False

    def receive(self, obj: dict[str, Any]) -> str | None:
        """Feed a sharer message; returns a reply to send, or None when done.

        Raises AdmissionDenied or HandshakeError when admission fails.
        """
        kind = obj.get("t")
        if kind == "challenge" and self._nonce is None:
            self._nonce = _hex(obj, "nonce", 32)
            proof = mac(self._secret, self._t, self._nonce, b"connector", self._expires)
            return json.dumps({"t": "proof", "mac": proof.hex(), "exp": self._expires})
        if kind == "admitted" and self._nonce is not None:
            got = _hex(obj, "mac", 32)
            want = mac(self._secret, self._t, self._nonce, b"sharer", self._expires)
            if not hmac.compare_digest(got, want):
                raise HandshakeError("the sharer could not prove it holds the ticket secret")
            self.admitted = True
            return None
        if kind == "denied":
            reason = obj.get("reason")
            raise AdmissionDenied(f"the sharer refused us: {str(reason)[:200]}")
        raise ProtocolError(f"unexpected admission message {str(kind)[:32]!r}")
