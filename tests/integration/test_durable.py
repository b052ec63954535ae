"""Durable streams in-process (the NAT-lab cuts are in tests/natlab/test_durable.py):
a connection survives its peer connection being closed under it, and a resume that is
not the stream owner's is refused."""

from __future__ import annotations

import asyncio
import os
import socket
import threading

from mesh.proto import resume as rs
from mesh.proto import stream as sp
from tests.conftest import EchoServer
from tests.harness import InProc


def test_a_connection_survives_its_peer_connection_being_closed(inproc: InProc,
                                                                echo: EchoServer) -> None:
    share = inproc.share(echo.port)
    conn = inproc.connect(share.obj.ticket)
    data = os.urandom(4_000_000)
    got = bytearray()
    with socket.create_connection(("127.0.0.1", conn.obj.port), timeout=30) as s:
        s.sendall(b"hello")  # the stream is open at both ends before the cut
        assert s.recv(5) == b"hello"

        def reader() -> None:
            while len(got) < len(data) and (chunk := s.recv(65536)):
                got.extend(chunk)

        thread = threading.Thread(target=reader)
        thread.start()
        s.sendall(data[:1_000_000])
        link = conn.obj._link
        assert link is not None
        inproc.run(link.peer.close())  # as the link machine does with a dead connection
        s.sendall(data[1_000_000:])
        thread.join(60)
    assert bytes(got) == data
    lost = conn.event("disconnected")
    assert lost["waiting"] == 1
    assert conn.event("resumed")["streams"] == 1
    assert share.event("resumed")["streams"] == 1


def test_a_resume_from_another_key_or_for_an_unknown_stream_is_refused(
        inproc: InProc, echo: EchoServer) -> None:
    share = inproc.share(echo.port)
    owner = inproc.connect(share.obj.ticket)
    thief = inproc.connect(share.obj.ticket)  # admitted too, with a key of its own
    with socket.create_connection(("127.0.0.1", owner.obj.port), timeout=10) as s:
        s.sendall(b"ping")
        assert s.recv(4) == b"ping"
        ((key, stream),) = share.obj.streams.items()
        sid = key[1]
        assert key[0] == owner.obj.identity.node_id

        async def resume(tunnel: object, which: str) -> list[object]:
            link = tunnel._link  # type: ignore[attr-defined]
            channel = link.peer.open_channel(rs.RESUME_LABEL, protocol=rs.protocol(which))
            replies: list[object] = []
            channel.on("message", lambda m: replies.append(sp.parse(m)))
            channel.send(sp.encode(sp.Resume(0, 262144, False, False)))
            await asyncio.sleep(1.0)
            return replies

        forged = inproc.run(resume(thief.obj, sid))  # the owner's stream id, another key
        assert forged == [sp.Reset("no such stream to resume")]
        unknown = inproc.run(resume(owner.obj, "0123456789abcdef"))  # the owner, no such id
        assert unknown == [sp.Reset("no such stream to resume")]
        s.sendall(b"still mine")  # the real stream never noticed
        assert s.recv(10) == b"still mine"
        assert not stream.waiting and share.obj.streams[key] is stream


def test_a_stream_whose_open_was_lost_is_opened_on_the_next_connection(
        inproc: InProc, echo: EchoServer) -> None:
    """The stream is opened and its peer connection closed in the same turn of the loop,
    so its open never leaves: the resume on the next connection says ``new``, and the
    sharer, which never saw the stream, opens it then. Bytes written meanwhile arrive."""
    share = inproc.share(echo.port)
    conn = inproc.connect(share.obj.ticket)

    async def go() -> bytes:
        link = conn.obj._link
        stream = await conn.obj.open_stream()
        await link.peer.close()
        await stream.write(b"written while there was no path")
        got = b""
        while len(got) < 31:
            got += await asyncio.wait_for(stream.read(100), 20)
        stream.abort("done")
        return got

    assert inproc.run(go()) == b"written while there was no path"
    assert conn.event("resumed")["streams"] == 1
    assert echo.stats.connections == 1  # opened once, on the new connection


