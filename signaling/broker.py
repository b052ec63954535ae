"""Presence and routing behind one small interface.

A *broker* knows which node ids are attached to which live session and moves
opaque payloads to them. The in-memory broker serves one process; a Redis
broker (several instances) implements the same interface. Sessions attach with
a *mailbox*: a non-blocking sink the broker drops payloads into. A payload is
encoded into its ``deliver`` frame once, and that one string is queued for
every session of the recipient (a node may hold eight).
"""

from __future__ import annotations

import time
from typing import Protocol

from mesh.proto import frames as p

from .names import NameBook, NameRules


class TooManySessions(Exception):
    """The node already has as many sessions on this server as it may."""


class Mailbox(Protocol):
    def deliver_frame(self, frame: str) -> bool:
        """Queue an encoded ``deliver`` frame; False if the session cannot take it."""
        ...

    def replaced(self) -> None:
        """Another session registered the same node; this one must end."""
        ...


class Broker(Protocol):
    async def attach(self, node: str, mailbox: Mailbox) -> None:
        """Make ``node`` reachable through ``mailbox`` too (several processes may share a
        node key: two shares, or a share and a connect on one machine). Beyond
        ``MAX_SESSIONS`` the new session is refused (``TooManySessions``); evicting the
        oldest made processes on one key replace each other forever."""
        ...

    async def detach(self, node: str, mailbox: Mailbox) -> None:
        """Forget ``node`` if ``mailbox`` is still its current session."""
        ...

    async def route(self, sender: str, to: str, payload: bytes) -> str:
        """Deliver a payload to every session of ``to``: "ok", "unknown-destination" or
        "recipient-busy". Envelopes carry a session id, so each process keeps only its own."""
        ...

    async def online(self, node: str) -> bool: ...

    async def allow(self, node: str, now: float) -> bool:
        """Rate limit shared by every instance; False: the node sends too fast."""
        ...

    async def claim_name(self, name: str, node: str) -> str:
        """Bind ``name`` to ``node`` unless another node holds it; return the holder.
        ``NameQuota`` if ``node`` holds as many names as it may (names.py)."""
        ...

    async def release_name(self, name: str, node: str) -> bool:
        """Unbind ``name`` if ``node`` holds it; False if it did not."""
        ...

    async def name_owner(self, name: str) -> str | None: ...

    async def set_roster(self, name: str, seq: int, text: str) -> bool:
        """Store a pool's roster (checked by the server) unless one with a seq at least
        as high is stored; False then. Releasing the name drops it."""
        ...

    async def roster(self, name: str) -> str | None: ...

    async def set_gateway(self, info: dict[str, str]) -> None:
        """Record the public gateway (node, domain, url) announced on this tier."""
        ...

    async def gateway(self) -> dict[str, str] | None: ...

    async def start(self) -> None: ...

    def count(self) -> int:
        """Nodes attached to this instance."""
        ...

    async def close(self) -> None: ...


MAX_SESSIONS = 8


class MemoryBroker:
    """All nodes in one process."""

    def __init__(self, max_sessions: int = MAX_SESSIONS,
                 names: NameRules | None = None) -> None:
        self._nodes: dict[str, list[Mailbox]] = {}
        self._max = max_sessions
        self._names = NameBook(names or NameRules())
        self._gateway: dict[str, str] | None = None

    async def claim_name(self, name: str, node: str) -> str:
        return self._names.claim(name, node, time.time(), self.has)

    async def release_name(self, name: str, node: str) -> bool:
        return self._names.release(name, node)

    async def set_roster(self, name: str, seq: int, text: str) -> bool:
        return self._names.set_roster(name, seq, text)

    async def roster(self, name: str) -> str | None:
        return self._names.roster(name)

    async def name_owner(self, name: str) -> str | None:
        return self._names.owner(name, time.time(), self.has)

    async def set_gateway(self, info: dict[str, str]) -> None:
        self._gateway = dict(info)

    async def gateway(self) -> dict[str, str] | None:
        return self._gateway

    async def attach(self, node: str, mailbox: Mailbox) -> None:
        boxes = self._nodes.setdefault(node, [])
        if mailbox in boxes:
            return
        if len(boxes) >= self._max:
            raise TooManySessions(
                f"this node key already has {self._max} sessions on this server (each "
                "share or connect process holds one; mesh signal --max-sessions-per-key)")
        boxes.append(mailbox)

    async def detach(self, node: str, mailbox: Mailbox) -> None:
        boxes = self._nodes.get(node, [])
        if mailbox in boxes:
            boxes.remove(mailbox)
        if not boxes:
            self._nodes.pop(node, None)

    async def route(self, sender: str, to: str, payload: bytes) -> str:
        boxes = self._nodes.get(to)
        if not boxes:
            return "unknown-destination"
        frame = p.encode(p.Deliver(sender, payload))
        delivered = [box.deliver_frame(frame) for box in list(boxes)]
        return "ok" if any(delivered) else "recipient-busy"

    async def online(self, node: str) -> bool:
        return node in self._nodes

    async def allow(self, node: str, now: float) -> bool:
        return True  # one instance: the per-connection token bucket is the limit

    async def start(self) -> None:
        pass

    def has(self, node: str) -> bool:
        return node in self._nodes

    def nodes(self) -> list[str]:
        return list(self._nodes)

    def count(self) -> int:
        return len(self._nodes)

    async def close(self) -> None:
        self._nodes.clear()
