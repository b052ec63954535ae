"""The control channel's lifecycle: admission, then ping and liveness. Sans-I/O.

One ``Control`` per peer connection, on each side, driven the aioquic way:
``channel_open(now)``, ``receive(text, now)`` and ``handle_timer(now)`` feed it;
``messages_to_send()``, ``next_event()`` and ``get_timer()`` are read back.
Time is always an argument.

Wire format (UTF-8 JSON text on the ``mesh-ctl`` data channel): the admission
messages of admission.py (``challenge``, ``proof``, ``admitted``, ``denied``),
then ``{"t": "ping", "id": N, "ts": F}`` answered by ``{"t": "pong", "id": N,
"ts": F}`` (``ts`` is the pinger's clock, echoed: the round trip needs no shared
clock).

The states and what each accepts are one table (``ACCEPTS``); a message that is
not in it, a malformed one, or too many before admission ends the session
(``Failed``): before admission every accepted message moves the state on, so
an unadmitted peer gets one try. Timings are the same on both sides (``Timings``): a ping every
``ping_interval`` after admission, and a peer silent for ``dead_after`` is
``Dead``. The sharer gives a peer ``admit_timeout`` from the first offer to be
admitted; the connector the same from the channel opening.
"""

from __future__ import annotations

import enum
import json
from collections import deque
from dataclasses import dataclass

from mesh.errors import AdmissionDenied, HandshakeError, ProtocolError

from . import admission


@dataclass(frozen=True)
class Timings:
    ping_interval: float = 2.0
    """Seconds between pings once admitted."""
    dead_after: float = 8.0
    """Seconds of silence after which the peer is declared dead."""
    admit_timeout: float = 10.0
    """Seconds a peer has to be admitted."""
    ready_after: float = 2.0
    """The sharer reports the peer ready at its first pong, or this long after admission."""
    deny_grace: float = 1.0
    """Seconds the sharer keeps a refused peer, so the refusal reaches it."""


class Role(enum.Enum):
    SHARER = "sharer"
    CONNECTOR = "connector"


class State(enum.Enum):
    WAITING = "waiting"
    """Sharer: for the control channel. Connector: for the challenge."""
    CHALLENGED = "challenged"
    """Sharer: the challenge is out, the proof not yet in."""
    PROVING = "proving"
    """Connector: the proof is out, the verdict not yet in."""
    ADMITTED = "admitted"
    DENYING = "denying"
    """Sharer: the refusal is out; the connection ends after ``deny_grace``."""
    CLOSED = "closed"


ACCEPTS: dict[tuple[Role, State], frozenset[str]] = {
    (Role.SHARER, State.CHALLENGED): frozenset({"proof"}),
    (Role.SHARER, State.ADMITTED): frozenset({"ping", "pong"}),
    (Role.CONNECTOR, State.WAITING): frozenset({"challenge", "denied"}),
    (Role.CONNECTOR, State.PROVING): frozenset({"admitted", "denied"}),
    (Role.CONNECTOR, State.ADMITTED): frozenset({"ping", "pong"}),
}
"""Which messages each side takes in each state; anything else ends the session."""

@dataclass(frozen=True)
class Admitted:
    """Admission succeeded (the connector also verified the sharer's proof)."""


@dataclass(frozen=True)
class Ready:
    """Admitted, and the first round trip is measured (or, on the sharer, ``ready_after``
    passed): report the peer as connected."""

    rtt_ms: float | None


@dataclass(frozen=True)
class Rtt:
    rtt_ms: float


@dataclass(frozen=True)
class Refused:
    """The sharer refused the peer (its proof was wrong); the peer is told."""

    reason: str


@dataclass(frozen=True)
class Failed:
    """Admission did not happen: timeout, protocol error, or (connector) denied."""

    error: Exception


@dataclass(frozen=True)
class Dead:
    """The admitted peer went silent."""

    reason: str


@dataclass(frozen=True)
class Closed:
    """The session is over (after a refusal's grace period)."""


Event = Admitted | Ready | Rtt | Refused | Failed | Dead | Closed


