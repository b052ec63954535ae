"""``mesh name add|remove|show``: a public name's pool, changed by its holder.

The holder's key signs each new roster (mesh/proto/roster.py) with the next
``seq`` and the signaling tier stores it; the tier refuses a roster from any
other key, and everyone who reads it checks the signature again.
"""

from __future__ import annotations

from mesh.errors import NotOwner, SignalingError
from mesh.proto.identity import Identity
from mesh.proto.roster import MAX_MEMBERS, roster_for, sign_roster

from . import events
from .signal_client import SignalClient


async def show(client: SignalClient, name: str) -> events.Members:
    result = await client.name("lookup", name)
    if result.owner is None:
        raise SignalingError(f"no key holds the public name {name!r}")
    pool = roster_for(result.roster, name, result.owner)
    return events.Members(name, result.owner, pool.members if pool else (),
                          tuple(result.online))


async def change(client: SignalClient, identity: Identity, name: str, *,
                 add: str | None = None, remove: str | None = None) -> events.Members:
    """Add or remove one member; the new roster is stored before this returns."""
    result = await client.name("lookup", name)
    if result.owner != identity.node_id:
        raise NotOwner(f"this machine's key does not hold the public name {name!r}; only "
                       "its holder may change its members (`mesh share --public` claims it)")
    pool = roster_for(result.roster, name, result.owner)
    members = set(pool.members) if pool else set()
    if add is not None:
        if add == identity.node_id:
            raise NotOwner(f"{add[:12]}... holds {name!r} already; add other machines' keys")
        if add not in members and len(members) >= MAX_MEMBERS:
            raise NotOwner(f"the pool of {name!r} is full ({MAX_MEMBERS} members)")
        members.add(add)
    if remove is not None:
        members.discard(remove)
    roster = sign_roster(identity, name, members, (pool.seq if pool else 0) + 1)
    stored = await client.name("members", name, roster=roster.encode())
    return events.Members(name, identity.node_id, roster.members, tuple(stored.online))
