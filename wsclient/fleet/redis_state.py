"""``RedisSharedState``: breaker, health and ejection state shared by a fleet through Redis.

How state flows (every instance runs the same code)::

    instance A                          Redis                       instance B
    core -> SharedStore --update--> writer --EVALSHA update.lua--> HSET b:<id>, PUBLISH
                                                                         |
                                    pub/sub <---------------------------+
    SharedStore.apply() <-------------------------------------------- subscriber
    (fires breaker-open, backend-ejected ... and the core re-judges the backend)

* One Lua script writes a backend's fields, bumps its version and publishes
  the change, atomically. Durations arrive as "milliseconds left" and the
  script turns them into deadlines on Redis' clock (``TIME``); readers turn
  them back into "left" the same way, so hosts' clocks never meet.
* A new instance subscribes first, then reads every backend's hash: it
  starts with the fleet's view and misses nothing written in between
  (versions order a message against the snapshot).
* Probing is shared by lease (``lease:<id>``, ``SET NX PX``): the holder
  probes and publishes each result, renewing the lease for one interval;
  the others wait for the lease to lapse and the first to ask takes it.
* Every Redis call is bounded by ``timeout``. The first failure switches the
  instance to local state (logged once); writes made meanwhile are
  remembered by backend and pushed, then the fleet's view is read again, when
  Redis answers again. Nothing waits for Redis on the pool's hot path: the
  core reads the in-memory ``SharedStore``.

Keys: ``wsclient:{<cluster>}:b:<backend id>`` (a hash: health, breaker,
ejection; no URL, header or credential), ``...:lease:<backend id>``, channel
``...:events``. Hashes expire ``key_ttl`` after their last write.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import random
import re
import time
import uuid
from collections.abc import Awaitable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from wsclient.config import CircuitBreakerConfig, HealthCheckConfig, redact_text
from wsclient.fleet.shared_store import SharedStore, Update

__all__ = ["RedisSharedState"]

logger = logging.getLogger("wsclient.fleet")

T = TypeVar("T")

# KEYS: record hash, lease key. ARGV: channel, fields (JSON), key ttl ms, backend
# id, instance id, lease ttl ms ('' = not a probe result: leave the lease alone).
_UPDATE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local f = cjson.decode(ARGV[2])
local out = {}
for k, v in pairs(f) do
  if k == 'br_ms' then
    out['br_until'] = now + v
  elseif k == 'ej_ms' then
    if v > 0 then out['ej_until'] = now + v else out['ej_until'] = 0 end
  else
    out[k] = v
  end
end
if f['h'] ~= nil then out['lc'] = now / 1000 end
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'e', now)
end
for k, v in pairs(out) do redis.call('HSET', KEYS[1], k, cjson.encode(v)) end
local ver = redis.call('HINCRBY', KEYS[1], 'v', 1)
local epoch = tonumber(redis.call('HGET', KEYS[1], 'e'))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if ARGV[6] ~= '' and redis.call('GET', KEYS[2]) == ARGV[5] then
  redis.call('PEXPIRE', KEYS[2], ARGV[6])
end
redis.call('PUBLISH', ARGV[1],
  cjson.encode({b = ARGV[4], s = ARGV[5], e = epoch, v = ver, now = now, f = out}))
return ver
"""