class Control:
    def __init__(self, role: Role, auth: admission.SharerAdmission | admission.ConnectorAdmission,
                 now: float, timings: Timings = Timings()) -> None:
        self.role = role
        self.state = State.WAITING
        self.timings = timings
        self.rtt_ms: float | None = None
        self._auth = auth
        self._deadline: float | None = now + timings.admit_timeout
        self._next_ping: float | None = None
        self._ready_at: float | None = None
        self._last_heard = now
        self._seq = 0
        self._out: list[str] = []
        self._events: deque[Event] = deque()

    # -- outputs ---------------------------------------------------------------------
    def messages_to_send(self) -> list[str]:
        out, self._out = self._out, []
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        times = [t for t in (self._deadline, self._next_ping, self._ready_at) if t is not None]
        if self.state is State.ADMITTED:
            times.append(self._last_heard + self.timings.dead_after)
        return min(times) if times and self.state is not State.CLOSED else None

    @property
    def admitted(self) -> bool:
        return self.state is State.ADMITTED

    # -- inputs ----------------------------------------------------------------------
    def channel_open(self, now: float) -> None:
        """The sharer saw the connector open the control channel: challenge it."""
        if self.role is Role.SHARER and self.state is State.WAITING:
            assert isinstance(self._auth, admission.SharerAdmission)
            self._out.append(self._auth.challenge())
            self.state = State.CHALLENGED

    def receive(self, text: str | bytes, now: float) -> None:
        if self.state in (State.CLOSED, State.DENYING):
            return
        try:
            if not isinstance(text, str):
                raise ProtocolError("control messages are text")
            msg = admission.parse(text)
            kind = msg["t"]
            if kind not in ACCEPTS.get((self.role, self.state), frozenset()):
                raise ProtocolError(f"unexpected control message {kind[:32]!r} while "
                                    f"{self.state.value}")
            self._last_heard = now
            self._dispatch(kind, msg, now)
        except (ProtocolError, HandshakeError, AdmissionDenied) as exc:
            self._fail(exc)

    def handle_timer(self, now: float) -> None:
        if self.state is State.CLOSED:
            return
        if self._deadline is not None and now >= self._deadline:
            if self.state is State.DENYING:
                self._close(Closed())
            else:
                self._fail(ProtocolError(f"not admitted within "
                                         f"{self.timings.admit_timeout:g} s"))
            return
        if self.state is not State.ADMITTED:
            return
        if now - self._last_heard > self.timings.dead_after:
            self._close(Dead(f"no answer for {self.timings.dead_after:g} s"))
            return
        if self._ready_at is not None and now >= self._ready_at:
            self._ready(None)
        if self._next_ping is not None and now >= self._next_ping:
            self._ping(now)

    # -- internals -------------------------------------------------------------------
    def _dispatch(self, kind: str, msg: dict[str, object], now: float) -> None:
        if kind == "ping":
            self._out.append(json.dumps({"t": "pong", "id": msg.get("id"),
                                         "ts": msg.get("ts")}))
        elif kind == "pong":
            ts = msg.get("ts")
            if isinstance(ts, float | int) and not isinstance(ts, bool) and 0 <= now - ts < 60:
                self.rtt_ms = round((now - ts) * 1000, 3)
                if self._ready_at is not None:
                    self._ready(self.rtt_ms)
                else:
                    self._events.append(Rtt(self.rtt_ms))
        elif self.role is Role.SHARER:
            assert isinstance(self._auth, admission.SharerAdmission)
            self._out.append(self._auth.receive(msg))
            if self._auth.admitted:
                self._admit(now)
                self._ready_at = now + self.timings.ready_after
            else:
                self.state = State.DENYING
                self._deadline = now + self.timings.deny_grace
                self._events.append(Refused("wrong ticket secret"))
        else:
            assert isinstance(self._auth, admission.ConnectorAdmission)
            reply = self._auth.receive(msg)  # raises AdmissionDenied/HandshakeError
            if reply is not None:
                self._out.append(reply)
                self.state = State.PROVING
            elif self._auth.admitted:
                self._admit(now)
                self._ready_at = now + self.timings.admit_timeout  # bound: first pong

    def _admit(self, now: float) -> None:
        self.state = State.ADMITTED
        self._deadline = None
        self._events.append(Admitted())
        self._ping(now)

    def _ready(self, rtt_ms: float | None) -> None:
        self._ready_at = None
        self._events.append(Ready(rtt_ms))

    def _ping(self, now: float) -> None:
        self._seq += 1
        self._out.append(json.dumps({"t": "ping", "id": self._seq, "ts": now}))
        self._next_ping = now + self.timings.ping_interval

    def _fail(self, exc: Exception) -> None:
        self._close(Failed(exc))

    def _close(self, event: Event) -> None:
        self.state = State.CLOSED
        self._deadline = self._next_ping = self._ready_at = None
        self._events.append(event)
