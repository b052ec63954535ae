"""Run inside a lab namespace: count numbered datagrams, or send them.

    udpcount.py sink PORT            prints "ready", then, 3 s after the last datagram,
                                     {"unique": U, "duplicates": D, "total": T}
    udpcount.py send PORT N RATE SIZE
                                     N datagrams of SIZE bytes (a u32 number first) to
                                     127.0.0.1:PORT at RATE per second
"""

from __future__ import annotations

import json
import socket
import sys
import time


def sink(port: int) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind(("127.0.0.1", port))
    print("ready", flush=True)
    seen: set[int] = set()
    total = 0
    s.settimeout(120)
    while True:
        try:
            data = s.recv(65536)
        except TimeoutError:
            break
        total += 1
        seen.add(int.from_bytes(data[:4], "big"))
        s.settimeout(3)
    print(json.dumps({"unique": len(seen), "duplicates": total - len(seen), "total": total}))


def send(port: int, n: int, rate: float, size: int) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    start = time.monotonic()
    for i in range(n):
        s.sendto(i.to_bytes(4, "big") + b"\0" * (size - 4), ("127.0.0.1", port))
        ahead = start + (i + 1) / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)


if __name__ == "__main__":
    if sys.argv[1] == "sink":
        sink(int(sys.argv[2]))
    else:
        send(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]))
