"""A webhook receiver that checks signatures the way payment providers sign them.

    python examples/webhook_receiver.py --port 9000 --secret whsec_test
    mesh share 9000 --name hooks                                  # peer to peer, or
    mesh share 9000 --name hooks --public --signal wss://YOUR-SIGNAL/   # via the gateway

The sender puts ``X-Signature: t=<unix time>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>``
on each POST (Stripe's scheme). The receiver answers 204 and prints the event as one
JSON line when the signature verifies and is less than 5 minutes old, else 401.
``sign(secret, body, t)`` is importable for senders and tests.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOLERANCE = 300


def sign(secret: str, body: bytes, t: int | None = None) -> str:
    t = int(time.time()) if t is None else t
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify(secret: str, body: bytes, header: str, now: float | None = None) -> bool:
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        t = int(parts["t"])
    except (ValueError, KeyError):
        return False
    now = time.time() if now is None else now
    if abs(now - t) > TOLERANCE:
        return False
    want = sign(secret, body, t).split("v1=", 1)[1]
    return hmac.compare_digest(want, parts.get("v1", ""))


def handler(secret: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(min(length, 1 << 20))
            if not verify(secret, body, self.headers.get("X-Signature", "")):
                self.send_response(401)
                self.end_headers()
                self.wfile.write(b"bad signature\n")
                print(json.dumps({"event": "rejected", "path": self.path}), flush=True)
                return
            self.send_response(204)
            self.end_headers()
            try:
                payload = json.loads(body)
            except ValueError:
                payload = body.decode("utf-8", "replace")
            print(json.dumps({"event": "webhook", "path": self.path, "payload": payload}),
                  flush=True)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=9000)
    ap.add_argument("--secret", required=True)
    args = ap.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), handler(args.secret))
    print(json.dumps({"event": "listening", "port": server.server_address[1]}), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
