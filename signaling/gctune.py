"""Keeps CPython's full garbage collections off the routing path of a busy server.

With thousands of WebSocket sessions alive, a generation-2 collection walks all
of them and stalls the event loop for ~60-120 ms (measured with
benchmarks/load.py: it set the p99 routing latency). Objects that have
survived a while are session state that lives as long as its connection, so
every ``freeze_every`` seconds they are moved to the permanent generation
(``gc.freeze()``, O(1)) and ordinary collections only walk what is new. Every
``full_every`` seconds everything is unfrozen and collected once, so cyclic
garbage among frozen objects is still reclaimed: one pause per ``full_every``
instead of one every few seconds.
"""

from __future__ import annotations

import asyncio
import gc


async def tune(freeze_every: float = 1.0, full_every: float = 600.0) -> None:
    loop = asyncio.get_running_loop()
    next_full = loop.time() + full_every
    try:
        while True:
            await asyncio.sleep(freeze_every)
            if loop.time() >= next_full:
                gc.unfreeze()
                gc.collect()
                next_full = loop.time() + full_every
            gc.freeze()
    finally:
        gc.unfreeze()
