"""The gateway's pure pool logic: which member serves a request, and who is healthy.

A public name with a roster (mesh/proto/roster.py) is served by several node
keys. For each request the gateway asks ``Pool.pick`` for one member among those
whose tunnel is up:

- ``least`` (default): fewest outstanding requests, ties in turn; a client
  connection keeps its member (``prefer``) while that one has at most
  ``SLACK`` more outstanding than the least loaded, so its keep-alive stream
  through the tunnel is reused instead of a new one per request;
- ``round-robin``: each in turn;
- ``hash:HEADER``: rendezvous hashing of the header's value, so one value keeps
  its member while the pool changes (members joining or leaving move only the
  values that hashed to them); a request without the header is ``least``;
- ``cookie``: the member named by the sticky cookie (``mesh-member=TOKEN``) if it
  is usable, else ``least``, and the gateway sets the cookie on the answer.

Health, per member (``Health``), passive and active: a failed connection ejects
the member at once, ``EJECT_5XX`` 5xx answers in a row do too, and so does a
failed probe of ``--health-path``; an ejected member is skipped for a backoff
(1 s doubling to 30 s) and then tried again by itself. When every up member is
ejected, all of them are used anyway (a pool that answers 5xx still answers),
and when no tunnel is up the gateway answers 502. Clocks are arguments.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field

BACKOFF_MIN = 1.0
BACKOFF_MAX = 30.0
EJECT_5XX = 3
SLACK = 1
COOKIE = "mesh-member"
MODES = ("least", "round-robin", "cookie")


def check_balance(mode: str) -> str | None:
    """None if ``mode`` is a balancing mode, else why not."""
    if mode in MODES:
        return None
    if mode.startswith("hash:") and _token(mode[5:]):
        return None
    return (f"--balance {mode!r}: use least, round-robin, cookie or hash:HEADER "
            "(for example hash:X-User)")


def _token(text: str) -> bool:
    return bool(text) and all(c.isalnum() or c in "-_" for c in text) and text.isascii()


def member_token(node: str) -> str:
    """What the sticky cookie carries for a member: not its key, a short digest."""
    return hashlib.sha256(b"mesh-member\n" + node.encode()).hexdigest()[:16]


@dataclass
class Health:
    failures: int = 0
    """Failures in a row (a success resets)."""
    errors: int = 0
    """5xx answers in a row."""
    ejected_until: float = 0.0
    ejections: int = 0

    def usable(self, now: float) -> bool:
        return now >= self.ejected_until

    def success(self) -> None:
        self.failures = self.errors = 0

    def failure(self, now: float) -> None:
        """The member could not be reached, or its probe failed: eject it."""
        self.failures += 1
        self._eject(now)

    def answered(self, status: int, now: float) -> None:
        if status < 500:
            self.success()
            return
        self.errors += 1
        if self.errors >= EJECT_5XX:
            self.errors = 0
            self.failures += 1
            self._eject(now)

    def _eject(self, now: float) -> None:
        backoff = min(BACKOFF_MAX, BACKOFF_MIN * 2 ** min(self.failures - 1, 16))
        self.ejected_until = now + backoff
        self.ejections += 1


@dataclass
class Member:
    node: str
    outstanding: int = 0
    served: int = 0
    health: Health = field(default_factory=Health)


@dataclass
class Pool:
    mode: str = "least"
    members: dict[str, Member] = field(default_factory=dict)
    _turn: itertools.count[int] = field(default_factory=itertools.count)

    def member(self, node: str) -> Member:
        found = self.members.get(node)
        if found is None:
            found = self.members[node] = Member(node)
        return found

    def keep(self, nodes: Iterable[str]) -> None:
        """The pool is now ``nodes`` (its roster changed): forget the others."""
        wanted = set(nodes)
        for node in list(self.members):
            if node not in wanted:
                del self.members[node]
        for node in wanted:
            self.member(node)

    def pick(self, up: Iterable[str], now: float, *, key: str | None = None,
             cookie: str | None = None, avoid: Iterable[str] = (),
             prefer: str | None = None) -> str | None:
        """The member for one request among ``up`` (their tunnels are up), or None.
        ``key``: the hash header's value; ``cookie``: the sticky cookie's value;
        ``avoid``: members already tried for this request; ``prefer``: the member the
        client connection used last (``least`` keeps it if it is not busier)."""
        skip = set(avoid)
        ready = [self.member(n) for n in sorted(set(up)) if n not in skip]
        if not ready:
            return None
        healthy = [m for m in ready if m.health.usable(now)] or ready
        if self.mode == "cookie" and cookie:
            for m in healthy:
                if member_token(m.node) == cookie:
                    return m.node
        if self.mode.startswith("hash:") and key is not None:
            return max(healthy, key=lambda m: _weight(m.node, key)).node
        turn = next(self._turn)
        if self.mode == "round-robin":
            return healthy[turn % len(healthy)].node
        fewest = min(m.outstanding for m in healthy)
        for m in healthy:
            if m.node == prefer and m.outstanding <= fewest + SLACK:
                return m.node
        tied = [m for m in healthy if m.outstanding == fewest]
        return tied[turn % len(tied)].node

    def started(self, node: str) -> None:
        m = self.member(node)
        m.outstanding += 1
        m.served += 1

    def ended(self, node: str) -> None:
        """A request ended with nothing to say of the member (the caller left first)."""
        m = self.members.get(node)
        if m is not None:
            m.outstanding = max(0, m.outstanding - 1)

    def finished(self, node: str, status: int | None, now: float) -> None:
        """A request ended: ``status`` the member's answer, None if it could not be
        reached or broke before answering."""
        self.ended(node)
        m = self.members.get(node)
        if m is None:
            return
        if status is None:
            m.health.failure(now)
        else:
            m.health.answered(status, now)


def _weight(node: str, key: str) -> bytes:
    return hashlib.blake2b(f"{node}\n{key}".encode("utf-8", "replace"), digest_size=8).digest()
