"""The connecting side's path lifecycle: which peer connections to try, keep and drop.

Sans-I/O, driven the aioquic way: ``start``, ``attempt_up``, ``attempt_failed``,
``lost``, ``close`` and ``handle_timer`` take ``now``; ``next_command()`` and
``get_timer()`` are read back. The glue (mesh/node/connect.py) turns commands
into peer connections: ``Attempt`` (build one, offer it through signaling,
admit it), ``Cancel`` (stop an attempt in flight), ``Install`` (make an
attempt's connection the one new streams use), ``Retire`` (close a connection
that is no longer used); ``Failed`` ends the first connect with an error,
``Lost`` and ``Warn`` are reported to the user.

Policy, with the times in ``LinkTimings``:

- connecting: a ``direct`` attempt (host and server-reflexive candidates
  only, so ICE cannot settle on the relay while hole punching is under way);
  ``relay_after`` s later (at once when UDP to the server is blocked, or when
  the direct attempt failed first) a ``relay`` attempt races it; the first up
  wins and the other is cancelled. Nothing up within ``connect_timeout``: the
  first connect fails, a rebuild waits and tries again.
- up: when the link is lost, at once a rebuild (the same race); after a
  failed rebuild, a wait of ``backoff_min`` doubling to ``backoff_max``, with
  jitter from the injected random source.
- up on the relay: every ``upgrade_interval`` s a direct attempt (bounded by
  ``upgrade_timeout``); if it comes up direct it is installed and the relay
  connection retired.
- ``relay_only``: only relay attempts, no upgrade.

The states are ``STATES``; each input says in which it acts.
"""

from __future__ import annotations

import enum
import random
from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True)
class LinkTimings:
    relay_after: float = 2.0
    """Seconds after which a relay attempt races the direct one."""
    connect_timeout: float = 20.0
    """Seconds all attempts of one round may take together."""
    backoff_min: float = 1.0
    backoff_max: float = 5.0
    upgrade_interval: float = 30.0
    """Seconds between direct attempts while on the relay."""
    upgrade_timeout: float = 9.0
    """Seconds one upgrade attempt may take."""


class State(enum.Enum):
    IDLE = "idle"
    CONNECTING = "connecting"
    UP = "up"
    WAITING = "waiting"
    """A rebuild round failed; the next starts after the backoff."""
    FAILED = "failed"
    CLOSED = "closed"


STATES: dict[State, str] = {
    State.IDLE: "start -> CONNECTING",
    State.CONNECTING: "attempt_up -> UP; all failed or timeout -> FAILED (first) / WAITING",
    State.UP: "lost -> CONNECTING; upgrade attempts come and go",
    State.WAITING: "timer -> CONNECTING",
    State.FAILED: "final",
    State.CLOSED: "final (close from any state)",
}


@dataclass(frozen=True)
class Attempt:
    id: int
    mode: str
    """``direct`` or ``relay``."""


@dataclass(frozen=True)
class Cancel:
    id: int


@dataclass(frozen=True)
class Install:
    id: int
    kind: str
    """How the connection came: ``direct``, ``relay`` (the attempt's mode) or ``upgrade``."""
    started: float
    """When its round started (for ``connect_ms``)."""


@dataclass(frozen=True)
class Retire:
    id: int


@dataclass(frozen=True)
class Failed:
    error: str
    cause: BaseException | None = None
    """The failing attempt's own exception, when there is one (re-raised to the user)."""


@dataclass(frozen=True)
class Lost:
    reason: str


@dataclass(frozen=True)
class Warn:
    message: str


Command = Attempt | Cancel | Install | Retire | Failed | Lost | Warn


def _failed(error: BaseException | str) -> Failed:
    return Failed(str(error), error if isinstance(error, BaseException) else None)


@dataclass
class _Round:
    started: float
    relay_at: float | None
    deadline: float
    attempts: dict[int, str] = field(default_factory=dict)
    relay_started: bool = False
    last_error: BaseException | str | None = None


