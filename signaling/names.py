"""Who holds which public name: first come, capped per key, freed after long absence.

Sans-I/O; the memory broker keeps a ``NameBook``, the Redis broker runs the same
rules in one Lua script (redis_broker.py). A name belongs to the first node
that claims it. A node holds at most ``max_per_node`` names (a claim beyond
is ``NameQuota``). A holder refreshes its names whenever it claims one again
(shares do on every registration); a name whose holder is offline and has not
refreshed it for ``offline_ttl`` seconds goes to the next claimant. Squatting
needs keys, then, and the server's per-address claim rate (server.py) makes
keys slow to use.

A name's holder may also store a roster (mesh/proto/roster.py): the other keys
that may publish it. The book keeps the text and its ``seq`` (a lower or equal
seq is refused, so an old roster is never replayed); the server checks the
signature. Releasing the name, or losing it after ``offline_ttl``, drops it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


class NameQuota(Exception):
    """The node holds as many names as it may."""


@dataclass(frozen=True)
class NameRules:
    max_per_node: int = 16
    offline_ttl: float = 30 * 86400.0
    """Seconds a name stays with a holder that is offline and has not refreshed it."""


@dataclass
class NameBook:
    rules: NameRules = field(default_factory=NameRules)
    _names: dict[str, tuple[str, float]] = field(default_factory=dict)
    _by_node: dict[str, set[str]] = field(default_factory=dict)
    _rosters: dict[str, tuple[int, str]] = field(default_factory=dict)

    def set_roster(self, name: str, seq: int, text: str) -> bool:
        held = self._rosters.get(name)
        if held is not None and held[0] >= seq:
            return False
        self._rosters[name] = (seq, text)
        return True

    def roster(self, name: str) -> str | None:
        held = self._rosters.get(name)
        return None if held is None else held[1]

    def claim(self, name: str, node: str, now: float, online: Callable[[str], bool]) -> str:
        """The holder after this claim (``node`` if it got or kept it)."""
        held = self._names.get(name)
        if held is not None:
            owner, seen = held
            if owner == node:
                self._names[name] = (node, now)
                return node
            if online(owner) or now - seen < self.rules.offline_ttl:
                return owner
            self._drop(name, owner)  # long gone: the name is free again
        mine = self._by_node.setdefault(node, set())
        if len(mine) >= self.rules.max_per_node:
            if not mine:
                del self._by_node[node]
            raise NameQuota(f"this node key holds {len(mine)} names, the most it may; "
                            "release one first")
        mine.add(name)
        self._names[name] = (node, now)
        return node

    def release(self, name: str, node: str) -> bool:
        held = self._names.get(name)
        if held is None or held[0] != node:
            return False
        self._drop(name, node)
        return True

    def owner(self, name: str, now: float, online: Callable[[str], bool]) -> str | None:
        held = self._names.get(name)
        if held is None:
            return None
        owner, seen = held
        if not online(owner) and now - seen >= self.rules.offline_ttl:
            return None  # claimable; dropped by the next claim
        return owner

    def count(self, node: str) -> int:
        return len(self._by_node.get(node, ()))

    def _drop(self, name: str, owner: str) -> None:
        self._names.pop(name, None)
        self._rosters.pop(name, None)
        mine = self._by_node.get(owner)
        if mine is not None:
            mine.discard(name)
            if not mine:
                del self._by_node[owner]
