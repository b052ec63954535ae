"""The canary for mesh/transport/_private.py: every private name of aioice and aiortc
mesh touches still exists with the shape mesh relies on. A release that renames or
reshapes one fails here, by name, instead of silently in the data plane."""

from __future__ import annotations

import asyncio
import inspect

import aioice
from aioice.ice import CandidatePair, StunProtocol
from aioice.turn import TurnClientMixin, TurnClientUdpProtocol, TurnTransport
from aiortc import RTCCertificate, RTCDtlsTransport

from mesh.transport import _private
from mesh.transport.dtls import _IceAdapter


def test_aioice_connection_hooks_and_selected_pair() -> None:
    async def check() -> None:
        connection = aioice.Connection(ice_controlling=True)
        assert connection._nominated == {}  # a dict of component -> CandidatePair
        assert _private.nominated_pair(connection) is None
        assert connection._protocols == []  # the gathered sockets (relaywatch.py)
        assert _private.turn_clients(connection) == []
        await connection.close()
    asyncio.run(check())
    hooks = inspect.signature(aioice.Connection.get_component_candidates).parameters
    assert list(hooks)[:3] == ["self", "component", "addresses"]
    assert list(inspect.signature(aioice.Connection.data_received).parameters) == [
        "self", "data", "component"]
    # gather_candidates still calls the hook, and the StUN protocol still hands
    # whatever is not STUN to data_received
    assert "self.get_component_candidates(" in inspect.getsource(
        aioice.Connection.gather_candidates)
    assert "self.receiver.data_received(" in inspect.getsource(
        StunProtocol.datagram_received)
    for name in ("protocol", "remote_candidate"):
        assert name in inspect.getsource(CandidatePair.__init__)
    for name in ("remote_addr", "local_candidate"):
        assert isinstance(getattr(CandidatePair, name), property)


def test_aioice_check_list_and_early_checks_for_priming() -> None:
    """ice.py's priming reads the check list, restarts an in-flight check and knows
    whether connect() took over the early checks (_private.recheck, host_sockets)."""
    async def check() -> None:
        connection = aioice.Connection(ice_controlling=False)
        assert connection._check_list == [] and connection._early_checks_done is False
        assert _private.checking(connection) is False and connection._closing is False
        assert callable(connection.check_start_task)
        await connection.close()
    asyncio.run(check())
    for name in ("task", "state"):
        assert f"self.{name}" in inspect.getsource(CandidatePair.__init__)
    assert "pair.task is None" in inspect.getsource(aioice.Connection.check_start_task)
    assert "self._early_checks_done = True" in inspect.getsource(aioice.Connection.connect)
    assert "request_received" in inspect.getsource(StunProtocol.datagram_received)


def test_aiortc_dtls_transport_reads_the_duck_typed_ice_transport() -> None:
    source = inspect.getsource(RTCDtlsTransport)
    assert "self.transport._recv()" in source
    assert "self.transport._send(" in source
    assert "self.transport.role" in source
    for method in ("_recv", "_send"):
        assert inspect.iscoroutinefunction(getattr(_IceAdapter, method))

    async def check() -> None:
        adapter = _IceAdapter(True, lambda data: None)
        transport = RTCDtlsTransport(adapter, [RTCCertificate.generateCertificate()])  # type: ignore[arg-type]
        assert transport._ssl is None  # set by start(): the session the records use
        assert transport.state == "new"
    asyncio.run(check())


def test_aioice_turn_client_state() -> None:
    assert "self.__inner_protocol = inner_protocol" in inspect.getsource(TurnTransport.__init__)
    client = TurnClientUdpProtocol(("127.0.0.1", 3478), "u", "p", 600, 300)
    for name in ("peer_to_channel", "channel_to_peer", "channel_refresh_at",
                 "peer_connect_waiters"):
        assert isinstance(getattr(client, name), dict), name
    assert _private.turn_channel(client, ("127.0.0.1", 1)) is None
    client.peer_to_channel[("127.0.0.1", 1)] = 0x4000
    client.channel_refresh_at[0x4000] = 0.0  # due: aioice's path refreshes it
    assert _private.turn_channel(client, ("127.0.0.1", 1)) is None
    client.channel_refresh_at[0x4000] = float("inf")
    assert _private.turn_channel(client, ("127.0.0.1", 1)) == 0x4000
    assert hasattr(TurnClientMixin, "datagram_received")
    assert _private.turn_client(TurnTransport(client)) is client
    assert _private.turn_client(object()) is None


def test_pyopenssl_session_handles_and_binding() -> None:
    from OpenSSL import SSL

    context = SSL.Context(SSL.DTLS_METHOD)
    session = SSL.Connection(context)
    ffi, lib, ssl, into, out = _private.openssl(session)
    assert ffi.typeof(ssl).cname == "SSL *"
    assert ffi.typeof(into).cname == ffi.typeof(out).cname == "BIO *"
    for name in ("SSL_write", "SSL_read", "SSL_get_error", "BIO_read", "BIO_write",
                 "ERR_clear_error", "SSL_ERROR_WANT_READ", "SSL_ERROR_ZERO_RETURN"):
        assert hasattr(lib, name), name


def test_aioice_turn_client_binds_channels_through_an_overridable_method() -> None:
    """relaywatch.py wraps channel_bind per instance: send_data must call it through
    self, and a failed bind must raise TransactionFailed with the response."""
    assert "await self.channel_bind(" in inspect.getsource(TurnClientMixin.send_data)
    assert inspect.iscoroutinefunction(TurnClientMixin.channel_bind)
