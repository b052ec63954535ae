"""One attempt at a peer connection to the share, as the connecting side makes it.

``Dialer.dial`` builds a peer connection, offers it to the sharer through
signaling in a sealed envelope, takes the sealed answer (or refusal), waits
for ICE and DTLS, and runs admission in a control machine
(mesh/proto/control.py) until it is ``Ready``; the result is a ``Link``. Its
failures are ``MeshError``s: ``Refused`` and ``HandshakeError`` (a tampered
answer) among them, which no retry can change. ``on_payload`` routes the
sharer's answers to the attempt waiting for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable
from typing import Any

from mesh.errors import (
    ConnectError,
    EnvelopeError,
    EnvelopeKindError,
    HandshakeError,
    MeshError,
    Refused,
)
from mesh.proto import admission, control
from mesh.proto.envelope import Opener, seal_envelope
from mesh.proto.identity import Identity
from mesh.proto.ticket import Ticket, share_tag
from mesh.transport.ice import IcePlan
from mesh.transport.peer import PathInfo, Peer
from mesh.transport.pump import ControlPump

from .config import ConnectConfig
from .signal_client import SignalClient

OnControl = Callable[[control.Event], None]


class Link:
    """One established, admitted peer connection."""

    def __init__(self, peer: Peer, pump: ControlPump, info: PathInfo, session: str) -> None:
        self.peer, self.pump, self.info, self.session = peer, pump, info, session
        self.streams = 0
        self.lost = False
        """The sharer stopped answering on it: streams on it cannot finish."""

    @property
    def rtt_ms(self) -> float | None:
        return self.pump.machine.rtt_ms


class Dialer:
    """Makes attempts at peer connections to one share."""

    def __init__(self, identity: Identity, ticket: Ticket, config: ConnectConfig) -> None:
        self.identity, self.ticket, self.config = identity, ticket, config
        self.signal: SignalClient | None = None
        self._opener = Opener(identity, frozenset({"answer", "reject"}))
        self._answers: dict[str, asyncio.Future[tuple[str, dict[str, Any]]]] = {}

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    async def dial(self, mode: str, plan: IcePlan, udp_ok: bool, on_control: OnControl) -> Link:
        """One admitted peer connection; ``on_control`` gets its control events after
        admission (``Dead``, ``Failed``)."""
        peer = Peer(plan, mode, udp_ok, self.config.ice)
        session = secrets.token_hex(8)
        try:
            return await self._handshake(peer, session, mode, on_control)
        except BaseException:
            await self.discard(peer, session)
            raise

    def on_payload(self, sender: str, payload: bytes) -> None:
        """A payload from the signaling server: the sharer's answer to an attempt."""
        try:
            env = self._opener.open(payload, sender, time.time())
        except EnvelopeKindError:
            return  # e.g. our own offer, when the share runs under the same node key
        except EnvelopeError as exc:
            # Only the server stamps "from", so a bad envelope "from the sharer" means
            # the server (or whatever is between us) altered it: fail loudly.
            if sender == self.ticket.node_id:
                for fut in self._answers.values():
                    if not fut.done():
                        fut.set_exception(HandshakeError(
                            f"the sharer's answer failed verification ({exc}); the "
                            "signaling server or the network tampered with it"))
            return
        waiting = self._answers.get(env.session)
        if waiting is not None and not waiting.done() and env.sender == self.ticket.node_id:
            waiting.set_result((env.kind, env.body))

    async def bye(self, session: str) -> None:
        """Tell the sharer an attempt or a link is over."""
        if self.signal is None or not self.signal.registered.is_set():
            return
        blob = seal_envelope(self.identity, self.ticket.node_id, "bye", session, {}, time.time())
        with contextlib.suppress(MeshError, asyncio.CancelledError):
            await self.signal.send(self.ticket.node_id, blob)

    async def discard(self, peer: Peer, session: str) -> None:
        await peer.close()
        await self.bye(session)

    async def _handshake(self, peer: Peer, session: str, mode: str,
                         on_control: OnControl) -> Link:
        cfg = self.config
        offer_sdp = await peer.offer()
        kind, body = await self._offer(session, {
            "sdp": offer_sdp, "name": self.ticket.name, "mode": mode,
            "share": share_tag(self.ticket.name), "lan": cfg.by_name})
        if kind == "reject":
            raise Refused(f"the sharer refused: {str(body.get('reason'))[:200]}")
        answer_sdp = body.get("sdp")
        if not isinstance(answer_sdp, str):
            raise HandshakeError("the sharer's answer carries no SDP")
        await peer.accept(answer_sdp)
        await peer.connected(cfg.connect_timeout)
        transcript = admission.Transcript(
            sharer=self.ticket.node_id, connector=self.identity.node_id,
            offer_fps=admission.fingerprints(offer_sdp),
            answer_fps=admission.fingerprints(answer_sdp))
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        machine = control.Control(
            control.Role.CONNECTOR, admission.ConnectorAdmission(
                self.ticket.secret, transcript, self.ticket.expires),
            self._now(), control.Timings(admit_timeout=cfg.admission_timeout))
        def on_event(event: control.Event) -> None:
            if ready.done():
                on_control(event)
            elif isinstance(event, control.Ready):
                ready.set_result(None)
            elif isinstance(event, control.Failed):
                error = event.error
                ready.set_exception(error if isinstance(error, ConnectError) else
                                    ConnectError(f"admission failed: {error}"))

        pump = ControlPump(machine, on_event)
        assert peer.control is not None  # opened by offer()
        pump.attach(peer.control)
        try:
            await ready
        except BaseException:
            pump.close()
            raise
        return Link(peer, pump, peer.path(), session)

    async def _offer(self, session: str, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Send the sealed offer; the sharer's answer (or refusal), within answer_timeout."""
        if self.signal is None:
            raise ConnectError("no signaling session")
        timeout = self.config.answer_timeout
        fut: asyncio.Future[tuple[str, dict[str, Any]]] = (
            asyncio.get_running_loop().create_future())
        self._answers[session] = fut
        blob = seal_envelope(self.identity, self.ticket.node_id, "offer", session, body,
                             time.time())
        try:
            errors = await self.signal.send(self.ticket.node_id, blob)
            try:
                waits: set[asyncio.Future[Any]] = {fut, errors}
                done, _ = await asyncio.wait(waits, timeout=timeout,
                                             return_when=asyncio.FIRST_COMPLETED)
                if errors in done:
                    errors.result()
            finally:
                errors.cancel()
            if fut not in done:
                raise ConnectError(f"the sharer did not answer within {timeout:g} s"
                                   " (is the share still running?)")
            return fut.result()
        finally:
            self._answers.pop(session, None)

