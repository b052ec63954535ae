"""A public name's pool: the member keys its owner admits, signed by the owner.

A roster lets several node keys publish one public name (``mesh name add``);
the gateway balances the name's requests across the members that are online.
The owner signs it, so neither the signaling server nor anyone else can add a
member: the server checks the signature before it stores a roster and before
it lets a member claim the name, and the gateway and every member check it
again on each lookup. ``seq`` only grows, so an old roster (a removed member
still listed) cannot be replayed over a newer one.

Wire form (JSON text, carried in the ``name`` frames of mesh/proto/frames.py)::

    {"name": NAME, "owner": NODE, "members": [NODE, ...], "seq": INT, "sig": B64(64)}

``sig`` is Ed25519 by ``owner`` over ``b"mesh-roster-v1\\n"`` followed by the
canonical JSON (sorted keys, no spaces) of the other four fields. Members are
sorted, distinct, never the owner, at most ``MAX_MEMBERS``. Sans-I/O.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

from .identity import Identity, decode_node_id, verify
from .names import valid_name

CONTEXT = b"mesh-roster-v1\n"
MAX_MEMBERS = 32
MAX_TEXT = 4096


class RosterError(ValueError):
    """A roster that is malformed or not signed by its owner."""


@dataclass(frozen=True)
class Roster:
    name: str
    owner: str
    members: tuple[str, ...]
    seq: int
    sig: bytes = b""

    def body(self) -> bytes:
        return json.dumps({"name": self.name, "owner": self.owner,
                           "members": list(self.members), "seq": self.seq},
                          sort_keys=True, separators=(",", ":")).encode()

    def encode(self) -> str:
        obj = {"name": self.name, "owner": self.owner, "members": list(self.members),
               "seq": self.seq, "sig": base64.b64encode(self.sig).decode("ascii")}
        return json.dumps(obj, separators=(",", ":"))

    def nodes(self) -> tuple[str, ...]:
        """Everyone who may publish the name: the owner first."""
        return (self.owner, *self.members)


def sign_roster(identity: Identity, name: str, members: set[str] | tuple[str, ...],
                seq: int) -> Roster:
    listed = tuple(sorted(set(members) - {identity.node_id}))
    if len(listed) > MAX_MEMBERS:
        raise RosterError(f"a pool has at most {MAX_MEMBERS} members besides its owner")
    unsigned = Roster(name, identity.node_id, listed, seq)
    return Roster(name, identity.node_id, listed, seq, identity.sign(CONTEXT + unsigned.body()))


def parse_roster(text: object) -> Roster:
    """A roster whose form and owner's signature are good, or ``RosterError``."""
    if not isinstance(text, str) or len(text) > MAX_TEXT:
        raise RosterError("roster must be text of at most 4096 characters")
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise RosterError("roster is not JSON") from exc
    if not isinstance(obj, dict):
        raise RosterError("roster must be an object")
    name, owner, members, seq, sig = (obj.get(k) for k in ("name", "owner", "members", "seq",
                                                           "sig"))
    if not valid_name(name) or not _is_node(owner):
        raise RosterError("roster needs a valid name and owner")
    if (not isinstance(members, list) or len(members) > MAX_MEMBERS
            or not all(_is_node(m) for m in members) or members != sorted(set(members))
            or owner in members):
        raise RosterError(f"roster members must be sorted distinct node ids (at most "
                          f"{MAX_MEMBERS}), not the owner")
    if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq < 2**53:
        raise RosterError("roster seq must be a non-negative integer")
    try:
        raw = base64.b64decode(sig, validate=True) if isinstance(sig, str) else b""
    except (binascii.Error, ValueError):
        raw = b""
    roster = Roster(str(name), str(owner), tuple(members), seq, raw)
    if len(raw) != 64 or not verify(roster.owner, CONTEXT + roster.body(), raw):
        raise RosterError("roster is not signed by its owner")
    return roster


def roster_for(text: object, name: str, owner: str | None) -> Roster | None:
    """The roster of ``name`` if ``text`` is one that ``owner`` (today's holder) signed;
    anything else (none, malformed, forged, an earlier holder's) counts as no pool."""
    if text is None or owner is None:
        return None
    try:
        roster = parse_roster(text)
    except RosterError:
        return None
    return roster if roster.name == name and roster.owner == owner else None


def _is_node(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        decode_node_id(value)
    except ValueError:
        return False
    return True
