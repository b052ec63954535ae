"""The gateway's pure parts: which share a request is for, and per-address rate buckets."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from mesh.proto.limits import TokenBucket
from mesh.proto.names import valid_name


@dataclass
class Clients:
    """Token buckets per client address, bounded (oldest forgotten)."""

    rate: float
    burst: float
    limit: int = 10_000
    buckets: OrderedDict[str, TokenBucket] = field(default_factory=OrderedDict)

    def take(self, addr: str, now: float) -> bool:
        bucket = self.buckets.pop(addr, None) or TokenBucket(self.rate, self.burst)
        self.buckets[addr] = bucket
        while len(self.buckets) > self.limit:
            self.buckets.popitem(last=False)
        return bucket.take(now)


def route_name(host: bytes | None, target: bytes, domain: str) -> tuple[str, bytes] | None:
    """(share name, target to forward) for a request, or None. Pure."""
    path = target.decode("latin-1")
    if path.startswith("/s/"):
        rest = path[3:]
        name, slash, tail = rest.partition("/")
        name, qmark, query = name.partition("?")
        if valid_name(name):
            forwarded = "/" + (tail if slash else "") + (("?" + query) if qmark else "")
            return name, forwarded.encode("latin-1")
    if host is None:
        return None
    hostname = host.decode("latin-1").lower().rsplit(":", 1)[0] if not host.startswith(
        b"[") else ""
    suffix = "." + domain.lower()
    if hostname.endswith(suffix):
        label = hostname[: -len(suffix)]
        if valid_name(label):
            return label, target
    return None


def cookie_value(headers: list[tuple[bytes, bytes]], name: str) -> str | None:
    """The value of cookie ``name`` in the request's ``Cookie`` headers, or None."""
    wanted = name.encode()
    for k, v in headers:
        if k != b"cookie":
            continue
        for part in v.split(b";"):
            key, sep, value = part.strip().partition(b"=")
            if sep and key == wanted:
                return value.strip().decode("latin-1")
    return None
