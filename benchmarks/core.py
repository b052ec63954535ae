"""The SCTP/data-channel core alone: two cores in one process, no DTLS, no sockets.

    python benchmarks/core.py [--mb 30] [--pure] [--discover]

One channel moves ``--mb`` megabytes of 64 KiB messages from one core to the
other; every datagram is handed across at once and the fake clock steps 0.1 ms
per round. Prints MB/s and microseconds per packet (both ends together). With
``--pure`` the core's modules are imported from their .py files even where the
install compiled them (the same import hook as tests/unit/test_compiled.py), so
compiled and plain Python can be compared on one machine; ``--discover`` lets
PLPMTUD grow the packets (otherwise they stay at 1189 bytes).
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


class _SourceOnly(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if not (name.startswith("mesh.proto.sctp.") or name == "mesh.proto.plpmtud"):
            return None
        for entry in path or sys.path:
            candidate = Path(entry) / (name.rsplit(".", 1)[-1] + ".py")
            if candidate.exists():
                return importlib.util.spec_from_file_location(name, candidate)
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=30)
    ap.add_argument("--pure", action="store_true")
    ap.add_argument("--discover", action="store_true")
    args = ap.parse_args()
    if args.pure:
        sys.meta_path.insert(0, _SourceOnly())
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
