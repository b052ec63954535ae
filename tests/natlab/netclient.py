"""Run inside a lab namespace: echo N bytes through 127.0.0.1:PORT, print a JSON verdict."""

from __future__ import annotations

import hashlib
import json
import socket
import sys
import threading
import time


def main() -> None:
    port, size = int(sys.argv[1]), int(sys.argv[2])
    payload = hashlib.shake_256(b"natlab").digest(size)
    t0 = time.monotonic()
    got = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.settimeout(60)

        def reader() -> None:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    return
                got.extend(chunk)

        th = threading.Thread(target=reader)
        th.start()
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        th.join(90)
    print(json.dumps({"ok": bytes(got) == payload, "bytes": len(got),
                      "seconds": time.monotonic() - t0}))


if __name__ == "__main__":
    main()
