"""Run inside a lab namespace: a download service, or a reader that takes its time.

    slowdownload.py serve PORT SIZE        each connection gets SIZE bytes of the
                                           streamer.py pattern, then EOF ("ready" first)
    slowdownload.py read PORT SIZE SECONDS read SIZE bytes from 127.0.0.1:PORT, paced to
                                           last SECONDS; prints {"received", "corrupt",
                                           "ended", "seconds"}
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time

from streamer import pattern


def serve(port: int, size: int) -> None:
    server = socket.create_server(("127.0.0.1", port))
    print("ready", flush=True)

    def send(conn: socket.socket) -> None:
        with conn:
            sent = 0
            while sent < size:
                chunk = pattern(sent, min(65536, size - sent))
                conn.sendall(chunk)
                sent += len(chunk)

    while True:
        conn, _ = server.accept()
        threading.Thread(target=send, args=(conn,), daemon=True).start()


def read(port: int, size: int, seconds: float) -> None:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.settimeout(120)
    rate = size / seconds
    received, corrupt, ended = 0, False, "eof"
    t0 = time.monotonic()
    try:
        while True:
            chunk = s.recv(32768)
            if not chunk:
                break
            if chunk != pattern(received, len(chunk)):
                corrupt = True
            received += len(chunk)
            ahead = t0 + received / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
    except OSError as exc:
        ended = f"error: {exc.__class__.__name__}"
    print(json.dumps({"received": received, "corrupt": corrupt, "ended": ended,
                      "seconds": round(time.monotonic() - t0, 1)}))


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]), int(sys.argv[3]))
    else:
        read(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
