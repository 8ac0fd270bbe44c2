"""Bytes per entity of the demo view in Redis (``MEMORY USAGE`` and ``used_memory`` delta).

Compares the store's layout (one string: 16-byte header + orjson values, TTL set) with the
same values as a Redis hash per entity (a field per feature plus ``as_of``), the layout many
feature stores use. Feast's Redis layout was measured at ~280 B for ten features.

    .venv/bin/python tests/bench/serving/bench_redis_memory.py [--entities 20000]
"""

from __future__ import annotations

import argparse
import statistics
import time

import orjson
import redis
from _support import CARD_TXN, demo_rows, private_redis, write_demo

from freshet.sinks.layout import ViewLayout
from freshet.sinks.redis_store import RedisFeatureWriter, record_key

FEAST_BYTES_10_FEATURES = 280


def _measure(client: redis.Redis, keys: list[bytes]) -> tuple[float, float]:
    usage = [client.memory_usage(k, samples=0) for k in keys[:: max(1, len(keys) // 2_000)]]
    return statistics.mean(usage), statistics.median(usage)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entities", type=int, default=20_000)
    n = parser.parse_args().entities
    with private_redis() as (_, client):
        results = []
        base = client.info("memory")["used_memory"]
        write_demo(client, n)
        used = client.info("memory")["used_memory"] - base
        keys = [record_key(CARD_TXN, f"card_{i:012d}") for i in range(n)]
        mean, median = _measure(client, keys)
        value_len = statistics.mean(client.strlen(k) for k in keys[:1_000])
        results.append(("string + orjson, TTL (freshet)", mean, median, used / n, value_len))

        client.flushall()
        no_ttl = ViewLayout(CARD_TXN.name, CARD_TXN.version, CARD_TXN.entity, CARD_TXN.features, 0)
        writer = RedisFeatureWriter(client, {"card_txn": no_ttl})
        base = client.info("memory")["used_memory"]
        now = time.time_ns() // 1_000_000
        for start in range(0, n, 1_000):
            writer.write(demo_rows(min(1_000, n - start), now, start=start))
        used = client.info("memory")["used_memory"] - base
        mean, median = _measure(client, keys)
        results.append(("string + orjson, no TTL", mean, median, used / n, value_len))

        client.flushall()
        base = client.info("memory")["used_memory"]
        pipe = client.pipeline(transaction=False)
        for row in demo_rows(n, now):
            key = b"fsh:card_txn:1:{" + row.entity.encode() + b"}"
            mapping = {"as_of": row.as_of, "offset": row.offset}
            mapping.update(
                {
                    name: orjson.dumps(v)
                    for name, v in zip(CARD_TXN.feature_names, row.values, strict=True)
                }
            )
            pipe.hset(key, mapping=mapping)
            pipe.pexpire(key, CARD_TXN.ttl_seconds * 1000)
        pipe.execute()
        used = client.info("memory")["used_memory"] - base
        hkeys = [b"fsh:card_txn:1:{card_%012d}" % i for i in range(n)]
        mean, median = _measure(client, hkeys)
        results.append(("hash per entity, TTL", mean, median, used / n, float("nan")))

    print(f"demo view card_txn: {len(CARD_TXN.features)} features, {n:,} entities, Redis 7")
    print(
        f"{'layout':34} {'MEMORY USAGE mean':>18} {'median':>8} "
        f"{'used_memory/entity':>19} {'value B':>8}"
    )
    for name, mean, median, per, vlen in results:
        print(f"{name:34} {mean:18.1f} {median:8.0f} {per:19.1f} {vlen:8.1f}")
    ours = results[0][1]
    print(
        f"freshet: {ours:.0f} B/entity for 6 features ({ours / 6:.1f} B/feature); "
        f"Feast ~{FEAST_BYTES_10_FEATURES} B for 10 features "
        f"({FEAST_BYTES_10_FEATURES / 10:.0f} B/feature)"
    )


if __name__ == "__main__":
    main()