class SlowBody:
    """An HTTP service whose answer takes its time: 40 chunks of 25 KB, 50 ms apart."""

    SIZE = 40 * 25_000

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import time

        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                head = b""
                while b"\r\n\r\n" not in head:
                    head += conn.recv(4096)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n"
                             b"Connection: close\r\n\r\n" % self.SIZE)
                for i in range(40):
                    conn.sendall(bytes([65 + i % 26]) * 25_000)
                    time.sleep(0.05)


def slow_get(port: int, host: str) -> tuple[int, bytes]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/slow", headers={"Host": host})
    resp = conn.getresponse()
    return resp.status, resp.read()


def expected_body() -> bytes:
    return b"".join(bytes([65 + i % 26]) * 25_000 for i in range(40))


def cut_soon(inproc: InProc, tunnel: object, after: float) -> threading.Thread:
    """Close ``tunnel``'s current peer connection ``after`` seconds from now."""
    def later() -> None:
        import time

        time.sleep(after)
        link = tunnel._link  # type: ignore[attr-defined]
        inproc.run(link.peer.close())

    thread = threading.Thread(target=later)
    thread.start()
    return thread


def test_an_http_response_in_flight_survives(inproc: InProc) -> None:
    from mesh.http.config import HttpConfig

    service = SlowBody()
    share = inproc.share(service.port, http=HttpConfig(inspect=None))
    conn = inproc.connect(share.obj.ticket)  # the ticket's HTTP mode: the Host guard on
    cutter = cut_soon(inproc, conn.obj, 0.8)
    status, body = slow_get(conn.obj.port, f"127.0.0.1:{conn.obj.port}")
    cutter.join()
    assert status == 200 and body == expected_body()
    assert conn.event("resumed")["streams"] >= 1


def test_a_request_through_the_gateway_survives() -> None:
    from mesh.http.config import HttpConfig
    from mesh.proto.identity import Identity

    gateway_key = Identity.generate()
    lab = InProc(gateways=frozenset({gateway_key.node_id}))
    try:
        gateway = lab.gateway(gateway_key, domain="mesh.test")
        port = int(gateway.event("ready")["url"].rsplit(":", 1)[1])
        service = SlowBody()
        share = lab.share(service.port, name="slow", public=True,
                          http=HttpConfig(inspect=None))
        share.event("public")
        assert slow_get(port, "slow.mesh.test")[0] == 200  # the gateway's tunnel is up
        (tunnel,) = gateway.obj.upstreams.tunnels
        cutter = cut_soon(lab, tunnel, 0.8)
        status, body = slow_get(port, "slow.mesh.test")
        cutter.join()
        assert status == 200 and body == expected_body()
        assert gateway.event("resumed")["streams"] == 1
    finally:
        lab.close()


def test_with_resume_timeout_0_connections_end_with_their_peer_connection(
        inproc: InProc, echo: EchoServer) -> None:
    share = inproc.share(echo.port, resume_timeout=0)
    conn = inproc.connect(share.obj.ticket, resume_timeout=0)
    with socket.create_connection(("127.0.0.1", conn.obj.port), timeout=10) as s:
        s.sendall(b"hello")
        assert s.recv(5) == b"hello"
        link = conn.obj._link
        inproc.run(link.peer.close())
        try:
            ended = s.recv(5)
        except ConnectionResetError:
            ended = b""
        assert ended == b""  # reset or EOF, at once: nothing waits
    assert conn.event("disconnected")["waiting"] == 0
    assert not share.obj.streams


def test_a_share_that_stops_ends_its_connections_at_once(inproc: InProc,
                                                         echo: EchoServer) -> None:
    """A graceful stop aborts the share's streams with a reason, so the connector's local
    connections end now instead of waiting out --resume-timeout for a resume."""
    import time

    share = inproc.share(echo.port)
    conn = inproc.connect(share.obj.ticket)
    with socket.create_connection(("127.0.0.1", conn.obj.port), timeout=30) as s:
        s.sendall(b"hello")
        assert s.recv(5) == b"hello"
        started = time.monotonic()
        inproc.run(share.obj.close())
        try:
            ended = s.recv(5)
        except ConnectionResetError:
            ended = b""
        assert ended == b"" and time.monotonic() - started < 10
    assert conn.obj.snapshot()["streams_waiting"] == 0