# KEYS: lease key. ARGV: instance id, ttl ms. -1: held by us now; else ms it has left.
_CLAIM = """
local cur = redis.call('GET', KEYS[1])
if (not cur) or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return -1
end
local left = redis.call('PTTL', KEYS[1])
if left < 0 then left = 0 end
return left
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_CLUSTER_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_RECORD_FIELDS = ("h", "pf", "ps", "lat", "err", "lc", "br")


class RedisSharedState:
    """Share breaker, health and ejection state, and active probing, with a fleet.

    ``WebSocketPool(..., shared_state=RedisSharedState("redis://host:6379/0",
    cluster="orders"))``. Instances with the same ``cluster`` (and Redis) share;
    one object serves one pool.

    :param url: ``redis://``, ``rediss://`` or ``unix://`` URL (a password in it
        is used, never shown).
    :param cluster: namespace of the keys, letters, digits, ``_.-``.
    :param timeout: bound of every Redis call, seconds; past it the pool uses
        local state until Redis answers again.
    :param key_ttl: a backend's hash expires this long after its last write.
    :param reconnect_delay: pause between attempts to reach Redis again.
    :param heartbeat: how often the subscriber checks that Redis still answers.
    """

    def __init__(
        self,
        url: str,
        *,
        cluster: str,
        timeout: float = 0.25,
        key_ttl: float = 3600.0,
        reconnect_delay: float = 0.5,
        heartbeat: float = 0.5,
        queue_size: int = 10_000,
    ) -> None:
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError("url must be a redis://, rediss:// or unix:// URL")
        if not isinstance(cluster, str) or not _CLUSTER_NAME.match(cluster):
            raise ValueError(
                f"cluster must be 1-64 letters, digits, '_', '.' or '-', got {cluster!r}"
            )
        for name, value in (
            ("timeout", timeout),
            ("key_ttl", key_ttl),
            ("reconnect_delay", reconnect_delay),
            ("heartbeat", heartbeat),
        ):
            if not (isinstance(value, int | float) and value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        self.cluster = cluster
        self._url = url
        # Shown in repr and logs: scheme, host, port and database, never the password.
        host = parts.hostname or parts.path or "localhost"
        self._where = f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")
        self._timeout = float(timeout)
        self._key_ttl_ms = str(int(key_ttl * 1000))
        self._reconnect_delay = float(reconnect_delay)
        self._heartbeat = float(heartbeat)
        self.instance_id = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._prefix = f"wsclient:{{{cluster}}}"
        self._channel = f"{self._prefix}:events"
        self._store: SharedStore | None = None
        self._health: HealthCheckConfig | None = None
        self._queue: asyncio.Queue[tuple[str, str, Update | None]] = asyncio.Queue(queue_size)
        self._client: aioredis.Redis | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._connected = False
        self._synced = asyncio.Event()
        self._broken = asyncio.Event()  # a call failed: the subscriber reconnects
        self._dirty: set[str] = set()  # changed locally while Redis was away
        self._versions: dict[str, tuple[int, int]] = {}
        self._leases: set[str] = set()
        self._rng = random.Random()
        self._closed = False
        self._logged_down = False
        self.last_error: str | None = None
        self.counters = {
            "writes": 0,
            "writes_dropped": 0,
            "applied": 0,
            "errors": 0,
            "resyncs": 0,
            "probe_leases": 0,
        }

    def __repr__(self) -> str:
        state = "connected" if self._connected else "local"
        return f"<RedisSharedState cluster={self.cluster!r} {self._where} {state}>"

    # ------------------------------------------------------------------ binding

    def bind(self, breaker: CircuitBreakerConfig, health: HealthCheckConfig) -> SharedStore:
        if self._store is not None:
            raise RuntimeError("this RedisSharedState already serves a pool; make one per pool")
        self._health = health
        store = SharedStore(breaker, health, self._sink)
        store.on_register = self.backend_added
        self._store = store
        return store

    def _key(self, backend_id: str) -> str:
        return f"{self._prefix}:b:{backend_id}"

    def _lease_key(self, backend_id: str) -> str:
        return f"{self._prefix}:lease:{backend_id}"

    def _sink(self, backend_id: str, fields: Update) -> None:
        """A local transition (called inside core steps): queue it, never wait."""
        if not self._connected:
            self._dirty.add(backend_id)
            return
        try:
            self._queue.put_nowait(("write", backend_id, fields))
        except asyncio.QueueFull:
            self.counters["writes_dropped"] += 1
            self._dirty.add(backend_id)

    def backend_added(self, backend_id: str) -> None:
        """A backend joined after start: read the fleet's view of it."""
        if self._connected:
            with contextlib.suppress(asyncio.QueueFull):
                self._queue.put_nowait(("fetch", backend_id, None))

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._store is None:
            raise RuntimeError("bind() the shared state to a pool first")
        if self._tasks or self._closed:
            return
        self._client = aioredis.Redis.from_url(
            self._url,
            socket_timeout=self._timeout,
            socket_connect_timeout=self._timeout,
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
            client_name="wsclient",
        )
        self._update = self._client.register_script(_UPDATE)
        self._claim = self._client.register_script(_CLAIM)
        self._release = self._client.register_script(_RELEASE)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._link(), name="wsclient-fleet-subscriber"),
            loop.create_task(self._write_loop(), name="wsclient-fleet-writer"),
        ]
        # A new instance starts with the fleet's view, if Redis gives it in time.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._timeout * 4):
                await self._synced.wait()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self._timeout * 4)
            if pending:  # pragma: no cover - only if the client swallowed a cancellation
                logger.warning("shared state: %d task(s) did not stop in time", len(pending))
        client, self._client = self._client, None
        if client is None:
            return
        if self._connected and self._leases:
            # Hand the probe leases back, so another instance takes over at once.
            for backend_id in list(self._leases):
                await self._bounded(
                    self._release(keys=[self._lease_key(backend_id)], args=[self.instance_id])
                )
        self._connected = False
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self._timeout):
                await client.aclose()

    # ------------------------------------------------------------------ status

    @property
    def connected(self) -> bool:
        return self._connected

    def status(self) -> dict[str, Any]:
        return {
            "kind": "redis",
            "where": self._where,
            "cluster": self.cluster,
            "instance": self.instance_id,
            "connected": self._connected,
            "last_error": self.last_error,
            **self.counters,
        }

    # ------------------------------------------------------------------ bounded calls

    async def _bounded(self, call: Awaitable[T]) -> T | None:
        """Run one Redis call within ``timeout``; any failure switches to local state."""
        try:
            async with asyncio.timeout(self._timeout):
                result = await call
        except Exception as exc:  # whatever the client raises, the pool goes on locally
            self._fail(exc)
            return None
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            # A cancellation that landed inside the client and was not re-raised
            # must still end the caller (a probe loop being stopped, say).
            raise asyncio.CancelledError
        return result

    def _fail(self, exc: BaseException) -> None:
        self.counters["errors"] += 1
        if isinstance(exc, TimeoutError):
            error = f"no answer within {self._timeout} s"
        else:
            error = redact_text(f"{type(exc).__name__}: {exc}")
        self.last_error = error
        self._connected = False
        if not self._logged_down:
            self._logged_down = True  # once per outage
            logger.warning(
                "shared state %s (cluster %r): Redis failed (%s); using local state until it "
                "answers again",
                self._where,
                self.cluster,
                error,
            )
        self._broken.set()

    # ------------------------------------------------------------------ probe leases

    async def claim_probe(self, backend_id: str) -> float | None:
        if not self._connected or self._health is None:
            return None  # local state: every instance probes for itself
        interval = self._health.interval
        ttl = int((interval + self._health.timeout) * 1000)
        left = await self._bounded(
            self._claim(keys=[self._lease_key(backend_id)], args=[self.instance_id, ttl])
        )
        if left is None:
            return None
        if int(left) < 0:
            self._leases.add(backend_id)
            self.counters["probe_leases"] += 1
            return None
        self._leases.discard(backend_id)
        # Ask again when the holder's lease runs out; a small random slack keeps
        # the waiting instances from asking all at once.
        slack = self._rng.uniform(0.0, min(0.05, interval * 0.1))
        return min(interval, int(left) / 1000.0 + slack)

    # ------------------------------------------------------------------ writing

    async def _write_loop(self) -> None:
        while True:
            kind, backend_id, fields = await self._queue.get()
            if not self._connected:
                self._dirty.add(backend_id)
                continue
            try:
                if kind == "fetch":
                    await self._load([backend_id])
                elif fields is not None:
                    await self._write(backend_id, fields)
            except Exception:  # a bug here must not end the writes for good
                logger.exception("shared state: writing %s failed", backend_id)
                self._dirty.add(backend_id)

    async def _write(self, backend_id: str, fields: Update) -> bool:
        assert self._health is not None
        renew = str(int(self._health.interval * 1000)) if "h" in fields else ""
        version = await self._bounded(
            self._update(
                keys=[self._key(backend_id), self._lease_key(backend_id)],
                args=[
                    self._channel,
                    json.dumps(fields),
                    self._key_ttl_ms,
                    backend_id,
                    self.instance_id,
                    renew,
                ],
            )
        )
        if version is None:
            self._dirty.add(backend_id)
            return False
        self.counters["writes"] += 1
        return True

    # ------------------------------------------------------------------ reading

    async def _link(self) -> None:
        """Connect, subscribe, sync, listen; on any failure go local and try again."""
        assert self._client is not None
        while True:
            self._broken.clear()
            pubsub: Any = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await self._bounded(pubsub.subscribe(self._channel))
                if self._broken.is_set():
                    raise _Unreachable
                await self._resync()
                await self._listen(pubsub)
            except _Unreachable:
                pass
            except Exception as exc:  # never let the subscriber die: go local, try again
                self._fail(exc)
            finally:
                self._connected = False
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(self._timeout):
                        await pubsub.aclose()
            await asyncio.sleep(self._reconnect_delay * self._rng.uniform(0.8, 1.2))

    async def _resync(self) -> None:
        """After (re)connecting: push what changed here meanwhile, then read the fleet's view."""
        assert self._store is not None and self._client is not None
        store = self._store
        was_degraded = self.last_error is not None
        self._connected = True  # the subscription answered; writes may go out again
        dirty, self._dirty = self._dirty, set()
        for backend_id in dirty:
            if store.known(backend_id) and not await self._write(
                backend_id, store.snapshot(backend_id)
            ):
                self._dirty |= dirty
                raise _Unreachable
        ids = list(store.registered())
        if not await self._load(ids):
            raise _Unreachable
        self._synced.set()
        self._logged_down = False
        if was_degraded:
            self.counters["resyncs"] += 1
            logger.warning(
                "shared state %s (cluster %r): Redis answers again; %d backend(s) resynchronised",
                self._where,
                self.cluster,
                len(ids),
            )
            self.last_error = None

    async def _load(self, ids: list[str]) -> bool:
        """Read the fleet's records of ``ids`` and apply them."""
        assert self._client is not None
        pipe = self._client.pipeline(transaction=True)
        pipe.time()
        for backend_id in ids:
            pipe.hgetall(self._key(backend_id))
        results = await self._bounded(pipe.execute())
        if results is None:
            return False
        seconds, micros = results[0]
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        for backend_id, raw in zip(ids, results[1:], strict=True):
            if raw:
                self._apply_raw(backend_id, {k: _loads(v) for k, v in raw.items()}, now_ms)
        return True

    async def _listen(self, pubsub: Any) -> None:
        assert self._client is not None
        next_ping = time.monotonic() + self._heartbeat
        while not self._broken.is_set():
            try:
                async with asyncio.timeout(self._heartbeat + self._timeout):
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=self._heartbeat
                    )
            except Exception as exc:
                self._fail(exc)
                return
            if self._broken.is_set():
                return
            if message is not None and message.get("type") == "message":
                self._on_message(message["data"])
            if time.monotonic() >= next_ping:
                # A paused Redis keeps the socket open and says nothing: ask it.
                if await self._bounded(self._client.ping()) is None:
                    return
                next_ping = time.monotonic() + self._heartbeat

    def _on_message(self, data: str) -> None:
        try:
            message = json.loads(data)
            backend_id = str(message["b"])
            version = (int(message["e"]), int(message["v"]))
            fields = message["f"]
            now_ms = int(message["now"])
        except (ValueError, KeyError, TypeError):
            logger.debug("shared state: ignoring a malformed message on %s", self._channel)
            return
        if version <= self._versions.get(backend_id, (0, 0)):
            return
        self._versions[backend_id] = version
        if message.get("s") == self.instance_id:
            return  # our own write: already applied here
        self._apply_fields(backend_id, fields, now_ms)

    def _apply_raw(self, backend_id: str, raw: dict[str, Any], now_ms: int) -> None:
        version = (int(raw.get("e", 0) or 0), int(raw.get("v", 0) or 0))
        if version < self._versions.get(backend_id, (0, 0)):
            return
        self._versions[backend_id] = version
        self._apply_fields(backend_id, raw, now_ms)

    def _apply_fields(self, backend_id: str, raw: dict[str, Any], now_ms: int) -> None:
        assert self._store is not None
        update: Update = {k: raw[k] for k in _RECORD_FIELDS if k in raw}
        if "br_until" in raw and raw.get("br") == "open":
            update["br_ms"] = max(0, int(raw["br_until"]) - now_ms)
        if "ej_until" in raw:
            until = int(raw["ej_until"] or 0)
            update["ej_ms"] = max(0, until - now_ms) if until else 0
        self.counters["applied"] += 1
        try:
            self._store.apply(backend_id, update)
        except Exception:  # a listener's bug must not stop the subscriber
            logger.exception("shared state: applying an update of %s failed", backend_id)


class _Unreachable(Exception):
    """Redis did not answer during (re)connection; the link loop tries again."""


def _loads(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value
