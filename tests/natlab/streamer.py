"""Run inside a lab namespace: stream a deterministic byte sequence through an echo tunnel
for up to SECONDS, check every byte that comes back, and report how the stream ended."""

from __future__ import annotations

import hashlib
import json
import socket
import sys
import threading
import time


def pattern(offset: int, size: int) -> bytes:
    block = hashlib.shake_256(b"soak").digest(65536)
    start = offset % len(block)
    out = (block[start:] + block * (size // len(block) + 2))[:size]
    return out


def main() -> None:
    port, seconds = int(sys.argv[1]), float(sys.argv[2])
    rate = int(sys.argv[3]) if len(sys.argv) > 3 else 200_000  # bytes/s
    streams = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    if streams == 1:
        print(json.dumps(one(port, seconds, rate)))
        return
    results: list[dict[str, object]] = []
    threads = [threading.Thread(target=lambda: results.append(one(port, seconds, rate)))
               for _ in range(streams)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    print(json.dumps({"streams": results}))


def one(port: int, seconds: float, rate: int) -> dict[str, object]:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.settimeout(None)
    state = {"received": 0, "corrupt": False, "ended": "running"}

    def reader() -> None:
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    state["ended"] = "eof"
                    return
                if chunk != pattern(int(state["received"]), len(chunk)):
                    state["corrupt"] = True
                state["received"] = int(state["received"]) + len(chunk)
        except OSError as exc:
            state["ended"] = f"error: {exc.__class__.__name__}"

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    sent = 0
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < seconds and th.is_alive():
            chunk = pattern(sent, 8192)
            s.sendall(chunk)
            sent += len(chunk)
            time.sleep(8192 / rate)
        s.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    th.join(120)
    s.close()
    return {"sent": sent, **state}


if __name__ == "__main__":
    main()
