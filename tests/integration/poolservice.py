"""One member's service for the pool tests: says who it is and logs what it served.

    python poolservice.py MEMBER LOGFILE      prints the port on stdout, then serves

Every request is appended to LOGFILE as one JSON line {"member", "method",
"path", "order"} (``X-Order`` of a POST), so a test can count, across members,
which served what and whether a POST ran twice.

GET /who                  the member's name
GET /slow?ms=N            the member's name after N ms
POST /order               201; logged with its X-Order
GET /cached               "hit N" with Cache-Control: public, max-age=60
GET /vary                 max-age=60, Vary: Accept-Encoding; gzip when asked
GET /auth                 max-age=60 (tests send Authorization)
GET /cookie               max-age=60 with Set-Cookie
GET /etag                 no-cache with an ETag; 304 to a matching If-None-Match
GET /big?kb=N             N KiB (random) with max-age=60
GET /page                 compressible HTML, about 20 KiB
GET /plain.bin            incompressible bytes (application/octet-stream)
GET /healthz              200, or 503 once the file LOGFILE.sick exists
anything else             "MEMBER PATH"
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import sys
from pathlib import Path

from aiohttp import web


def main() -> None:
    member, log_path = sys.argv[1], sys.argv[2]
    counts = {"cached": 0}

    @web.middleware
    async def record(request: web.Request, handler):  # type: ignore[no-untyped-def]
        entry = {"member": member, "method": request.method, "path": request.path_qs,
                 "order": request.headers.get("X-Order")}
        with open(log_path, "a") as fh:
            fh.write(json.dumps(entry) + "\n")
        return await handler(request)

    def text(body: str, **headers: str) -> web.Response:
        return web.Response(text=body, headers=headers)

    async def who(request: web.Request) -> web.Response:
        return text(member)

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(int(request.query.get("ms", "50")) / 1000)
        return text(member)

    async def order(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=201, text=f"{member} took {request.headers.get('X-Order')}")

    async def cached(request: web.Request) -> web.Response:
        counts["cached"] += 1
        return text(f"hit {counts['cached']}", **{"Cache-Control": "public, max-age=60"})

    async def vary(request: web.Request) -> web.Response:
        headers = {"Cache-Control": "max-age=60", "Vary": "Accept-Encoding",
                   "Content-Type": "text/plain"}
        body = f"variant from {member}\n".encode() * 20
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            return web.Response(body=gzip.compress(body),
                                headers={**headers, "Content-Encoding": "gzip"})
        return web.Response(body=body, headers=headers)

    async def auth(request: web.Request) -> web.Response:
        return text(f"for {request.headers.get('Authorization')}",
                    **{"Cache-Control": "max-age=60"})

    async def cookie(request: web.Request) -> web.Response:
        return text("with a cookie", **{"Cache-Control": "max-age=60",
                                        "Set-Cookie": "session=abc"})

    async def etag(request: web.Request) -> web.Response:
        tag = '"v1"'
        headers = {"Cache-Control": "no-cache", "ETag": tag}
        if request.headers.get("If-None-Match") == tag:
            return web.Response(status=304, headers=headers)
        return text("validated body", **headers)

    async def big(request: web.Request) -> web.Response:
        kb = int(request.query.get("kb", "64"))
        return web.Response(body=os.urandom(kb * 1024), headers={
            "Cache-Control": "max-age=60", "Content-Type": "application/octet-stream"})

    async def page(request: web.Request) -> web.Response:
        rows = "".join(f"<tr><td>row {i}</td><td>{member}</td></tr>\n" for i in range(600))
        return web.Response(text=f"<html><body><table>\n{rows}</table></body></html>\n",
                            content_type="text/html")

    async def plain(request: web.Request) -> web.Response:
        return web.Response(body=os.urandom(4096), content_type="application/octet-stream")

    async def healthz(request: web.Request) -> web.Response:
        if Path(log_path + ".sick").exists():
            return web.Response(status=503, text="sick")
        return text("ok")

    async def other(request: web.Request) -> web.Response:
        return text(f"{member} {request.path_qs}")

    async def run() -> None:
        app = web.Application(middlewares=[record])
        app.add_routes([web.get("/who", who), web.get("/slow", slow),
                        web.post("/order", order), web.get("/cached", cached),
                        web.get("/vary", vary), web.get("/auth", auth),
                        web.get("/cookie", cookie), web.get("/etag", etag),
                        web.get("/big", big), web.get("/page", page),
                        web.get("/plain.bin", plain), web.get("/healthz", healthz),
                        web.route("*", "/{tail:.*}", other)])
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        print(port, flush=True)
        await asyncio.Event().wait()

    asyncio.run(run())


if __name__ == "__main__":
    main()