class Link:
    def __init__(self, timings: LinkTimings = LinkTimings(), *, relay_only: bool = False,
                 rng: random.Random | None = None) -> None:
        self.timings = timings
        self.relay_only = relay_only
        self.state = State.IDLE
        self.link: int | None = None
        self.path: str | None = None
        self._rng = rng or random.Random()
        self._ids = 0
        self._udp_ok = True
        self._has_relay = False
        self._first = True
        self._round: _Round | None = None
        self._backoff = timings.backoff_min
        self._retry_at: float | None = None
        self._upgrade_at: float | None = None
        self._upgrade: tuple[int, float] | None = None
        self._commands: deque[Command] = deque()

    # -- outputs ---------------------------------------------------------------------
    def next_command(self) -> Command | None:
        return self._commands.popleft() if self._commands else None

    def get_timer(self) -> float | None:
        times = [self._retry_at, self._upgrade_at]
        if self._upgrade is not None:
            times.append(self._upgrade[1])
        if self._round is not None:
            times.append(self._round.deadline)
            if not self._round.relay_started:
                times.append(self._round.relay_at)
        found = [t for t in times if t is not None]
        return min(found) if found else None

    # -- inputs ----------------------------------------------------------------------
    def start(self, now: float, *, udp_ok: bool, has_relay: bool) -> None:
        if self.state is not State.IDLE:
            return
        self._udp_ok, self._has_relay = udp_ok, has_relay
        self._begin_round(now)

    def attempt_up(self, attempt: int, path: str, now: float) -> None:
        """An attempt's connection is established and admitted; ``path`` is where ICE
        settled (``direct`` or ``relay``)."""
        if self._upgrade is not None and attempt == self._upgrade[0]:
            self._upgrade = None
            if path == "direct" and self.state is State.UP and self.link is not None:
                old = self.link
                self._install(attempt, "direct", "upgrade", now, now)
                self._commands.append(Retire(old))
            else:
                self._commands.append(Retire(attempt))
                self._schedule_upgrade(now)
            return
        rnd = self._round
        if self.state is not State.CONNECTING or rnd is None or attempt not in rnd.attempts:
            self._commands.append(Retire(attempt))  # late: nobody needs it any more
            return
        mode = rnd.attempts.pop(attempt)
        for other in rnd.attempts:
            self._commands.append(Cancel(other))
        self._round = None
        self._first = False
        self._backoff = self.timings.backoff_min
        self._install(attempt, path, mode, rnd.started, now)

    def attempt_failed(self, attempt: int, error: BaseException | str, now: float, *,
                       fatal: bool = False) -> None:
        """An attempt ended without a connection. ``fatal``: a refusal no retry can
        change (the sharer refused, the ticket is wrong): the first connect fails at once."""
        if self._upgrade is not None and attempt == self._upgrade[0]:
            self._upgrade = None
            self._schedule_upgrade(now)
            return
        rnd = self._round
        if self.state is not State.CONNECTING or rnd is None or attempt not in rnd.attempts:
            return
        del rnd.attempts[attempt]
        rnd.last_error = error
        if fatal and self._first:
            self._end_first(_failed(error))
            return
        if not rnd.relay_started and self._has_relay:
            self._start_relay(rnd)
        elif not rnd.attempts:
            self._round_failed(now, str(error))

    def lost(self, reason: str, now: float) -> None:
        """The installed connection died."""
        if self.state is not State.UP or self.link is None:
            return
        self._commands += [Lost(reason), Retire(self.link)]
        self.link = self.path = None
        self._upgrade_at = None
        if self._upgrade is not None:
            self._commands.append(Cancel(self._upgrade[0]))
            self._upgrade = None
        self._begin_round(now)

    def close(self) -> None:
        if self.state is State.CLOSED:
            return
        if self._round is not None:
            self._commands += [Cancel(a) for a in self._round.attempts]
        if self._upgrade is not None:
            self._commands.append(Cancel(self._upgrade[0]))
        if self.link is not None:
            self._commands.append(Retire(self.link))
        self._reset(State.CLOSED)

    def handle_timer(self, now: float) -> None:
        rnd = self._round
        if rnd is not None:
            if now >= rnd.deadline:
                self._commands += [Cancel(a) for a in rnd.attempts]
                rnd.attempts.clear()
                self._round_failed(now, f"no peer-to-peer path within "
                                        f"{self.timings.connect_timeout:g} s (firewall or "
                                        "NAT in the way?)", timeout=True)
                return
            if not rnd.relay_started and rnd.relay_at is not None and now >= rnd.relay_at:
                self._start_relay(rnd)
        if self._retry_at is not None and now >= self._retry_at:
            self._retry_at = None
            self._begin_round(now)
        if self._upgrade is not None and now >= self._upgrade[1]:
            self._commands.append(Cancel(self._upgrade[0]))
            self._upgrade = None
            self._schedule_upgrade(now)
        if self._upgrade_at is not None and now >= self._upgrade_at and self.state is State.UP:
            self._upgrade_at = None
            attempt = self._new_attempt("direct")
            self._upgrade = (attempt.id, now + self.timings.upgrade_timeout)

    # -- internals -------------------------------------------------------------------
    def _new_attempt(self, mode: str) -> Attempt:
        self._ids += 1
        attempt = Attempt(self._ids, mode)
        self._commands.append(attempt)
        return attempt

    def _begin_round(self, now: float) -> None:
        self.state = State.CONNECTING
        relay_at = None
        if self._has_relay and not self.relay_only:
            relay_at = now + (self.timings.relay_after if self._udp_ok else 0.0)
        rnd = _Round(now, relay_at, now + self.timings.connect_timeout)
        self._round = rnd
        if self.relay_only:
            rnd.relay_started = True
            rnd.attempts[self._new_attempt("relay").id] = "relay"
        else:
            rnd.attempts[self._new_attempt("direct").id] = "direct"
            if relay_at is not None and relay_at <= now:
                self._start_relay(rnd)

    def _start_relay(self, rnd: _Round) -> None:
        rnd.relay_started = True
        rnd.attempts[self._new_attempt("relay").id] = "relay"

    def _round_failed(self, now: float, error: str, timeout: bool = False) -> None:
        if self._first:
            rnd = self._round
            last = None if timeout or rnd is None else rnd.last_error
            self._end_first(_failed(error if last is None else last))
            return
        self._round = None
        self.state = State.WAITING
        self._commands.append(Warn(f"reconnecting: {error}"))
        self._retry_at = now + self._backoff * self._rng.uniform(0.8, 1.2)
        self._backoff = min(self._backoff * 2, self.timings.backoff_max)

    def _end_first(self, failure: Failed) -> None:
        if self._round is not None:
            self._commands += [Cancel(a) for a in self._round.attempts]
        self._commands.append(failure)
        self._reset(State.FAILED)

    def _install(self, attempt: int, path: str, kind: str, started: float,
                 now: float) -> None:
        self.state = State.UP
        self.link, self.path = attempt, path
        self._commands.append(Install(attempt, kind, started))
        self._schedule_upgrade(now)

    def _schedule_upgrade(self, now: float) -> None:
        if (self.state is State.UP and self.path == "relay" and self._udp_ok
                and not self.relay_only):
            self._upgrade_at = now + self.timings.upgrade_interval

    def _reset(self, state: State) -> None:
        self.state = state
        self._round = None
        self._retry_at = self._upgrade_at = None
        self._upgrade = None
        self.link = self.path = None
