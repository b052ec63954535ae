"""The server's answer to one ``name`` frame: claim, release, lookup or members.

Runs NameBook's rules (names.py) through the broker, and the pool rules of
mesh/proto/roster.py: only the name's holder stores a roster, only a roster
its holder signed counts, and a roster's members may claim the name too. Every
answer carries the pool (if any) and which of its keys are online, so the
gateway can balance across them. Errors come back as (code, message) for the
server to send as an ``error`` frame.
"""

from __future__ import annotations

import logging

from mesh.proto import frames as p
from mesh.proto.roster import Roster, roster_for

from .broker import Broker
from .names import NameQuota

log = logging.getLogger("mesh.signal")

Refused = tuple[str, str]


async def name_op(broker: Broker, node: str, op: str, name: str,
                  text: str | None) -> p.NameResult | Refused:
    try:
        roster: Roster | None = None
        if op == "claim":
            owner: str | None = await broker.claim_name(name, node)
            roster = roster_for(await broker.roster(name), name, owner)
            if owner != node and (roster is None or node not in roster.members):
                return "name-taken", f"the name {name!r} belongs to another node key"
        elif op == "release":
            if not await broker.release_name(name, node):
                return "not-owner", f"this node does not hold {name!r}"
            owner = None
        elif op == "members":
            owner = await broker.name_owner(name)
            if owner != node:
                return "not-owner", f"only the key holding {name!r} may change its members"
            roster = roster_for(text, name, node)
            if roster is None:
                return "bad-roster", "the roster is malformed or not signed by the name's holder"
            if not await broker.set_roster(name, roster.seq, text or ""):
                return "stale-roster", f"the members of {name!r} changed meanwhile; try again"
        else:
            owner = await broker.name_owner(name)
            roster = roster_for(await broker.roster(name), name, owner)
        gateway = await broker.gateway()
        nodes = roster.nodes() if roster is not None else (owner,) if owner else ()
        online = tuple([n for n in nodes if await broker.online(n)])
    except NameQuota as exc:
        return "name-quota", str(exc)
    except Exception as exc:  # the broker's backend (Redis) failed: tell the client
        log.warning("name %s %s failed: %s", op, name, exc)
        return "unavailable", "the name service is unavailable"
    return p.NameResult(op, name, owner, gateway, None,
                        roster.encode() if roster else None, online)
