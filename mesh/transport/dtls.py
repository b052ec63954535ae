"""DTLS for the data plane: aiortc's handshake, then whole records on the same session.

The handshake is aiortc's ``RTCDtlsTransport`` as shipped: its certificate,
its cipher list and its check of the peer's certificate against the
fingerprints the signed description pinned (which admission binds to). It
runs over ``_IceAdapter``, the duck-typed ICE transport it expects
(``_recv``, ``_send``, ``role``; see _private.py), fed with the datagrams
that arrive while it runs.

Once it is done, ``Records`` seals SCTP packets into records and opens
records into SCTP packets on the same OpenSSL session, up to 16 KiB each
(aiortc's reader stops at 1500 bytes), with direct calls into OpenSSL (the
binding pyOpenSSL itself uses, _private.py), and aiortc's own reader is left
idle until ``close`` sends close_notify through aiortc's ``stop``. A datagram
may carry several records; each is opened.

Roles: the DTLS server is whoever the descriptions made passive (the
offerer, which says ``actpass`` and is answered ``active``); aiortc picks its
role from the ICE role it is shown, so the adapter shows it the one we want.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from aiortc import RTCCertificate, RTCDtlsFingerprint, RTCDtlsParameters, RTCDtlsTransport
from OpenSSL import SSL

from mesh.errors import HandshakeError

from . import _private

MAX_RECORD = 65536


class _IceAdapter:
    """What ``RTCDtlsTransport`` reads from and writes to."""

    def __init__(self, server: bool, send: Callable[[bytes], None]) -> None:
        self.role = "controlling" if server else "controlled"
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.idle = False
        self.closed = asyncio.get_running_loop().create_future()
        self._send_datagram = send

    async def _recv(self) -> bytes:
        if not self.idle:
            data = await self.queue.get()
            if data is not None:
                return data
        await self.closed  # the records path reads from now on: aiortc's reader waits
        raise ConnectionError("closed")

    async def _send(self, data: bytes) -> None:
        self._send_datagram(data)


class Handshake:
    """One DTLS handshake; ``records()`` once it succeeded."""

    def __init__(self, certificate: RTCCertificate, server: bool,
                 send: Callable[[bytes], None]) -> None:
        self.server = server
        self._adapter = _IceAdapter(server, send)
        self._transport = RTCDtlsTransport(self._adapter, [certificate])  # type: ignore[arg-type]

    def feed(self, datagram: bytes) -> None:
        """A datagram that arrived during the handshake."""
        self._adapter.queue.put_nowait(datagram)

    async def run(self, fingerprints: tuple[tuple[str, str], ...]) -> Records:
        params = RTCDtlsParameters(fingerprints=[
            RTCDtlsFingerprint(algorithm=alg, value=value) for alg, value in fingerprints])
        await self._transport.start(params)
        if self._transport.state != "connected":
            raise HandshakeError("the DTLS handshake failed (the peer's certificate does not "
                                 "match the signed description, or it stopped answering)")
        # synchronously, before aiortc's reader task first runs: from here on the
        # records path opens everything, including what is already queued
        self._adapter.idle = True
        backlog = []
        while not self._adapter.queue.empty():
            item = self._adapter.queue.get_nowait()
            if item is not None:
                backlog.append(item)
        return Records(_private.dtls_session(self._transport), backlog,
                       self._adapter._send_datagram)

    async def close(self) -> None:
        """close_notify (if the handshake got that far), and aiortc's reader ends."""
        with contextlib.suppress(Exception):
            await self._transport.stop()
        if not self._adapter.closed.done():
            self._adapter.closed.set_result(None)
        self._adapter.queue.put_nowait(None)


class Records:
    """Seal and open DTLS application records on an established session."""

    def __init__(self, session: SSL.Connection, backlog: list[bytes],
                 send: Callable[[bytes], None]) -> None:
        self._ssl = session
        ffi, self._lib, self._session, self._into, self._out = _private.openssl(session)
        self._buffer = ffi.new("char[]", MAX_RECORD)
        self._view = ffi.buffer(self._buffer)
        self.backlog = backlog
        """Datagrams that arrived between the handshake's end and now."""
        self._send = send
        self.closed = False
        """The peer sent close_notify."""

    def seal(self, packet: bytes) -> bytes:
        """One record carrying ``packet``; empty once the session cannot write."""
        lib = self._lib
        if lib.SSL_write(self._session, packet, len(packet)) <= 0:
            lib.ERR_clear_error()
            return b""
        n = lib.BIO_read(self._out, self._buffer, MAX_RECORD)
        return self._view[:n] if n > 0 else b""

    def open(self, datagram: bytes) -> list[bytes]:
        """The plaintext of each record in ``datagram``; none for a handshake
        retransmission (answered here), an alert, a replay or garbage."""
        lib, session = self._lib, self._session
        lib.BIO_write(self._into, datagram, len(datagram))
        out: list[bytes] = []
        while True:
            n = lib.SSL_read(session, self._buffer, MAX_RECORD)
            if n > 0:
                out.append(self._view[:n])
                continue
            error = lib.SSL_get_error(session, n)
            if error == lib.SSL_ERROR_ZERO_RETURN:
                self.closed = True
            elif error == lib.SSL_ERROR_WANT_READ:
                if not out:
                    self._flush()  # a handshake retransmission may need an answer
            else:
                lib.ERR_clear_error()
            return out

    def _flush(self) -> None:
        with contextlib.suppress(SSL.Error):
            while out := self._ssl.bio_read(MAX_RECORD):
                self._send(out)
