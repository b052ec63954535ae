"""``mesh share --public``: holding the public name, answering the gateway.

A public share claims its name on the signaling tier before its ticket is
shown (a name held by another key is ``NameTaken``, exit 7), claims it again
after every reconnection, and answers the gateway's sealed ``pubreq`` with a
sealed ``publish`` carrying its ticket, but only when it is public, holds the
name, and the asker is the gateway the tier names (pinned by the operator with
``mesh signal --gateway``). Any other asker gets ``reject``. A member of the
name's pool (``mesh name add``, mesh/proto/roster.py) does the same. A
``connreq`` (``mesh connect NAME --signal URL``, poolconnect.py) gets the ticket
only if the share's ``--allow`` lists the asker's key.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from mesh.errors import MeshError, NameTaken
from mesh.proto.roster import roster_for

from . import events
from .signal_client import SignalClient

log = logging.getLogger("mesh.share")

Reply = Callable[[SignalClient, str, str, str, dict[str, Any]], Awaitable[None]]


def public_urls(gateway: dict[str, str], name: str) -> tuple[str, str]:
    """The public URLs of ``name`` behind ``gateway`` ({"domain", "url"})."""
    base = gateway.get("url", "").rstrip("/")
    parts = urlsplit(base)
    port = f":{parts.port}" if parts.port else ""
    host_url = f"{parts.scheme or 'https'}://{name}.{gateway.get('domain', '')}{port}/"
    return host_url, f"{base}/s/{name}/"


class Publisher:
    """The public side of one share."""

    def __init__(self, name: str, node_id: str, public: bool,
                 auth: tuple[str, str] | None, emit: events.OnEvent) -> None:
        self.name, self.node_id, self.public, self.auth = name, node_id, public, auth
        self.emit = emit
        self.gateway: str | None = None
        """The node id of the gateway this share last answered."""

    async def claim(self, client: SignalClient, first: bool) -> tuple[str, str] | None:
        """Hold the name; return the gateway's URLs for it (if one is announced)."""
        try:
            result = await client.name("claim", self.name)
        except NameTaken:
            if first:
                raise NameTaken(f"the public name {self.name!r} belongs to another node "
                                "key; pick another with --name") from None
            self.emit(events.Warning(f"lost the public name {self.name!r} to another node key"))
            return None
        except MeshError as exc:
            if first:
                raise
            self.emit(events.Warning(f"could not renew the public name: {exc}"))
            return None
        if result.gateway is None:
            if first:
                self.emit(events.Warning("no gateway is announced on this signaling server "
                                         "yet; the share is public as soon as one is"))
            return None
        return public_urls(result.gateway, self.name)

    async def answer(self, via: SignalClient, sender: str, session: str,
                     body: dict[str, Any], ticket: str, reply: Reply,
                     allow: frozenset[str] | None = None, connect: bool = False) -> None:
        """The gateway asks for this share's ticket (``pubreq``), or, with ``connect``, a
        peer running ``mesh connect NAME`` (``connreq``, poolconnect.py): that one gets
        it only if ``allow`` lists its key."""
        if body.get("name") != self.name:
            return  # another share under this node key
        reason = None
        if connect and (allow is None or sender not in allow):
            reason = ("this share does not admit your key by name; ask its owner to add "
                      "it with --allow")
        elif not self.public:
            reason = "this share is not public"
        else:
            try:
                result = await via.name("lookup", self.name)
            except MeshError as exc:
                log.info("pubreq lookup failed: %s", exc)
                return
            pool = roster_for(result.roster, self.name, result.owner)
            if result.owner != self.node_id and (pool is None
                                                 or self.node_id not in pool.members):
                reason = "this node does not hold the name and is not in its pool"
            elif not connect and (result.gateway is None or result.gateway["node"] != sender):
                reason = "you are not the gateway of this signaling server"
        if reason is not None:
            await reply(via, sender, "reject", session, {"reason": reason})
            return
        if not connect:
            self.gateway = sender
        # the gateway enforces --public-auth; a peer connecting directly does not need it
        auth = f"{self.auth[0]}:{self.auth[1]}" if self.auth and not connect else None
        await reply(via, sender, "publish", session, {"ticket": ticket, "auth": auth})
