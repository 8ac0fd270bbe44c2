"""The hot-entity cache's rules without Redis: settings, what is stored when, and its bounds.

The tracking connection is replaced by a fake whose reads the test completes by hand, so
invalidations can be placed exactly between a read being sent and its answer."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from freshet.serving.cache import ENTRY_OVERHEAD, CachedRedis, CacheSettings, CacheSettingsError


class _Link:
    """Reads wait on futures the test resolves; answers come from ``store``."""

    def __init__(self) -> None:
        self.store: dict[bytes, bytes] = {}
        self.reads: list[tuple[list[bytes], asyncio.Future[list[bytes | None]]]] = []

    async def mget(self, keys: list[bytes]) -> list[bytes | None]:
        future: asyncio.Future[list[bytes | None]] = asyncio.get_running_loop().create_future()
        self.reads.append((keys, future))
        return await future

    def answer(self) -> None:
        keys, future = self.reads.pop(0)
        future.set_result([self.store.get(k) for k in keys])

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None


def _sync(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    @functools.wraps(test)
    def run() -> None:
        asyncio.run(test())

    return run


def _cache(**settings: Any) -> tuple[CachedRedis, _Link, _Link]:
    direct, tracked = _Link(), _Link()
    cache = CachedRedis("redis://127.0.0.1:1/0", settings=CacheSettings(enabled=True, **settings),
                        direct=direct, clock=lambda: 1.0)  # fmt: skip
    cache._tracked = tracked  # type: ignore[assignment]
    cache._live, cache._confirmed_at = True, 1.0  # tracking up and confirmed now
    cache._task = asyncio.get_running_loop().create_future()  # type: ignore[assignment]
    cache._loop = asyncio.get_running_loop()
    return cache, direct, tracked


def test_settings_are_off_by_default_and_read_from_the_environment() -> None:
    assert CacheSettings.from_env({}).enabled is False
    on = CacheSettings.from_env(
        {
            "FRESHET_CACHE": "on",
            "FRESHET_CACHE_MAX_ENTRIES": "10",
            "FRESHET_CACHE_MAX_BYTES": "4096",
        }
    )
    assert (on.enabled, on.max_entries, on.max_bytes) == (True, 10, 4096)
    with pytest.raises(CacheSettingsError, match="FRESHET_CACHE='maybe'"):
        CacheSettings.from_env({"FRESHET_CACHE": "maybe"})
    with pytest.raises(CacheSettingsError, match="FRESHET_CACHE_MAX_BYTES='0'"):
        CacheSettings.from_env({"FRESHET_CACHE_MAX_BYTES": "0"})


@_sync
async def test_a_read_is_stored_and_then_answered_from_memory_until_invalidated() -> None:
    cache, _, tracked = _cache()
    tracked.store[b"k"] = b"v1"
    read = asyncio.create_task(cache.mget([b"k", b"none"]))
    await asyncio.sleep(0)
    tracked.answer()
    assert await read == [b"v1", None]
    assert await cache.mget([b"k", b"none"]) == [b"v1", None]  # no read: the fake would hang
    cache._on_push([b"invalidate", [b"k"]])
    tracked.store[b"k"] = b"v2"
    read = asyncio.create_task(cache.mget([b"k"]))
    await asyncio.sleep(0)
    tracked.answer()
    assert await read == [b"v2"]
    assert cache.stats()["hits"] == 2
    assert cache.stats()["invalidations"] == 1


@_sync
async def test_an_invalidation_while_a_read_is_in_flight_keeps_its_answer_out_of_the_cache() -> (
    None
):
    cache, _, tracked = _cache()
    tracked.store[b"k"] = b"old"
    read = asyncio.create_task(cache.mget([b"k"]))
    await asyncio.sleep(0)
    tracked.answer()  # the reply is parsed ...
    cache._on_push([b"invalidate", [b"k"]])  # ... then an invalidation, before the coroutine runs
    assert await read == [b"old"]  # answered (it was current when read) ...
    assert cache.stats()["entries"] == 0  # ... but not kept
    tracked.store[b"k"] = b"new"
    read = asyncio.create_task(cache.mget([b"k"]))
    await asyncio.sleep(0)
    assert len(tracked.reads) == 1  # read again
    tracked.answer()
    assert await read == [b"new"]


@_sync
async def test_losing_tracking_flushes_and_bypasses_and_drops_reads_in_flight() -> None:
    cache, direct, tracked = _cache()
    tracked.store[b"k"] = direct.store[b"k"] = b"v"
    read = asyncio.create_task(cache.mget([b"k"]))
    await asyncio.sleep(0)
    cache._on_lost(ConnectionError("killed"))
    tracked.answer()
    assert await read == [b"v"]
    assert cache.stats()["entries"] == 0
    bypassed = asyncio.create_task(cache.mget([b"k"]))
    await asyncio.sleep(0)
    assert direct.reads
    direct.answer()
    assert await bypassed == [b"v"]
    assert cache.stats()["bypasses"] == 1


@_sync
async def test_entries_and_bytes_are_bounded_least_recently_used_first() -> None:
    cache, _, tracked = _cache(max_entries=3, max_bytes=10 * (ENTRY_OVERHEAD + 20))
    for i in range(5):
        tracked.store[b"k%d" % i] = b"x" * 10
    for i in range(3):
        read = asyncio.create_task(cache.mget([b"k%d" % i]))
        await asyncio.sleep(0)
        tracked.answer()
        await read
    assert await cache.mget([b"k0"]) == [b"x" * 10]  # k0 is now the most recently used
    read = asyncio.create_task(cache.mget([b"k3"]))
    await asyncio.sleep(0)
    tracked.answer()
    await read
    assert list(cache._entries) == [b"k2", b"k0", b"k3"]
    assert cache.stats()["evictions"] == 1
    assert cache.stats()["bytes"] == 3 * (2 + 10 + ENTRY_OVERHEAD)
    small, _, tracked = _cache(max_bytes=2 * (ENTRY_OVERHEAD + 12))
    for i in range(3):
        tracked.store[b"k%d" % i] = b"x" * 10
        read = asyncio.create_task(small.mget([b"k%d" % i]))
        await asyncio.sleep(0)
        tracked.answer()
        await read
    assert list(small._entries) == [b"k1", b"k2"]
