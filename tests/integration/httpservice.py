"""A small HTTP service for the HTTP-mode tests: records every request it sees.

    python httpservice.py LOGFILE      prints the port on stdout, then serves

Each request the service receives is appended to LOGFILE as one JSON line
(method, path, headers, body size), so tests can prove what did, and did not,
reach it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys

from aiohttp import WSMsgType, web


def main() -> None:
    log_path = sys.argv[1]

    @web.middleware
    async def record(request: web.Request, handler):  # type: ignore[no-untyped-def]
        body = b""
        if request.path != "/upload" and request.can_read_body:
            body = await request.read()
        entry = {"method": request.method, "path": request.path_qs,
                 "headers": [[k, v] for k, v in request.headers.items()], "body": len(body)}
        with open(log_path, "a") as fh:
            fh.write(json.dumps(entry) + "\n")
        request["body"] = body
        return await handler(request)

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello from the service\n")

    async def echo(request: web.Request) -> web.Response:
        body = request["body"]
        return web.json_response({"method": request.method, "size": len(body),
                                  "sha256": hashlib.sha256(body).hexdigest(),
                                  "headers": dict(request.headers)})

    async def upload(request: web.Request) -> web.Response:
        digest, size, chunks = hashlib.sha256(), 0, 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            size += len(chunk)
            chunks += 1
        return web.json_response({"size": size, "sha256": digest.hexdigest(),
                                  "chunked": request.headers.get("Transfer-Encoding")})

    async def sse(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(3):
            await resp.write(f"data: event {i}\n\n".encode())
            await asyncio.sleep(0.6)
        await resp.write_eof()
        return resp

    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            if msg.type == WSMsgType.TEXT:
                await sock.send_str("echo: " + msg.data)
            elif msg.type == WSMsgType.BINARY:
                await sock.send_bytes(msg.data)
        return sock

    async def sleep(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("s", "3")))
        return web.Response(text="slept\n")

    async def binary(request: web.Request) -> web.Response:
        return web.Response(body=bytes(range(256)) * 4, content_type="application/octet-stream")

    app = web.Application(middlewares=[record], client_max_size=64 * 1024 * 1024)
    app.add_routes([web.get("/hello", hello), web.post("/echo", echo), web.get("/echo", echo),
                    web.put("/echo", echo), web.post("/upload", upload), web.get("/sse", sse),
                    web.get("/ws", ws), web.get("/bin", binary), web.get("/sleep", sleep)])

    async def run() -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        print(runner.addresses[0][1], flush=True)
        await asyncio.Event().wait()

    asyncio.run(run())


if __name__ == "__main__":
    main()
