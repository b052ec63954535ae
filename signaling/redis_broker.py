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
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from mesh.proto.identity import NODE_ID_LEN

from .broker import MAX_SESSIONS, Mailbox, MemoryBroker
from .names import NameQuota, NameRules

log = logging.getLogger("mesh.signal.redis")


class _Batcher:
    """Coalesces the hot-path commands (PUBLISH, presence lookups) issued in one event
    loop turn into one pipeline: one round trip for many envelopes under load, the
    same single round trip as before when idle."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        self._queue: list[tuple[Callable[[Any], Any], asyncio.Future[Any]]] = []
        self._scheduled = False

    def call(self, command: Callable[[Any], Any]) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((command, fut))
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_soon)
        return fut

    def _flush_soon(self) -> None:
        task = asyncio.ensure_future(self._flush())
        task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    async def _flush(self) -> None:
        queue, self._queue, self._scheduled = self._queue, [], False
        pipe = self._redis.pipeline(transaction=False)
        for command, _ in queue:
            command(pipe)
        try:
            results = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as exc:
            results = [exc] * len(queue)
        for (_, fut), result in zip(queue, results, strict=False):
            if fut.done():
                continue
            if isinstance(result, BaseException):
                fut.set_exception(result if isinstance(result, RedisError | OSError)
                                  else RedisError(str(result)))
            else:
                fut.set_result(result)


NAMES_KEY = "mesh:names"
NAMES_SEEN_KEY = "mesh:names:seen"
"""name -> when its holder last claimed it (names.py's rules)."""
NAMES_BY_NODE = "mesh:names:of:"
"""+ node id: the set of names the node holds."""
# names.py's NameBook.claim, atomically: KEYS names, seen, by-node set of the claimant,
# rosters, roster seqs;
# ARGV name, node, now, offline ttl, max per node, presence key prefix, by-node prefix.
# Returns the holder, or "" when the claimant is at its quota. A name kept before
# "seen" existed counts as seen now.
CLAIM = """
local owner = redis.call('HGET', KEYS[1], ARGV[1])
local now = tonumber(ARGV[3])
if owner == ARGV[2] then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
  redis.call('SADD', KEYS[3], ARGV[1])
  return owner
end
if owner then
  local seen = redis.call('HGET', KEYS[2], ARGV[1])
  if not seen then
    redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
    return owner
  end
  local online = redis.call('ZCOUNT', ARGV[6] .. owner, ARGV[3], '+inf')
  if online > 0 or now - tonumber(seen) < tonumber(ARGV[4]) then
    return owner
  end
  redis.call('SREM', ARGV[7] .. owner, ARGV[1])
  redis.call('HDEL', KEYS[4], ARGV[1])
  redis.call('HDEL', KEYS[5], ARGV[1])
end
if redis.call('SCARD', KEYS[3]) >= tonumber(ARGV[5]) then
  return ''
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('SADD', KEYS[3], ARGV[1])
return ARGV[2]
"""
RELEASE = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[4], ARGV[1])
  redis.call('HDEL', KEYS[5], ARGV[1])
  redis.call('SREM', KEYS[3], ARGV[1])
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""
ROSTERS_KEY = "mesh:rosters"
ROSTERS_SEQ_KEY = "mesh:rosters:seq"
# names.py's NameBook.set_roster: KEYS rosters, seqs; ARGV name, seq, text. 1 if stored.
SET_ROSTER = """
local seq = redis.call('HGET', KEYS[2], ARGV[1])
if seq and tonumber(seq) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"""
GATEWAY_KEY = "mesh:gateway"
RATE_SYNC = 0.1


