"""The data plane's DTLS record calls against OpenSSL through pyOpenSSL's public API.

Two sessions shake hands in memory (no sockets); then mesh's ``Records``
seals what a pyOpenSSL peer opens and opens what it seals: several records in
one datagram, a replayed record, garbage, and close_notify.
"""

from __future__ import annotations

import contextlib

from aiortc.rtcdtlstransport import SRTP_PROFILES, RTCCertificate
from OpenSSL import SSL

from mesh.transport.dtls import Records


def _pump(src: SSL.Connection, dst: SSL.Connection) -> None:
    while True:
        try:
            data = src.bio_read(65536)
        except SSL.WantReadError:
            return
        if not data:
            return
        dst.bio_write(data)


def _pair() -> tuple[SSL.Connection, SSL.Connection]:
    client, server = (SSL.Connection(RTCCertificate.generateCertificate()._create_ssl_context(
        SRTP_PROFILES)) for _ in range(2))
    client.set_connect_state()
    server.set_accept_state()
    for _ in range(10):
        for side in (client, server):
            with contextlib.suppress(SSL.WantReadError):
                side.do_handshake()
        _pump(client, server)
        _pump(server, client)
    assert client.get_cipher_name() and server.get_cipher_name()
    return client, server


def _records(session: SSL.Connection) -> tuple[Records, list[bytes]]:
    sent: list[bytes] = []
    return Records(session, [], sent.append), sent


def _peer_seal(peer: SSL.Connection, data: bytes) -> bytes:
    peer.send(data)
    return peer.bio_read(65536)


def _peer_open(peer: SSL.Connection, record: bytes) -> bytes:
    peer.bio_write(record)
    return peer.recv(65536)


def test_sealed_records_open_at_a_pyopenssl_peer_and_back() -> None:
    ours, peer = _pair()
    records, _ = _records(ours)
    for size in (1, 1400, 16000):
        data = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
        assert _peer_open(peer, records.seal(data)) == data
        assert records.open(_peer_seal(peer, data)) == [data]


def test_several_records_in_one_datagram_each_open() -> None:
    ours, peer = _pair()
    records, _ = _records(ours)
    datagram = b"".join(_peer_seal(peer, bytes([i]) * 100) for i in range(3))
    assert records.open(datagram) == [bytes([i]) * 100 for i in range(3)]


def test_replays_and_garbage_open_to_nothing() -> None:
    ours, peer = _pair()
    records, _ = _records(ours)
    record = _peer_seal(peer, b"once")
    assert records.open(record) == [b"once"]
    assert records.open(record) == []  # the replay window drops it
    assert records.open(b"\x17\xfe\xfd" + b"\x00" * 40) == []
    tampered = bytearray(_peer_seal(peer, b"twice"))
    tampered[-1] ^= 1
    assert records.open(bytes(tampered)) == []
    assert records.open(_peer_seal(peer, b"still")) == [b"still"]  # the session lives on
    assert not records.closed


def test_close_notify_marks_the_session_closed() -> None:
    ours, peer = _pair()
    records, _ = _records(ours)
    peer.shutdown()
    assert records.open(peer.bio_read(65536)) == []
    assert records.closed
    assert isinstance(records.seal(b"late"), bytes)  # no exception out of the hot path
