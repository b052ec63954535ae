# Private state of aioice and aiortc, which their type hints do not describe:
# mypy: disable-error-code="attr-defined,no-any-return"
"""Every private name of aiortc and aioice that mesh touches, and nothing else.

The data plane uses their public API wherever there is one: aioice's
``Connection`` (subclassed through its public hooks ``get_component_candidates``
and ``data_received``) and aiortc's ``RTCCertificate``, ``RTCDtlsTransport``
(``start``, ``stop``, ``state``) and ``RTCDtlsParameters``. What is left is
listed here, each with why, and tests/unit/test_private.py fails as soon as an
upstream release changes one of them:

- ``Connection._nominated``: the candidate pair ICE selected (aioice has no
  public accessor); the data plane sends on it, reads its socket, and reports it.
- ``RTCDtlsTransport._ssl``: the OpenSSL session after the handshake, so records
  are sealed and opened here, whole, on the hot path (aiortc's own reader
  truncates them at 1500 bytes).
- The ICE transport an ``RTCDtlsTransport`` is given is duck-typed: it calls
  ``transport._recv()`` and ``transport._send(data)`` and reads
  ``transport.role``. mesh passes its own adapter (mesh/transport/dtls.py).
- pyOpenSSL's ``Connection._ssl``, ``_into_ssl`` and ``_from_ssl`` (the
  ``SSL*`` and its two memory BIOs) and its cffi binding ``OpenSSL._util``
  (``ffi``, ``lib``): each record is sealed and opened with one direct
  ``SSL_write``/``BIO_read`` or ``BIO_write``/``SSL_read`` call on the same
  session, 1.7 us a record instead of pyOpenSSL's 5.1 (sealing) and 3.5
  (opening), measured on this machine at 1400 bytes.
- ``Connection._protocols``: the sockets ICE gathered on, to reach each relayed
  candidate's TURN client and note the peer addresses its relay refuses (relaywatch.py),
  and the host sockets a router maps and priming sets the TTL of (ice.py).
- ``Connection._check_list``, ``_early_checks_done``, ``_closing`` and the pairs'
  ``task``: priming restarts a check in flight at once (RFC 8445 7.3.1.4), once
  connect() runs the checks and before close() (ice.py).
- ``TurnTransport.__inner_protocol`` and its ``peer_to_channel``,
  ``channel_to_peer``, ``channel_refresh_at``, ``peer_connect_waiters``,
  ``transport``: to send a relayed datagram as TURN ChannelData at once, as
  aioice itself would, instead of aioice spawning a task per datagram (and to
  read ChannelData in batches, wire.py); aioice's path is used whenever it has
  work to do first (a channel to bind or refresh).
"""

from __future__ import annotations

import time
from typing import Any

from aioice import Connection
from aioice.ice import CandidatePair
from aiortc import RTCDtlsTransport
from OpenSSL import SSL

CHANNEL_MARGIN = 5.0
"""Seconds before a TURN channel binding is due for refresh from which aioice's
path is taken instead (it refreshes the binding)."""


def nominated_pair(connection: Connection) -> CandidatePair | None:
    return connection._nominated.get(1)


def host_sockets(connection: Connection) -> list[tuple[str, int, Any]]:
    """(address, port, datagram transport) of each host candidate's UDP socket."""
    out = []
    for protocol in connection._protocols:
        candidate = getattr(protocol, "local_candidate", None)
        transport = getattr(protocol, "transport", None)
        if candidate is None or candidate.type != "host" or transport is None:
            continue
        out.append((candidate.host, candidate.port, transport))
    return out


def checking(connection: Connection) -> bool:
    """connect() runs the checks (it took over the early ones) and close() has not begun."""
    return bool(connection._early_checks_done) and not connection._closing


def recheck(connection: Connection, protocol: Any, addr: tuple[str, int] | None) -> None:
    """Start the check of the pair (``protocol``, ``addr``) again now if one is in
    flight (``addr`` None: every such pair of ``protocol``). RFC 8445 7.3.1.4: a
    triggered check on an In-Progress pair replaces its transaction; aioice leaves it
    to its retransmission timer."""
    for pair in connection._check_list:
        if (pair.protocol is protocol and addr in (None, pair.remote_addr)
                and pair.task is not None
                and pair.state == CandidatePair.State.IN_PROGRESS):
            pair.task.cancel()
            pair.task = None
            connection.check_start_task(pair)


def dtls_session(transport: RTCDtlsTransport) -> SSL.Connection:
    session = transport._ssl
    assert session is not None, "the DTLS handshake has not started"
    return session


def openssl(session: SSL.Connection) -> tuple[Any, Any, Any, Any, Any]:
    """``(ffi, lib, SSL*, BIO* into the session, BIO* out of it)``."""
    from OpenSSL._util import ffi, lib

    return ffi, lib, session._ssl, session._into_ssl, session._from_ssl


def turn_clients(connection: Connection) -> list[Any]:
    """The TURN client protocols under the relayed candidates ``connection`` gathered."""
    clients = (turn_client(getattr(p, "transport", None)) for p in connection._protocols)
    return [c for c in clients if c is not None]


def turn_client(transport: Any) -> Any | None:
    """The TURN client protocol under a relayed candidate's transport, or None for a
    host candidate's plain UDP transport."""
    return getattr(transport, "_TurnTransport__inner_protocol", None)


def turn_channel(client: Any, addr: tuple[str, int]) -> int | None:
    """The channel bound to ``addr`` if a datagram may go out on it right now."""
    channel = client.peer_to_channel.get(addr)
    if channel is None or addr in client.peer_connect_waiters:
        return None
    if time.time() + CHANNEL_MARGIN > client.channel_refresh_at.get(channel, 0):
        return None
    return channel


def turn_socket_transport(client: Any) -> Any:
    """The asyncio transport to the TURN server (UDP datagram or TCP stream)."""
    return client.transport
