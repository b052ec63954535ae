"""Redis broker: presence and routing shared by several signaling instances.

Keys and channels (``ttl`` = presence TTL, default 15 s)::

    mesh:node:<node id>    sorted set: member = instance id, score = expiry (unix s);
                           the key itself expires after 2 x ttl
    mesh:inst:<instance>   pub/sub channel of one instance; a message is the
                           sender's node id (52 bytes), the recipient's (52 bytes),
                           then the opaque payload
    mesh:rate:<node>:<s>   fixed-window counter of frames a node sent in second s

Every instance re-announces its attached nodes every ttl/3, so the nodes of an
instance that dies vanish from presence within ttl. A send looks up the
recipient's instances, delivers locally to its own sessions and PUBLISHes to
the others; PUBLISH returns how many subscribers got it, so a dead instance
is noticed at once (and its stale entry removed).

Why pub/sub and not streams: an envelope is only useful while both peers are
online and waiting (an offer is retried by the connecting peer anyway), so
persistence, consumer groups and trimming would be cost without benefit;
pub/sub is the lowest-latency path and PUBLISH's receiver count gives the
liveness signal routing needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from mesh.identity import NODE_ID_LEN

from .broker import MAX_SESSIONS, Mailbox, MemoryBroker

log = logging.getLogger("mesh.signal.redis")


NAMES_KEY = "mesh:names"
GATEWAY_KEY = "mesh:gateway"


class RedisBroker:
    """``Broker`` over Redis; local sessions are kept in an inner ``MemoryBroker``."""

    def __init__(self, url: str, instance: str, ttl: float = 15.0,
                 rate_per_node: int = 200, max_sessions: int = MAX_SESSIONS) -> None:
        self.url = url
        self.instance = instance
        self.ttl = ttl
        self.rate_per_node = rate_per_node
        self._local = MemoryBroker(max_sessions)
        self._redis: aioredis.Redis | None = None
        self._pubsub: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._where: dict[str, tuple[float, list[str]]] = {}

    async def start(self) -> None:
        try:
            self._redis = aioredis.from_url(self.url)
            await self._redis.ping()
        except (RedisError, OSError, ValueError) as exc:
            raise ConnectionError(f"cannot reach Redis at {self.url}: {exc}") from exc
        self._pubsub = self._redis.pubsub()
        await self._pubsub.subscribe(self._channel(self.instance))
        self._tasks = [asyncio.create_task(self._listen()),
                       asyncio.create_task(self._refresh_loop())]

    @staticmethod
    def _channel(instance: str) -> str:
        return f"mesh:inst:{instance}"

    @staticmethod
    def _key(node: str) -> str:
        return f"mesh:node:{node}"

    async def attach(self, node: str, mailbox: Mailbox) -> None:
        await self._local.attach(node, mailbox)
        await self._announce([node])

    async def detach(self, node: str, mailbox: Mailbox) -> None:
        await self._local.detach(node, mailbox)
        if not self._local.has(node) and self._redis is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._redis.zrem(self._key(node), self.instance)

    async def route(self, sender: str, to: str, payload: bytes) -> str:
        results = []
        if self._local.has(to):
            results.append(await self._local.route(sender, to, payload))
        message = sender.encode() + to.encode() + payload
        for inst in await self._instances(to):
            if inst == self.instance:
                continue
            try:
                got = await self._redis_client().publish(self._channel(inst), message)
            except (RedisError, OSError):
                got = 0
            if got:
                results.append("ok")
            else:  # nobody listens there: the instance is gone
                self._where.pop(to, None)
                with contextlib.suppress(RedisError, OSError):
                    await self._redis_client().zrem(self._key(to), inst)
        if "ok" in results:
            return "ok"
        return "recipient-busy" if results else "unknown-destination"

    def _redis_client(self) -> aioredis.Redis:
        assert self._redis is not None
        return self._redis

    async def _instances(self, node: str) -> list[str]:
        """Instances holding ``node``, cached for a second (a dead one is dropped from the
        cache as soon as a PUBLISH to it reaches nobody)."""
        now = time.time()
        cached = self._where.get(node)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            raw = await self._redis_client().zrangebyscore(self._key(node), now, "+inf")
        except (RedisError, OSError):
            return []
        found = [r.decode() if isinstance(r, bytes) else str(r) for r in raw]
        if len(self._where) > 100_000:
            self._where.clear()
        self._where[node] = (now + 1.0, found)
        return found

    async def allow(self, node: str, now: float) -> bool:
        """Shared per-node frame rate across all instances (fixed one-second window)."""
        if self._redis is None:
            return True
        key = f"mesh:rate:{node}:{int(now)}"
        try:
            pipe = self._redis.pipeline()
            pipe.incr(key)
            pipe.expire(key, 2)
            count, _ = await pipe.execute()
        except (RedisError, OSError):
            return True  # fail open: the per-connection limit still applies
        return int(count) <= self.rate_per_node

    # -- public names: a hash shared by every instance; first claim wins (HSETNX) --
    async def claim_name(self, name: str, node: str) -> str:
        r = self._redis_client()
        await r.hsetnx(NAMES_KEY, name, node)
        owner = await r.hget(NAMES_KEY, name)
        return owner.decode() if isinstance(owner, bytes) else str(owner)

    async def release_name(self, name: str, node: str) -> bool:
        # compare-and-delete in one step, so a release never removes a new holder's claim
        done = await self._redis_client().eval(
            "if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then "
            "return redis.call('HDEL', KEYS[1], ARGV[1]) else return 0 end",
            1, NAMES_KEY, name, node)
        return bool(done)

    async def name_owner(self, name: str) -> str | None:
        owner = await self._redis_client().hget(NAMES_KEY, name)
        if owner is None:
            return None
        return owner.decode() if isinstance(owner, bytes) else str(owner)

    async def set_gateway(self, info: dict[str, str]) -> None:
        await self._redis_client().set(GATEWAY_KEY, json.dumps(info))

    async def gateway(self) -> dict[str, str] | None:
        raw = await self._redis_client().get(GATEWAY_KEY)
        if raw is None:
            return None
        info = json.loads(raw)
        return {str(k): str(v) for k, v in info.items()} if isinstance(info, dict) else None

    async def online(self, node: str) -> bool:
        if self._local.has(node):
            return True
        assert self._redis is not None
        return bool(await self._redis.zcount(self._key(node), time.time(), "+inf"))

    def count(self) -> int:
        return self._local.count()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._redis is not None:
            with contextlib.suppress(RedisError, OSError):
                nodes = self._local.nodes()
                if nodes:
                    pipe = self._redis.pipeline()
                    for node in nodes:
                        pipe.zrem(self._key(node), self.instance)
                    await pipe.execute()
            with contextlib.suppress(RedisError, OSError, RuntimeError):
                await self._pubsub.aclose()
                await self._redis.aclose()
        await self._local.close()

    async def _announce(self, nodes: list[str]) -> None:
        if self._redis is None or not nodes:
            return
        expiry = time.time() + self.ttl
        try:
            pipe = self._redis.pipeline(transaction=False)
            for node in nodes:
                pipe.zadd(self._key(node), {self.instance: expiry})
                pipe.zremrangebyscore(self._key(node), "-inf", time.time())
                pipe.expire(self._key(node), int(self.ttl * 2) + 1)
            await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("presence update failed: %s", exc)

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            nodes = self._local.nodes()
            for i in range(0, len(nodes), 1000):
                await self._announce(nodes[i:i + 1000])

    async def _listen(self) -> None:
        while True:
            try:
                msg = await self._pubsub.get_message(ignore_subscribe_messages=True,
                                                     timeout=1.0)
            except (RedisError, OSError) as exc:
                log.warning("Redis subscription failed: %s", exc)
                await asyncio.sleep(1)
                continue
            if msg is None:
                continue
            data = msg.get("data")
            if not isinstance(data, bytes) or len(data) < 2 * NODE_ID_LEN:
                log.warning("ignoring a malformed message on %s", msg.get("channel"))
                continue
            try:
                sender = data[:NODE_ID_LEN].decode("ascii")
                to = data[NODE_ID_LEN:2 * NODE_ID_LEN].decode("ascii")
            except UnicodeDecodeError:
                continue
            await self._local.route(sender, to, data[2 * NODE_ID_LEN:])
