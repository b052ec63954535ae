"""An IoT device simulator: a small HTTP sensor service that shares itself with mesh.

    python examples/iot_sensor.py --name sensor-1            # LAN only: `mesh connect sensor-1`
    python examples/iot_sensor.py --name sensor-1 --signal ws://HOST:8765/   # prints a ticket

Endpoints: ``GET /reading`` -> {"sensor", "seq", "temperature_c", "humidity_pct"};
``POST /led`` with {"on": true|false} -> the LED state; ``GET /`` a one-line page.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time

from aiohttp import web

import mesh


def make_app(name: str) -> web.Application:
    state = {"seq": 0, "led": False, "t0": time.monotonic()}

    async def reading(request: web.Request) -> web.Response:
        state["seq"] = int(state["seq"]) + 1
        t = time.monotonic() - float(state["t0"])
        return web.json_response({
            "sensor": name, "seq": state["seq"],
            "temperature_c": round(21.5 + 1.5 * math.sin(t / 60), 2),
            "humidity_pct": round(45 + 5 * math.cos(t / 90), 1),
        })

    async def led(request: web.Request) -> web.Response:
        try:
            body = await request.json()
            state["led"] = bool(body["on"])
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": 'send {"on": true|false}'}, status=400)
        return web.json_response({"led": state["led"]})

    async def index(request: web.Request) -> web.Response:
        return web.Response(text=f"{name}: GET /reading, POST /led\n")

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/reading", reading)
    app.router.add_post("/led", led)
    return app


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", default="sensor-1")
    ap.add_argument("--port", type=int, default=0, help="local HTTP port (0: any)")
    ap.add_argument("--signal", action="append", help="signaling server URL (repeatable)")
    args = ap.parse_args()
    runner = web.AppRunner(make_app(args.name), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.port)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    async with mesh.share(port, name=args.name, signal=args.signal) as share:
        print(json.dumps({"event": "ready", "name": args.name, "port": port,
                          "ticket": share.ticket}), flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
