"""The SCTP/data-channel core alone: two cores in one process, no DTLS, no sockets.

    python benchmarks/core.py [--mb 30] [--pure] [--discover]

One channel moves ``--mb`` megabytes of 64 KiB messages from one core to the
other; every datagram is handed across at once and the fake clock steps 0.1 ms
per round. Prints MB/s and microseconds per packet (both ends together). With
``--pure`` the core's modules are imported from their .py files even where the
install compiled them (tests/purecore.py, as tests/unit/test_compiled.py does), so
compiled and plain Python can be compared on one machine; ``--discover`` lets
PLPMTUD grow the packets (otherwise they stay at 1189 bytes).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.purecore import import_as_python  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=30)
    ap.add_argument("--pure", action="store_true")
    ap.add_argument("--discover", action="store_true")
    args = ap.parse_args()
    if args.pure:
        import_as_python()
    from mesh.proto.sctp import channels as ch

    a = ch.DataChannels(client=True, now=0.0, discover=args.discover)
    b = ch.DataChannels(client=False, now=0.0, discover=args.discover)
    got = [0]
    now = 0.0

    def pump() -> int:
        moved = 0
        for src, dst in ((a, b), (b, a)):
            packets = src.datagrams_to_send(now)
            for packet in packets:
                dst.receive_datagram(packet, now)
            moved += len(packets)
            while (event := src.next_event()) is not None:
                if isinstance(event, ch.Message):
                    got[0] += len(event.data)
        return moved

    a.start(now)
    for _ in range(10):
        pump()
    cid = a.open("bench")
    pump()
    data, total = os.urandom(65536), args.mb * 1_000_000
    sent = packets = 0
    t0 = time.perf_counter()
    while got[0] < total:
        while a.buffered(cid) < 1 << 20 and sent < total:
            a.send(cid, data)
            sent += len(data)
        packets += pump()
        now += 0.0001
        timer = a.get_timer()
        if timer is not None and timer <= now:
            a.handle_timer(now)
    dt = time.perf_counter() - t0
    kind = "plain Python" if args.pure else (
        "compiled" if ch.__file__ and not ch.__file__.endswith(".py") else "plain Python")
    print(f"{kind}: {total / dt / 1e6:.1f} MB/s, {packets} packets, "
          f"{dt / packets * 1e6:.2f} us per packet (both ends)")


if __name__ == "__main__":
    main()
