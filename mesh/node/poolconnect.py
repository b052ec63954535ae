"""``mesh connect NAME --signal URL``: a ticket for a public name, from one online member.

The signaling tier says who holds NAME, its pool's roster (checked against the
holder's signature, mesh/proto/roster.py) and which of them are online. The
connector asks them in random order with a sealed ``connreq`` envelope; a
member answers with a sealed ``publish`` carrying its ticket only if it is a
``--public`` share of NAME (holder or pool member) and lists the asker's key in
``--allow``; anything else is a ``reject`` with the reason. The first ticket
wins. Being in a share's ``--allow`` list is what entitles a key to its ticket,
so nothing here widens who may connect.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import time
from typing import Any

from mesh.errors import AdmissionDenied, EnvelopeError, MeshError, PeerUnreachable
from mesh.proto import ticket as ticket_mod
from mesh.proto.envelope import Opener, seal_envelope
from mesh.proto.identity import Identity
from mesh.proto.roster import roster_for
from mesh.proto.ticket import Ticket

from .signal_client import SignalClient

ASK_TIMEOUT = 5.0


async def ticket_by_name(name: str, urls: list[str], identity: Identity,
                         now: float) -> Ticket | None:
    """A member's ticket, or None if nobody holds ``name`` on the tier."""
    opener = Opener(identity, frozenset({"publish", "reject"}))
    waiting: dict[str, asyncio.Future[tuple[str, dict[str, Any]]]] = {}

    def on_payload(sender: str, payload: bytes) -> None:
        with contextlib.suppress(EnvelopeError):
            env = opener.open(payload, sender, time.time())
            fut = waiting.get(env.session)
            if fut is not None and not fut.done():
                fut.set_result((env.kind, env.body))

    client = SignalClient(identity, urls, on_payload)
    await client.start()
    try:
        result = await client.name("lookup", name)
        if result.owner is None:
            return None
        roster = roster_for(result.roster, name, result.owner)
        nodes = roster.nodes() if roster is not None else (result.owner,)
        online = [n for n in result.online if n in nodes]
        if not online:
            raise PeerUnreachable(f"no machine serving the public name {name!r} is online")
        random.shuffle(online)
        reasons = []
        for node in online:
            session = secrets.token_hex(12)
            fut: asyncio.Future[tuple[str, dict[str, Any]]] = (
                asyncio.get_running_loop().create_future())
            waiting[session] = fut
            try:
                await client.send(node, seal_envelope(identity, node, "connreq", session,
                                                      {"name": name}, time.time()))
                kind, body = await asyncio.wait_for(fut, ASK_TIMEOUT)
            except (MeshError, TimeoutError):
                reasons.append(f"{node[:8]} did not answer")
                continue
            finally:
                waiting.pop(session, None)
            if kind != "publish":
                reasons.append(f"{node[:8]}: {str(body.get('reason', 'refused'))[:120]}")
                continue
            try:
                ticket = ticket_mod.decode(str(body.get("ticket", "")), now=now)
            except MeshError:
                reasons.append(f"{node[:8]} sent a bad ticket")
                continue
            if ticket.node_id != node:
                reasons.append(f"{node[:8]} sent another key's ticket")
                continue
            return ticket
        raise AdmissionDenied(f"no machine serving {name!r} gave this key a ticket ("
                              + "; ".join(reasons) + "); ask its owner to add your key "
                              "(`mesh id`) with --allow")
    finally:
        await client.close()