class RedisBroker:
    """``Broker`` over Redis; local sessions are kept in an inner ``MemoryBroker``."""

    def __init__(self, url: str, instance: str, ttl: float = 15.0,
                 rate_per_node: int = 200, max_sessions: int = MAX_SESSIONS,
                 names: NameRules | None = None) -> None:
        self.url = url
        self.names = names or NameRules()
        self.instance = instance
        self.ttl = ttl
        self.rate_per_node = rate_per_node
        self._local = MemoryBroker(max_sessions)
        self.max_sessions = max_sessions
        self._redis: aioredis.Redis | None = None
        self._pubsub: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._where: dict[str, tuple[float, list[str]]] = {}
        self._batch: _Batcher | None = None
        self._pending_rate: dict[str, int] = {}
        self._local_rate: dict[str, tuple[int, int]] = {}
        self._blocked: dict[str, int] = {}

    async def start(self) -> None:
        try:
            # A blocking pool: under a burst, commands wait for a free connection
            # instead of failing with "Too many connections" (which would read as
            # "nobody holds this node" and drop the envelope).
            pool = aioredis.BlockingConnectionPool.from_url(self.url, max_connections=64,
                                                            timeout=5)
            self._redis = aioredis.Redis(connection_pool=pool)
            self._batch = _Batcher(self._redis)
            await self._redis.ping()
        except (RedisError, OSError, ValueError) as exc:
            raise ConnectionError(f"cannot reach Redis at {self.url}: {exc}") from exc
        self._pubsub = self._redis.pubsub()
        await self._pubsub.subscribe(self._channel(self.instance))
        self._tasks = [asyncio.create_task(self._listen()),
                       asyncio.create_task(self._refresh_loop()),
                       asyncio.create_task(self._sync_rates())]

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
        try:
            instances = await self._instances(to)
        except (RedisError, OSError) as exc:
            log.warning("presence lookup failed: %s", exc)
            return "recipient-busy" if not results else results[0]
        for inst in instances:
            if inst == self.instance:
                continue
            try:
                channel = self._channel(inst)
                got = await self._batcher().call(
                    lambda pipe, c=channel: pipe.publish(c, message))  # type: ignore[misc]
            except (RedisError, OSError) as exc:
                log.warning("publish to %s failed: %s", inst, exc)
                results.append("recipient-busy")  # Redis trouble is not a dead instance
                continue
            if got:
                results.append("ok")
            else:  # nobody listens there: the instance is gone
                self._where.pop(to, None)
                with contextlib.suppress(RedisError, OSError):
                    await self._redis_client().zrem(self._key(to), inst)
        if "ok" in results:
            return "ok"
        return "recipient-busy" if results else "unknown-destination"

    def _batcher(self) -> _Batcher:
        assert self._batch is not None
        return self._batch

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
        key = self._key(node)
        raw = await self._batcher().call(lambda pipe: pipe.zrangebyscore(key, now, "+inf"))
        found = [r.decode() if isinstance(r, bytes) else str(r) for r in raw]
        if len(self._where) > 100_000:
            self._where.clear()
        self._where[node] = (now + 1.0, found)
        return found

    async def allow(self, node: str, now: float) -> bool:
        """Per-node frame rate shared by all instances (one-second windows).

        Counted locally at once (a node usually talks to one instance, so this is
        exact) and added to a shared Redis counter every ``RATE_SYNC`` s; a node over
        the limit tier-wide is refused for the rest of the window. Redis trouble fails
        open: the per-connection limit still applies."""
        window = int(now)
        if self._blocked.get(node) == window:
            return False
        seen_window, seen = self._local_rate.get(node, (window, 0))
        seen = seen + 1 if seen_window == window else 1
        self._local_rate[node] = (window, seen)
        if len(self._local_rate) > 200_000:
            self._local_rate.clear()
        if seen > self.rate_per_node:
            self._blocked[node] = window
            return False
        # A node has at most MAX_SESSIONS sessions, so below rate/MAX_SESSIONS frames
        # per window on every instance it cannot be over the tier-wide limit: only
        # busier nodes are counted in Redis (the sync stays cheap under many nodes).
        quiet = self.rate_per_node // self.max_sessions
        if seen > quiet:
            self._pending_rate[node] = self._pending_rate.get(node, 0) + (
                seen if seen == quiet + 1 else 1)
        return True

    async def _sync_rates(self) -> None:
        while True:
            await asyncio.sleep(RATE_SYNC)
            pending, self._pending_rate = self._pending_rate, {}
            if not pending or self._redis is None:
                continue
            window = int(time.time())
            nodes = list(pending)
            try:
                pipe = self._redis.pipeline(transaction=False)
                for node in nodes:
                    key = f"mesh:rate:{node}:{window}"
                    pipe.incrby(key, pending[node])
                    pipe.expire(key, 2)
                results = await pipe.execute()
            except (RedisError, OSError) as exc:
                log.debug("rate sync failed: %s", exc)
                continue
            self._blocked = {n: b for n, b in self._blocked.items() if b >= window}
            for node, total in zip(nodes, results[::2], strict=True):
                if int(total) > self.rate_per_node:
                    self._blocked[node] = window

    # -- public names: a hash shared by every instance; first claim wins (HSETNX) --
    async def claim_name(self, name: str, node: str) -> str:
        rules = self.names
        owner = await self._redis_client().eval(
            CLAIM, 5, NAMES_KEY, NAMES_SEEN_KEY, NAMES_BY_NODE + node, ROSTERS_KEY,
            ROSTERS_SEQ_KEY, name, node,
            repr(time.time()), repr(rules.offline_ttl), str(rules.max_per_node),
            self._key(""), NAMES_BY_NODE)
        text = owner.decode() if isinstance(owner, bytes) else str(owner)
        if not text:
            raise NameQuota(f"this node key holds {rules.max_per_node} names, the most it "
                            "may; release one first")
        return text

    async def release_name(self, name: str, node: str) -> bool:
        # compare-and-delete in one step, so a release never removes a new holder's claim
        done = await self._redis_client().eval(
            RELEASE, 5, NAMES_KEY, NAMES_SEEN_KEY, NAMES_BY_NODE + node, ROSTERS_KEY,
            ROSTERS_SEQ_KEY, name, node)
        return bool(done)

    async def set_roster(self, name: str, seq: int, text: str) -> bool:
        done = await self._redis_client().eval(SET_ROSTER, 2, ROSTERS_KEY, ROSTERS_SEQ_KEY,
                                               name, str(seq), text)
        return bool(done)

    async def roster(self, name: str) -> str | None:
        raw = await self._redis_client().hget(ROSTERS_KEY, name)
        return None if raw is None else raw.decode() if isinstance(raw, bytes) else str(raw)

    async def name_owner(self, name: str) -> str | None:
        r = self._redis_client()
        owner, seen = await r.hget(NAMES_KEY, name), await r.hget(NAMES_SEEN_KEY, name)
        if owner is None:
            return None
        text = owner.decode() if isinstance(owner, bytes) else str(owner)
        if seen is not None and time.time() - float(seen) >= self.names.offline_ttl and (
                not await self.online(text)):
            return None  # claimable; dropped by the next claim
        return text

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

    async def _announce(self, nodes: list[str], refresh: bool = False) -> None:
        """Mark ``nodes`` present here until now + ttl. A refresh skips pruning expired
        members (lookups ignore them by score; the key's own expiry removes them)."""
        if self._redis is None or not nodes:
            return
        expiry = time.time() + self.ttl
        try:
            pipe = self._redis.pipeline(transaction=False)
            for node in nodes:
                pipe.zadd(self._key(node), {self.instance: expiry})
                if not refresh:
                    pipe.zremrangebyscore(self._key(node), "-inf", time.time())
                pipe.expire(self._key(node), int(self.ttl * 2) + 1)
            await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("presence update failed: %s", exc)

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            nodes = self._local.nodes()
            # small batches, yielding in between: 10k nodes must not stall routing
            for i in range(0, len(nodes), 100):
                await self._announce(nodes[i:i + 100], refresh=True)
                await asyncio.sleep(0)

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
