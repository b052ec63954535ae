"""The foundation: bytes through a tunnel, exact, many at once, half-closed.

Shares and connects run in this process (tests/harness.py: real signaling,
real peer connections over 127.0.0.1); the memory bound of `mesh connect` is
measured on the real process.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import socket
import time
import urllib.request
from pathlib import Path

from tests.conftest import EchoServer, Mesh
from tests.harness import InProc


def echo_roundtrip(port: int, size: int, seed: int) -> bool:
    payload = hashlib.shake_256(seed.to_bytes(4, "big")).digest(size)
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.settimeout(60)
        received = bytearray()

        def reader() -> None:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    return
                received.extend(chunk)

        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            fut = pool.submit(reader)
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            fut.result(timeout=120)
    return bytes(received) == payload


def tunnel(lab: InProc, port: int) -> int:
    """Share ``port`` and connect to it; the local port of the tunnel."""
    share = lab.share(port)
    return int(lab.connect(share.obj.ticket).obj.port)


def test_20mb_file_arrives_byte_identical(inproc: InProc, http_root: tuple[Path, int]) -> None:
    root, port = http_root
    data = os.urandom(20 * 1024 * 1024)
    (root / "file.bin").write_bytes(data)
    local = tunnel(inproc, port)
    with urllib.request.urlopen(f"http://127.0.0.1:{local}/file.bin", timeout=120) as resp:
        got = resp.read()
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()


def test_100_concurrent_connections_echo_1mb_each(inproc: InProc, echo: EchoServer) -> None:
    from mesh.node.share_peer import ADMITTED_WINDOW

    share = inproc.share(echo.port)
    local = int(inproc.connect(share.obj.ticket).obj.port)
    # admitted: the sharer announces the full receive window (256 KiB before admission)
    assert [p.peer._path.window for p in share.obj.peers.values()] == [ADMITTED_WINDOW]
    with concurrent.futures.ThreadPoolExecutor(100) as pool:
        results = list(pool.map(lambda i: echo_roundtrip(local, 1024 * 1024, i), range(100)))
    assert all(results), f"{results.count(False)} of 100 streams corrupted"
    assert echo.stats.connections == 100


def test_half_close_client_still_reads_whole_response(inproc: InProc,
                                                      echo: EchoServer) -> None:
    # The echo service only answers fully after our EOF; the reply (3 MB) must all arrive
    # after we shut down our write side.
    local = tunnel(inproc, echo.port)
    assert echo_roundtrip(local, 3 * 1024 * 1024, 7)


def test_stopping_signaling_after_connected_leaves_tunnel_working(
        inproc: InProc, echo: EchoServer) -> None:
    share = inproc.share(echo.port)
    conn = inproc.connect(share.obj.ticket)
    local = conn.obj.port
    assert echo_roundtrip(local, 100_000, 1)
    inproc.run(inproc.harness.stop_server())
    share.event("signal")  # the share noticed: disconnected
    time.sleep(1)
    for i in range(5):  # new connections, new data channels: still fine
        assert echo_roundtrip(local, 500_000, 10 + i)
    assert conn.obj.up and not any(e["event"] == "disconnected" for e in conn.events)


def test_connect_rss_stays_bounded_during_200mb(mesh: Mesh, echo: EchoServer) -> None:
    _, url = mesh.signal()
    _, ticket = mesh.share(echo.port, url)
    conn, local = mesh.connect(ticket)
    total = 200 * 1024 * 1024
    block = os.urandom(1024 * 1024)
    digest_out = hashlib.sha256()
    digest_in = hashlib.sha256()
    with socket.create_connection(("127.0.0.1", local), timeout=120) as s:
        s.settimeout(120)

        def reader() -> int:
            n = 0
            while True:
                chunk = s.recv(1 << 20)
                if not chunk:
                    return n
                digest_in.update(chunk)
                n += len(chunk)

        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            fut = pool.submit(reader)
            for _ in range(total // len(block)):
                s.sendall(block)
                digest_out.update(block)
            s.shutdown(socket.SHUT_WR)
            assert fut.result(timeout=300) == total
    assert digest_in.digest() == digest_out.digest()
    peak_mb = conn.peak_rss_kb() / 1024
    print(f"mesh connect peak RSS during 200 MB echo: {peak_mb:.1f} MB")
    assert peak_mb < 150
