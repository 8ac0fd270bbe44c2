"""Writer throughput: one script call per row vs per 500 rows, next to raw pipelined SETs.

The limit is a pipelined ``SET key value PX ttl`` of the same encoded records (no version
check), measured in the same run on the same private Redis. Batches of 1,000 rows, like the
pipeline's sink batches; repeated runs, median and p99 of rows/s.

    .venv/bin/python tests/bench/serving/bench_redis_write.py [--rows 100000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import time

from _support import CARD_TXN, demo_rows, private_redis, quiet_machine_note, summary

from freshet.sinks.redis_store import RedisFeatureWriter, encode_record, record_key

BATCH = 1_000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    now = time.time_ns() // 1_000_000
    batches = [demo_rows(BATCH, now, start=s) for s in range(0, args.rows, BATCH)]
    ttl_ms = CARD_TXN.ttl_seconds * 1000
    rates: dict[str, list[float]] = {"raw SET pipeline": [], "1 row/call": [], "500 rows/call": []}
    with private_redis() as (_, client):
        for repeat in range(args.repeat):
            client.flushall()
            started = time.perf_counter()
            for batch in batches:
                pipe = client.pipeline(transaction=False)
                for row in batch:
                    pipe.set(
                        record_key(CARD_TXN, row.entity),
                        encode_record(row.as_of, row.offset, row.values),
                        px=ttl_ms,
                    )
                pipe.execute()
            rates["raw SET pipeline"].append(args.rows / (time.perf_counter() - started))
            for name, per_call in (("1 row/call", 1), ("500 rows/call", 500)):
                client.flushall()
                writer = RedisFeatureWriter(
                    client, {"card_txn": CARD_TXN}, max_rows_per_call=per_call
                )
                # Shift as_of so every run writes (newer-wins) rather than being refused.
                started = time.perf_counter()
                for batch in batches:
                    writer.write([r._replace(as_of=r.as_of + repeat) for r in batch])
                rates[name].append(args.rows / (time.perf_counter() - started))
    limit, _ = summary(rates["raw SET pipeline"])
    print(
        f"writer, {args.rows:,} demo rows in batches of {BATCH}, {args.repeat} runs; "
        f"{quiet_machine_note()}"
    )
    print(f"{'method':18} {'median rows/s':>14} {'p99 rows/s':>11} {'vs raw SET':>10}")
    for name, values in rates.items():
        median, p99 = summary(values)
        print(f"{name:18} {median:14,.0f} {p99:11,.0f} {median / limit:10.2f}")


if __name__ == "__main__":
    main()
