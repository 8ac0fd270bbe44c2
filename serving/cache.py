"""A hot-entity cache in the endpoint, kept coherent by Redis server-assisted client-side caching.

Off by default; ``FRESHET_CACHE=on`` turns it on (single Redis server only, not Redis Cluster)::

    FRESHET_CACHE=on  FRESHET_CACHE_MAX_ENTRIES=100000  FRESHET_CACHE_MAX_BYTES=67108864 \\
    FRESHET_CACHE_MAX_STALENESS_MS=100  freshet serve

:class:`CachedRedis` stands where the endpoint's :class:`~freshet.serving.redis_link.RedisLink`
stands (it has the same ``mget``/``ping``/``close``), so the feature reader, the record layout
and the serving rules (expiry, staleness: decided from the record and the clock at each lookup)
are untouched: the cache holds raw records (or "no record") by Redis key.

Coherence
---------
Misses are read on a *tracking connection* of their own: RESP3 (``HELLO 3``) with ``CLIENT
TRACKING ON``, so Redis remembers every key read there and, when one changes (write, delete,
expiry, eviction, ``FLUSHDB``), sends an ``invalidate`` push message **on that same
connection**. Redis writes a connection's replies and pushes in the order it executed the
commands that caused them, so a reply is followed by the invalidations of every later write of
its keys. Two gaps remain, closed here:

* *Read in flight.* The reply is parsed, then the request's coroutine resumes later; pushes
  parsed in between (possibly from the same socket read) would be handled before the value is
  stored. Each key being read carries a pending count; an invalidation of a pending key marks it
  dirty, and a dirty read is answered but not stored. A connection loss during the read bumps a
  generation number, and reads of an older generation are not stored either.
* *Invalidation delay.* A write replaces a value in Redis before its invalidation reaches the
  endpoint's event loop. To bound that delay rather than hope, a heartbeat ``PING`` goes over the
  tracking connection every ``max_staleness_ms / 4``. Its ``PONG`` follows every invalidation of
  writes Redis executed before the ``PING``, so once it is parsed the cache holds no value
  replaced before the ``PING`` was sent. Hits are served only while the last acknowledged
  ``PING`` was sent less than ``max_staleness_ms`` ago.

**Staleness bound:** a value served from the cache was replaced in Redis at most
``max_staleness_ms`` (default 100 ms) before the lookup; typically far less, the time for an
invalidation to cross loopback and be read by the event loop (well under a millisecond on an
idle loop). ``tests/integration/test_cache_coherence.py`` races writers against lookups and holds
the cache to this bound.

Loss of tracking
----------------
When the tracking connection drops (or its heartbeat goes unanswered) the cache is flushed and
*bypassed*: lookups read Redis directly, as without a cache, and count as bypasses. The
heartbeat task reconnects with capped backoff; the new connection turns tracking on before any
read, and the cache serves hits again once a heartbeat on it is acknowledged. A record past its
view's TTL is reported ``expired`` by the reader either way; Redis deleting it sends an
invalidation.

Bounds: at most ``max_entries`` entries and ``max_bytes`` bytes (key + record + an estimated
``ENTRY_OVERHEAD`` of Python objects per entry), least recently used evicted first.

Metrics (``GET /metrics``, counted locally and flushed with the endpoint's)::

    freshet_cache_hits_total            keys answered from the cache
    freshet_cache_misses_total          keys read on the tracking connection
    freshet_cache_invalidations_total   keys invalidated by Redis
    freshet_cache_evictions_total       entries evicted by the entry/byte bounds
    freshet_cache_bypasses_total        keys read directly while tracking was down or unconfirmed
    freshet_cache_tracking              1 while the tracking connection is up and confirmed
    freshet_cache_entries, freshet_cache_bytes
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from redis.exceptions import RedisError

from freshet.serving.redis_link import RedisLink

__all__ = [
    "ENTRY_OVERHEAD",
    "TRACKING_CLIENT_NAME",
    "CacheSettings",
    "CacheSettingsError",
    "CachedRedis",
]

log = logging.getLogger(__name__)

# Bytes charged per entry on top of its key and record: the OrderedDict slot and link, the two
# bytes objects' headers (measured with sys.getsizeof and tracemalloc on CPython 3.11: ~150).
ENTRY_OVERHEAD = 160
# The tracking connection's name in CLIENT LIST (operators and tests find it by this name).
TRACKING_CLIENT_NAME = b"freshet-cache-tracking"

_ABSENT: Any = object()
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


class CacheSettingsError(ValueError):
    """A ``FRESHET_CACHE*`` variable freshet cannot use; the message names it."""


@dataclass(frozen=True, kw_only=True)
class CacheSettings:
    """The cache's configuration; ``CacheSettings()`` is off."""

    enabled: bool = False
    max_entries: int = 100_000
    max_bytes: int = 64 << 20
    max_staleness_ms: int = 100
    # Reconnect backoff of the tracking connection, doubling up to the maximum.
    retry_initial_s: float = 0.05
    retry_max_s: float = 2.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> CacheSettings:
        env = os.environ if environ is None else environ
        flag = env.get("FRESHET_CACHE", "").strip().lower()
        if flag not in _TRUE | _FALSE:
            raise CacheSettingsError(f"FRESHET_CACHE={flag!r} is not on/off (or true/false, 1/0)")
        return cls(
            enabled=flag in _TRUE,
            max_entries=_positive(env, "FRESHET_CACHE_MAX_ENTRIES", cls.max_entries),
            max_bytes=_positive(env, "FRESHET_CACHE_MAX_BYTES", cls.max_bytes),
            max_staleness_ms=_positive(env, "FRESHET_CACHE_MAX_STALENESS_MS", cls.max_staleness_ms),
        )


