"""The endpoint's hot-entity cache on the real Redis: writers raced against lookups never see a
value replaced more than the documented bound earlier; a killed tracking connection flushes and
bypasses the cache until tracking is back."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import redis
from http_servers import running_server
from pipeline_harness import wait_until

from freshet.dsl.registry import get_view
from freshet.serving.app import FeatureApp
from freshet.serving.auth import ApiKeys
from freshet.serving.cache import TRACKING_CLIENT_NAME, CachedRedis, CacheSettings
from freshet.sinks.redis_store import RedisFeatureWriter, connect
from freshet.sinks.rows import Row

CARD_TXN = get_view("card_txn").layout()
LAYOUTS = {CARD_TXN.name: CARD_TXN}
BOUND_MS = 100  # CacheSettings.max_staleness_ms, the documented bound


def _row(entity: str, version: int, as_of: int) -> Row:
    return Row("card_txn", entity, as_of, (version, 10.0 * version, 10.0, 1.0, "m", 1), 0, version)


def _app(redis_url: str, settings: CacheSettings) -> tuple[FeatureApp, CachedRedis]:
    cache = CachedRedis(redis_url, settings=settings)
    app = FeatureApp(layouts=LAYOUTS, views_doc=[], redis_client=cache, api_keys=ApiKeys(()))
    return app, cache


@contextmanager
def _serving(redis_url: str, settings: CacheSettings) -> Iterator[tuple[str, CachedRedis]]:
    app, cache = _app(redis_url, settings)
    with running_server(app) as url:
        yield url, cache


def _metric(client: httpx.Client, name: str) -> float:
    text = client.get("/metrics").text
    found = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.M)
    assert found is not None, f"{name} not in /metrics"
    return float(found.group(1))


def _count(client: httpx.Client, entity: str) -> int | None:
    body = client.get(f"/v1/features/card_txn/{entity}").json()
    return body["features"]["txn_count_5m"] if body["found"] else None


def _race(url: str, redis_url: str, *, seconds: float = 2.0) -> tuple[list[str], int]:
    """Writers bump each entity's version (through the sink's writer) while readers look the
    entities up; returns the violations of the bound and the number of lookups checked.

    A lookup that started at ``s`` and returned version ``v`` violates the bound when the write
    of ``v + 1`` had been acknowledged before ``s - BOUND_MS``: the replacement happened no
    later than its acknowledgement, so the value was then replaced more than the bound before
    the lookup was answered."""
    entities = [f"hot_{i}" for i in range(8)]
    acked: dict[str, dict[int, float]] = {e: {} for e in entities}
    stop = threading.Event()
    base = time.time_ns() // 1_000_000 - 10_000
    seed = connect(redis_url)
    RedisFeatureWriter(seed, LAYOUTS).write([_row(e, 1, base) for e in entities])
    for e in entities:
        acked[e][1] = time.monotonic()

    def writer(mine: list[str]) -> None:
        client = connect(redis_url)
        sink = RedisFeatureWriter(client, LAYOUTS)
        version = 1
        try:
            while not stop.is_set() and version < 100_000:
                version += 1
                sink.write([_row(e, version, base + version) for e in mine])
                done = time.monotonic()
                for e in mine:
                    acked[e][version] = done
                time.sleep(0.01)  # a pace for the writers, not a wait for a condition
        finally:
            client.close()

    observed: list[tuple[str, float, int | None]] = []
    lock = threading.Lock()

    def reader() -> None:
        mine: list[tuple[str, float, int | None]] = []
        with httpx.Client(base_url=url, timeout=5) as client:
            i = 0
            while not stop.is_set() and i < 1_000_000:
                entity = entities[i % len(entities)]
                started = time.monotonic()
                mine.append((entity, started, _count(client, entity)))
                i += 1
        with lock:
            observed.extend(mine)

    threads = [threading.Thread(target=writer, args=(entities[i::2],)) for i in range(2)]
    threads += [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(seconds)  # the race's length, not a condition
    stop.set()
    for t in threads:
        t.join(timeout=30)
    seed.close()
    violations = []
    for entity, started, version in observed:
        assert version is not None, entity
        assert version in acked[entity], (entity, version)
        replaced = acked[entity].get(version + 1)
        if replaced is not None and replaced < started - BOUND_MS / 1000:
            late = (started - replaced) * 1000
            violations.append(f"{entity} v{version} served {late:.0f} ms after its replacement")
    return violations, len(observed)


def test_lookups_raced_against_writers_never_serve_a_value_replaced_beyond_the_bound(
    redis_url: str,
) -> None:
    with _serving(redis_url, CacheSettings(enabled=True, max_staleness_ms=BOUND_MS)) as (
        url,
        cache,
    ):
        with httpx.Client(base_url=url) as client:
            wait_until(lambda: _count(client, "x") is None and cache.tracking, timeout=5,
                       what="cache tracking", interval=0.01)  # fmt: skip
        violations, checked = _race(url, redis_url)
        stats = cache.stats()
    assert checked > 500
    assert not violations, f"{len(violations)} stale lookups, e.g. {violations[:3]}"
    # The cache was really used and really invalidated during the race.
    assert stats["hits"] > checked // 10, stats
    assert stats["invalidations"] > 100, stats


def test_the_race_check_catches_a_cache_that_ignores_invalidations(redis_url: str) -> None:
    """The check above can fail: the same race against a cache that drops invalidations."""
    settings = CacheSettings(enabled=True, max_staleness_ms=BOUND_MS)
    app, cache = _app(redis_url, settings)
    cache._on_push = lambda message: None  # type: ignore[method-assign]
    cache._tracked._on_push = cache._on_push  # the link was given the original handler
    with running_server(app) as url:
        with httpx.Client(base_url=url) as client:
            wait_until(lambda: _count(client, "x") is None and cache.tracking, timeout=5,
                       what="cache tracking", interval=0.01)  # fmt: skip
        violations, _ = _race(url, redis_url, seconds=1.0)
    assert violations


def _tracking_clients(admin: redis.Redis) -> list[dict[str, Any]]:
    return [c for c in admin.client_list() if c["name"] == TRACKING_CLIENT_NAME.decode()]


def test_a_killed_tracking_connection_flushes_and_bypasses_the_cache_until_it_is_back(
    redis_url: str, redis_client: redis.Redis
) -> None:
    writer = RedisFeatureWriter(redis_client, LAYOUTS)
    now = time.time_ns() // 1_000_000
    writer.write([_row("card_1", 1, now - 5_000)])
    # Reconnecting waits 1 s after the loss: long enough to observe the bypass.
    settings = CacheSettings(enabled=True, retry_initial_s=1.0, retry_max_s=1.0)
    with _serving(redis_url, settings) as (url, cache), httpx.Client(base_url=url) as client:
        metric: Callable[[str], float] = lambda name: _metric(client, name)  # noqa: E731
        wait_until(lambda: _count(client, "card_1") == 1 and cache.tracking, timeout=5,
                   what="cache tracking", interval=0.01)  # fmt: skip
        assert _count(client, "card_1") == 1
        hits = metric("freshet_cache_hits_total")
        assert _count(client, "card_1") == 1
        assert metric("freshet_cache_hits_total") == hits + 1
        assert metric("freshet_cache_tracking") == 1

        (tracked,) = _tracking_clients(redis_client)
        assert "t" in tracked["flags"]
        assert tracked["resp"] == "3"
        assert int(tracked["id"]) == cache.tracking_client_id
        redis_client.client_kill_filter(_id=tracked["id"])
        wait_until(lambda: not cache.tracking, timeout=5, what="the loss", interval=0.005)

        # Bypassed: the cache is empty and a new value is served at once, read directly.
        assert metric("freshet_cache_tracking") == 0
        assert metric("freshet_cache_entries") == 0
        bypasses, hits = metric("freshet_cache_bypasses_total"), metric("freshet_cache_hits_total")
        writer.write([_row("card_1", 2, now - 4_000)])
        assert _count(client, "card_1") == 2
        assert _count(client, "card_1") == 2
        assert metric("freshet_cache_bypasses_total") == bypasses + 2
        assert metric("freshet_cache_hits_total") == hits

        # Back: a new tracking connection, and hits and invalidations again.
        wait_until(lambda: cache.tracking, timeout=10, what="tracking back", interval=0.01)
        (again,) = _tracking_clients(redis_client)
        assert again["id"] != tracked["id"]
        assert "t" in again["flags"]
        assert _count(client, "card_1") == 2
        hits = metric("freshet_cache_hits_total")
        assert _count(client, "card_1") == 2
        assert metric("freshet_cache_hits_total") == hits + 1
        writer.write([_row("card_1", 3, now - 3_000)])
        written = time.monotonic()
        wait_until(lambda: _count(client, "card_1") == 3, timeout=5, what="v3", interval=0.001)
        assert time.monotonic() - written < BOUND_MS / 1000
