"""Throughput of ``freshet run`` as 1 process and as a 2-process Bytewax cluster (``-i/-a``).

``--events`` generated card transactions (event times spread over the hour before now, so
windows expire as in a catch-up) are produced once to a fresh 6-partition topic. Then, per
repeat and interleaved: (a) the limit — a plain confluent-kafka consumer reading the whole
topic (``consume(1000)``, no decoding); (b) one ``freshet run card_txn --stop-at-end``;
(c) two processes ``-i 0|1 -a "127.0.0.1:p0;127.0.0.1:p1"``, as two pods would run. Each flow
run writes into its own redis-server and offline dir; its rate is the events divided by the
time from the first Redis write (polled every 10 ms) to the exit of its last process (every
row written to both stores).

Usage::

    .venv/bin/python tests/bench/scale/bench_scale_out.py [--events 100000] [--cards 20000]
        [--repeats 3]

Prints each rate's median and range over the repeats (with 3 repeats a p99 is the worst run).

Needs the dev stack's Kafka (``freshet dev up``); starts its own redis-servers. Bounded: each
flow run is killed after 600 s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import redis
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from freshet.dsl.registry import get_view
from freshet.ops.generator import GeneratorConfig, produce

VIEW = get_view("card_txn")
BOOTSTRAP = os.environ.get("FRESHET_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
_FRESHET = [sys.executable, "-c", "import sys; from freshet.cli import main; sys.exit(main())"]
_MAX_RUN_S = 600.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def private_redis() -> Iterator[redis.Redis]:
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="bench-scale-redis-")
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    client = redis.Redis(port=port)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        yield client
    finally:
        client.close()
        proc.kill()
        proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def topics(*partitions: int) -> Iterator[list[str]]:
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    names = [f"bench-scale-{uuid.uuid4().hex[:8]}" for _ in partitions]
    futures = admin.create_topics(
        [NewTopic(n, p, 1) for n, p in zip(names, partitions, strict=True)]
    )
    for future in futures.values():
        future.result(timeout=30)
    try:
        yield names
    finally:
        for future in admin.delete_topics(names).values():
            future.result(timeout=30)


def raw_consume(topic: str, total: int) -> float:
    """Records/s of a plain consumer over the whole topic: the limit."""
    consumer = Consumer(
        {"bootstrap.servers": BOOTSTRAP, "group.id": "bench", "enable.auto.commit": "false"}
    )
    parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in parts])
    seen = 0
    started = time.perf_counter()
    deadline = time.monotonic() + _MAX_RUN_S
    while seen < total and time.monotonic() < deadline:
        seen += sum(1 for m in consumer.consume(1000, 1.0) if not m.error())
    elapsed = time.perf_counter() - started
    consumer.close()
    return seen / elapsed


def run_flow(topic: str, dlq: str, total: int, processes: int) -> float:
    """Events/s of ``processes`` flow processes, first Redis write to the last exit."""
    with private_redis() as client, tempfile.TemporaryDirectory() as offline:
        port = client.connection_pool.connection_kwargs["port"]
        env = {
            **os.environ,
            "FRESHET_KAFKA_BOOTSTRAP": BOOTSTRAP,
            "FRESHET_REDIS_URL": f"redis://127.0.0.1:{port}/0",
            "FRESHET_OFFLINE_DIR": offline,
        }
        base = [*_FRESHET, "run", VIEW.name, "--topic", topic, "--dead-letter-topic", dlq,
                "--stop-at-end", "--metrics-port", "0"]  # fmt: skip
        addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(processes))
        commands = (
            [base]
            if processes == 1
            else [[*base, "-i", str(i), "-a", addresses] for i in range(processes)]
        )
        procs = [
            subprocess.Popen(
                cmd,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
            for cmd in commands
        ]
        first = None
        deadline = time.monotonic() + _MAX_RUN_S
        try:
            while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
                if first is None and client.dbsize():
                    first = time.perf_counter()
                time.sleep(0.01)
            end = time.perf_counter()
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                p.wait()
        failed = [p for p in procs if p.returncode != 0]
        if failed or first is None:
            err = failed[0].stderr.read().decode()[-2000:] if failed and failed[0].stderr else ""
            raise RuntimeError(f"freshet run failed or timed out:\n{err}")
        for p in procs:
            if p.stderr:
                p.stderr.close()
    return total / (end - first)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--cards", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with topics(6, 1) as (topic, dlq):
        now = time.time_ns() // 1_000_000
        counts = produce(
            BOOTSTRAP, topic, view=VIEW, count=args.events, rate=args.events / 3600, pace=False,
            config=GeneratorConfig(cards=args.cards, seed=7), start_ms=now - 3_600_000,
            max_seconds=300,
        )  # fmt: skip
        total = counts.total
        results: dict[str, list[float]] = {"raw consume": [], "1 process": [], "2 processes": []}
        ratios: dict[str, list[float]] = {"1 process": [], "2 processes": []}
        for repeat in range(args.repeats):
            limit = raw_consume(topic, total)
            results["raw consume"].append(limit)
            for name, processes in (("1 process", 1), ("2 processes", 2)):
                rate = run_flow(topic, dlq, total, processes)
                results[name].append(rate)
                ratios[name].append(rate / limit)
            done = ", ".join(f"{k} {v[-1]:,.0f}/s" for k, v in results.items())
            print(f"repeat {repeat + 1}: {done}", flush=True)

    print(
        f"\n{total:,} events, 6 partitions, {args.cards:,} cards, {os.cpu_count()} cores, "
        f"{args.repeats} repeats: median [min - max]"
    )
    for name, values in results.items():
        line = (
            f"  {name:12s} {statistics.median(values):>9,.0f} events/s "
            f"[{min(values):,.0f} - {max(values):,.0f}]"
        )
        if name in ratios:
            r = ratios[name]
            line += (
                f"   ratio to raw consume {statistics.median(r):.3f} [{min(r):.3f} - {max(r):.3f}]"
            )
        print(line)
    speedup = [b / a for a, b in zip(results["1 process"], results["2 processes"], strict=True)]
    print(f"  2 processes / 1 process: median {statistics.median(speedup):.2f}x")


if __name__ == "__main__":
    main()