def _positive(env: Mapping[str, str], name: str, default: int) -> int:
    text = env.get(name, "").strip().replace("_", "")
    if not text:
        return default
    if not text.isdigit() or int(text) < 1:
        raise CacheSettingsError(f"{name}={text!r} is not a whole number above 0")
    return int(text)


class _Metrics:
    """Counts kept in plain ints on the hot path, moved into Prometheus metrics by ``flush``."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.counts = dict.fromkeys(("hits", "misses", "invalidations", "evictions", "bypasses"), 0)
        self._flushed = dict(self.counts)
        self._counters: dict[str, Counter] = {}
        self._gauges: dict[str, Gauge] = {}
        if registry is None:
            return
        helps = {
            "hits": "Keys answered from the endpoint's cache",
            "misses": "Keys not in the cache, read on the tracking connection",
            "invalidations": "Keys invalidated by Redis (CLIENT TRACKING)",
            "evictions": "Cache entries evicted by the entry or byte bound",
            "bypasses": "Keys read directly while cache tracking was down or unconfirmed",
        }
        for name, text in helps.items():
            self._counters[name] = Counter(f"freshet_cache_{name}", text, registry=registry)
        self._gauges = {
            "tracking": Gauge(
                "freshet_cache_tracking",
                "1 while the cache's tracking connection is up and confirmed",
                registry=registry,
                multiprocess_mode="livemin",
            ),
            "entries": Gauge(
                "freshet_cache_entries",
                "Entries in the cache",
                registry=registry,
                multiprocess_mode="livesum",
            ),
            "bytes": Gauge(
                "freshet_cache_bytes",
                "Bytes charged to the cache's entries",
                registry=registry,
                multiprocess_mode="livesum",
            ),
        }

    def flush(self, tracking: bool, entries: int, size: int) -> None:
        for name, counter in self._counters.items():
            delta = self.counts[name] - self._flushed[name]
            if delta:
                counter.inc(delta)
        self._flushed = dict(self.counts)
        if self._gauges:
            self._gauges["tracking"].set(1 if tracking else 0)
            self._gauges["entries"].set(entries)
            self._gauges["bytes"].set(size)


class CachedRedis:
    """``mget``/``ping``/``close`` over one Redis server, with coherent hot-entity caching.

    ``direct`` answers pings and bypassed reads (default: a ``RedisLink`` of ``url``); the
    tracking connection is a RESP3 ``RedisLink`` of ``url`` made here. ``registry``: where the
    ``freshet_cache_*`` metrics go (see :meth:`bind_metrics`).
    """

    def __init__(
        self,
        url: str,
        *,
        settings: CacheSettings,
        direct: Any = None,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._direct = direct if direct is not None else RedisLink(url)
        self._tracked = RedisLink(
            url,
            resp3=True,
            setup=(
                (b"CLIENT", b"SETNAME", TRACKING_CLIENT_NAME),
                (b"CLIENT", b"TRACKING", b"ON"),
                (b"CLIENT", b"ID"),
            ),
            on_push=self._on_push,
            on_lost=self._on_lost,
        )
        self._clock = clock
        self._lease_s = settings.max_staleness_ms / 1000
        self._heartbeat_s = self._lease_s / 4
        self._entries: collections.OrderedDict[bytes, bytes | None] = collections.OrderedDict()
        self._bytes = 0
        self._pending: dict[bytes, int] = {}
        self._dirty: set[bytes] = set()
        self._generation = 0
        self._confirmed_at = -math.inf  # send time of the last acknowledged heartbeat PING
        self._live = False
        self._retry_at = -math.inf  # when the heartbeat may try to reconnect
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._metrics = _Metrics(registry)
        self.tracking_client_id: int | None = None

    def __repr__(self) -> str:
        return f"CachedRedis({self._direct!r}, max_entries={self.settings.max_entries})"

    # ---------------------------------------------------------------------------- public

    def bind_metrics(self, serving_metrics: Any) -> None:
        """Register the cache's metrics in the endpoint's registry and flush them with its own
        (:class:`freshet.serving.metrics.ServingMetrics`)."""
        self._metrics = _Metrics(serving_metrics.registry)
        serving_metrics.add_flusher(self.flush_metrics)

    def flush_metrics(self) -> None:
        self._metrics.flush(self.tracking, len(self._entries), self._bytes)

    @property
    def tracking(self) -> bool:
        """Whether hits may be served now: tracking is up and confirmed within the bound."""
        return self._live and self._clock() - self._confirmed_at <= self._lease_s

    def stats(self) -> dict[str, int]:
        """Cumulative counts (hits, misses, invalidations, evictions, bypasses), entries, bytes."""
        return {**self._metrics.counts, "entries": len(self._entries), "bytes": self._bytes}

    async def mget(self, keys: list[bytes]) -> list[bytes | None]:
        """The records of ``keys`` (None: no record), from the cache where it may answer."""
        self._ensure_running()
        counts = self._metrics.counts
        if not self._live or self._clock() - self._confirmed_at > self._lease_s:
            counts["bypasses"] += len(keys)
            reply: list[bytes | None] = await self._direct.mget(keys)
            return reply
        entries = self._entries
        found = [entries.get(key, _ABSENT) for key in keys]
        missing = [key for key, value in zip(keys, found) if value is _ABSENT]  # noqa: B905
        counts["hits"] += len(keys) - len(missing)
        for key, value in zip(keys, found):  # noqa: B905
            if value is not _ABSENT:
                entries.move_to_end(key)
        if not missing:
            return found
        counts["misses"] += len(missing)
        generation = self._generation
        pending = self._pending
        for key in missing:
            pending[key] = pending.get(key, 0) + 1
        try:
            raws: list[bytes | None] = await self._tracked.mget(missing)
        except (RedisError, OSError):
            # The tracking connection failed (``_on_lost`` flushed the cache): answer directly.
            self._settle(missing, None, generation)
            counts["bypasses"] += len(missing)
            raws = await self._direct.mget(missing)
        except BaseException:
            self._settle(missing, None, generation)
            raise
        else:
            self._settle(missing, raws, generation)
        fetched = iter(raws)
        return [next(fetched) if value is _ABSENT else value for value in found]

    async def ping(self) -> bool:
        return bool(await self._direct.ping())

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
        self._flush()
        self._live = False
        await self._tracked.close()
        await self._direct.close()

    # ---------------------------------------------------------------------------- internals

    def _settle(self, keys: list[bytes], raws: list[bytes | None] | None, generation: int) -> None:
        """End the reads of ``keys``; store each reply unless its key went dirty meanwhile."""
        pending, dirty = self._pending, self._dirty
        store = raws is not None and generation == self._generation
        for i, key in enumerate(keys):
            left = pending[key] - 1
            was_dirty = key in dirty
            if left:
                pending[key] = left
            else:
                del pending[key]
                dirty.discard(key)
            if store and not was_dirty:
                assert raws is not None
                self._store(key, raws[i])

    def _store(self, key: bytes, raw: bytes | None) -> None:
        size = len(key) + (len(raw) if raw is not None else 0) + ENTRY_OVERHEAD
        if size > self.settings.max_bytes:
            return
        entries = self._entries
        old = entries.pop(key, _ABSENT)
        if old is not _ABSENT:
            self._bytes -= _size(key, old)
        entries[key] = raw
        self._bytes += size
        max_entries, max_bytes = self.settings.max_entries, self.settings.max_bytes
        while len(entries) > max_entries or self._bytes > max_bytes:
            evicted, value = entries.popitem(last=False)
            self._bytes -= _size(evicted, value)
            self._metrics.counts["evictions"] += 1

    def _on_push(self, message: list[Any]) -> None:
        if not message or message[0] != b"invalidate":
            return
        keys = message[1] if len(message) > 1 else None
        counts = self._metrics.counts
        if keys is None:  # FLUSHDB / FLUSHALL: every key
            counts["invalidations"] += len(self._entries)
            self._flush()
            return
        counts["invalidations"] += len(keys)
        entries, pending = self._entries, self._pending
        for key in keys:
            value = entries.pop(key, _ABSENT)
            if value is not _ABSENT:
                self._bytes -= _size(key, value)
            if key in pending:
                self._dirty.add(key)

    def _on_lost(self, error: Exception) -> None:
        if self._live:
            log.warning("cache tracking connection lost (%s); bypassing the cache", error)
        self._live = False
        self._confirmed_at = -math.inf
        self._retry_at = self._clock() + self.settings.retry_initial_s
        self._flush()

    def _flush(self) -> None:
        """Drop every entry; reads in flight are not stored (their generation is over)."""
        self._entries.clear()
        self._bytes = 0
        self._generation += 1

    def _ensure_running(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is loop and self._task is not None and not self._task.done():
            return
        if self._loop is not loop:
            # A new event loop (tests): the old tracking connection is gone with the old loop.
            self._live = False
            self._confirmed_at = -math.inf
            self._flush()
        self._loop = loop
        self._task = loop.create_task(self._maintain(), name="freshet-cache-tracking")

    async def _maintain(self) -> None:
        """Heartbeat the tracking connection; reconnect it with backoff when it fails."""
        delay = self.settings.retry_initial_s
        while True:
            wait = self._retry_at - self._clock()
            if not self._live and wait > 0:
                await asyncio.sleep(wait)  # backoff after a loss or a failed reconnect
            sent = self._clock()
            try:
                await self._tracked.ping()  # reconnects, tracking on, when the link is down
            except (RedisError, OSError) as exc:
                if self._live:
                    self._on_lost(exc)
                else:
                    self._retry_at = self._clock() + delay
                delay = min(delay * 2, self.settings.retry_max_s)
                continue
            delay = self.settings.retry_initial_s
            if not self._live:
                replies = self._tracked.setup_replies
                self.tracking_client_id = int(replies[-1]) if replies else None
                self._flush()  # nothing read before tracking was on may stay
                self._live = True
                log.info("cache tracking on (client id %s)", self.tracking_client_id)
                continue  # confirm with a heartbeat sent now that tracking is on
            self._confirmed_at = max(self._confirmed_at, sent)
            await asyncio.sleep(self._heartbeat_s)


def _size(key: bytes, raw: bytes | None) -> int:
    return len(key) + (len(raw) if raw is not None else 0) + ENTRY_OVERHEAD
