"""Shared pieces of the serving benchmarks: a private redis-server, demo records, percentiles.

Benchmarks use their own Redis (a free loopback port, no persistence) so they neither disturb
the dev stack nor get disturbed by tests sharing it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence

import redis

from freshet.dsl.registry import get_view
from freshet.sinks.layout import ViewLayout
from freshet.sinks.redis_store import RedisFeatureWriter
from freshet.sinks.rows import Row

__all__ = [
    "CARD_TXN",
    "demo_rows",
    "entity",
    "free_port",
    "percentile",
    "private_redis",
    "summary",
    "write_demo",
]

CARD_TXN: ViewLayout = get_view("card_txn").layout()


def entity(i: int) -> str:
    # 12 digits: redis-benchmark's __rand_int__ placeholder expands to 12 digits.
    return f"card_{i:012d}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def private_redis() -> Iterator[tuple[int, redis.Redis]]:
    """A throwaway redis-server on a free port: ``(port, client)``; killed on exit."""
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="freshet-bench-redis-")
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("private redis-server did not start") from None
            time.sleep(0.02)
    try:
        yield port, client
    finally:
        client.close()
        proc.kill()
        proc.wait(timeout=10)


def demo_rows(n: int, as_of: int, *, start: int = 0) -> list[Row]:
    """Realistic demo-view rows: counts, sums with cents, a mean, a max, a merchant id."""
    rows = []
    for i in range(start, start + n):
        count = 1 + i % 17
        total = round(12.37 * count + (i % 100) / 100, 2)
        rows.append(
            Row(
                "card_txn",
                entity(i),
                as_of - (i % 5_000),
                (count, total, total / count, round(total / 2 + 3.5, 2), f"m_{i % 2_000:05d}",
                 1 + i % 7),
                i % 3,
                1_000_000 + i,
            )
        )  # fmt: skip
    return rows


def write_demo(client: redis.Redis, n: int, batch: int = 1_000) -> float:
    """Write ``n`` demo entities with the sink's writer; returns rows/s."""
    writer = RedisFeatureWriter(client, {"card_txn": CARD_TXN})
    now = time.time_ns() // 1_000_000
    started = time.perf_counter()
    for start in range(0, n, batch):
        writer.write(demo_rows(min(batch, n - start), now, start=start))
    return n / (time.perf_counter() - started)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]


def summary(values: Sequence[float]) -> tuple[float, float]:
    """(median, p99) of repeated measurements."""
    ordered = sorted(values)
    return statistics.median(ordered), percentile(ordered, 99)


def quiet_machine_note() -> str:
    load1, load5, _ = os.getloadavg()
    return f"load average {load1:.2f} (1 min), {load5:.2f} (5 min) on {os.cpu_count()} cores"
