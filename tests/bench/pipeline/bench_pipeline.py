"""End-to-end speed of ``freshet run``: Kafka -> decode -> engine -> Redis + Parquet.

Two measurements, each next to a limit measured in the same run on the same topic:

1. **Throughput per worker.** Generated card transactions (``--cards`` cards, Zipf) are
   produced to a fresh 3-partition topic per stream shape; then, per repeat, (a) a plain
   confluent-kafka consumer reads the topic with ``consume(1000)`` and decodes it with the
   view's decoder (the limit), (b) ``freshet run card_txn --stop-at-end -w 1`` processes the
   whole topic into a private Redis and a tmp offline dir. The flow's rate is counted from the
   first record read (``/metrics``) to the process exit (every row written to both stores).
   Two shapes (``--shapes``):

   * ``live``: a sustained stream, ``--events`` (default 1,000,000) records whose event times
     advance at ``--live-rate`` (default 50,000) events/s, i.e. what a topic fed at the target
     rate holds; the flow catches up on it. Each card sees an event every ~2 s, as it would.
   * ``hour``: ``--hour-events`` (default 200,000) records spread over the last hour (55
     events/s): a replay of a slow topic, where nearly every event opens new tiles and the
     5-minute windows of most cards expire during the run (1.5 rows per event).

2. **Freshness at a steady rate.** The flow tails a fresh topic while records are produced at
   ``--rate`` events/s for ``--seconds`` seconds; the flow's ``freshet_freshness_seconds``
   histogram (Kafka timestamp -> Redis write done) gives p50/p99, next to a plain consumer
   tailing the same topic (Kafka timestamp -> record received), the limit.

Usage::

    .venv/bin/python tests/bench/pipeline/bench_pipeline.py [--shapes live,hour]
        [--events 1000000] [--live-rate 50000] [--hour-events 200000] [--cards 100000]
        [--repeats 3] [--rate 5000] [--seconds 20] [--flow-args "-w 1"] [--skip-throughput]
        [--skip-freshness]

Needs the dev stack's Kafka (``freshet dev up``); starts its own redis-server.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from freshet.decode.decoder import decoder_for
from freshet.decode.messages import RawMessage
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
def private_redis() -> Iterator[str]:
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="bench-redis-")
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def topics(*partitions: int) -> Iterator[list[str]]:
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    names = [f"bench-pipeline-{uuid.uuid4().hex[:8]}" for _ in partitions]
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


def scrape(port: int) -> dict[str, float]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def histogram_quantile(metrics: dict[str, float], name: str, q: float) -> float | None:
    """Quantile ``q`` of a Prometheus histogram, linear within the bucket (as PromQL does)."""
    buckets = []
    for key, value in metrics.items():
        if key.startswith(f"{name}_bucket{{"):
            le = key.split('le="')[1].split('"')[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), value))
    buckets.sort()
    if not buckets or buckets[-1][1] == 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count or 1
            )
        lower_bound, lower_count = bound, count
    return None


def raw_consume_decode(topic: str, total: int) -> float:
    """Events/s of a plain consumer + the view's decoder over the whole topic."""
    decoder = decoder_for(VIEW)
    consumer = Consumer(
        {"bootstrap.servers": BOOTSTRAP, "group.id": "bench", "enable.auto.commit": "false"}
    )
    parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in parts])
    seen = 0
    started = time.perf_counter()
    deadline = time.monotonic() + _MAX_RUN_S
    while seen < total and time.monotonic() < deadline:
        batch = [RawMessage.from_confluent(m) for m in consumer.consume(1000, 1.0) if not m.error()]
        decoded = decoder.decode(batch)
        seen += len(decoded.events) + len(decoded.dead)
    elapsed = time.perf_counter() - started
    consumer.close()
    return seen / elapsed


def flow_env(redis_url: str, offline: Path) -> dict[str, str]:
    return {
        **os.environ,
        "FRESHET_KAFKA_BOOTSTRAP": BOOTSTRAP,
        "FRESHET_REDIS_URL": redis_url,
        "FRESHET_OFFLINE_DIR": str(offline),
    }


def run_flow_to_end(topic: str, dlq: str, total: int, redis_url: str, workers: list[str]) -> float:
    """Events/s of ``freshet run --stop-at-end`` from its first record read to its exit."""
    port = free_port()
    with tempfile.TemporaryDirectory() as offline:
        proc = subprocess.Popen(
            [*_FRESHET, "run", VIEW.name, "--topic", topic, "--dead-letter-topic", dlq,
             "--stop-at-end", "--metrics-port", str(port), *workers],
            env=flow_env(redis_url, Path(offline)), stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        first = None
        deadline = time.monotonic() + _MAX_RUN_S
        while proc.poll() is None and time.monotonic() < deadline:
            if first is None and scrape(port).get(f'freshet_events_in_total{{view="{VIEW.name}"}}'):
                first = time.perf_counter()
            time.sleep(0.01)
        if proc.poll() is None:
            proc.kill()
            raise RuntimeError(f"the flow did not finish in {_MAX_RUN_S:g} s")
        end = time.perf_counter()
        if proc.returncode != 0 or first is None:
            err = proc.stderr.read().decode()[-2000:] if proc.stderr else ""
            raise RuntimeError(f"freshet run failed ({proc.returncode}):\n{err}")
    return total / (end - first)


def throughput(args: argparse.Namespace) -> None:
    for shape in args.shapes:
        if shape == "live":
            count, rate = args.events, args.live_rate
        else:
            count, rate = args.hour_events, args.hour_events / 3600
        throughput_of(args, shape, count, rate)


def throughput_of(args: argparse.Namespace, shape: str, count: int, rate: float) -> None:
    with topics(3, 1) as (topic, dlq), private_redis() as redis_url:
        config = GeneratorConfig(cards=args.cards, seed=7)
        span_ms = int(count / rate * 1000)
        counts = produce(
            BOOTSTRAP, topic, view=VIEW, count=count, rate=rate, pace=False, config=config,
            start_ms=time.time_ns() // 1_000_000 - span_ms,
        )  # fmt: skip
        print(
            f"throughput, {shape} stream: {counts.total:,} records ({counts.late:,} late, "
            f"{counts.bad:,} malformed), event times at {rate:,.0f}/s over "
            f"{span_ms / 1000:,.0f} s, {args.cards:,} cards, 3 partitions, "
            f"freshet run {' '.join(args.workers)}"
        )
        raw, flow = [], []
        for i in range(args.repeats):
            raw.append(raw_consume_decode(topic, counts.total))
            flow.append(run_flow_to_end(topic, dlq, counts.total, redis_url, args.workers))
            print(
                f"  run {i + 1}: raw consume+decode {raw[-1]:>9,.0f} ev/s | flow "
                f"{flow[-1]:>8,.0f} ev/s | ratio {flow[-1] / raw[-1]:.3f}",
                flush=True,
            )
        ratios = sorted(f / r for f, r in zip(flow, raw, strict=True))
        print(
            f"  median: raw {statistics.median(raw):,.0f} ev/s, flow "
            f"{statistics.median(flow):,.0f} ev/s (all workers; best {max(flow):,.0f}, worst "
            f"{min(flow):,.0f}), ratio median {statistics.median(ratios):.3f}, worst "
            f"{ratios[0]:.3f} (target >= 50,000 ev/s/worker)"
        )


def _tail_latencies(topic: str, stop: threading.Event, out: list[float]) -> None:
    consumer = Consumer(
        {"bootstrap.servers": BOOTSTRAP, "group.id": "bench-tail", "enable.auto.commit": "false"}
    )
    parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in parts])
    while not stop.is_set():
        for msg in consumer.consume(1000, 0.05):
            if not msg.error():
                out.append(time.time() - msg.timestamp()[1] / 1000)
    consumer.close()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def freshness(args: argparse.Namespace) -> None:
    port = free_port()
    with (
        topics(3, 1) as (topic, dlq),
        private_redis() as redis_url,
        tempfile.TemporaryDirectory() as offline,
    ):
        proc = subprocess.Popen(
            [*_FRESHET, "run", VIEW.name, "--topic", topic, "--dead-letter-topic", dlq,
             "--metrics-port", str(port), *args.workers],
            env=flow_env(redis_url, Path(offline)), stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        stop = threading.Event()
        raw: list[float] = []
        tail = threading.Thread(target=_tail_latencies, args=(topic, stop, raw), daemon=True)
        try:
            deadline = time.monotonic() + 60
            while not scrape(port) and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(2)  # the flow's partitions are assigned once it serves metrics
            tail.start()
            config = GeneratorConfig(cards=args.cards, seed=8)
            counts = produce(
                BOOTSTRAP, topic, view=VIEW, count=int(args.rate * args.seconds),
                rate=args.rate, pace=True, config=config,
            )  # fmt: skip
            time.sleep(2)
            metrics = scrape(port)
        finally:
            stop.set()
            proc.kill()
            proc.wait()
        name = "freshet_freshness_seconds"
        view = f'view="{VIEW.name}"'
        only = {k.replace(f"{view},", "").replace(f",{view}", ""): v for k, v in metrics.items()}
        p50 = histogram_quantile(only, name, 0.50)
        p99 = histogram_quantile(only, name, 0.99)
        observed = metrics.get(f"{name}_count{{{view}}}", 0)
        print(
            f"freshness at {args.rate:,.0f} ev/s for {counts.seconds:.0f} s "
            f"({counts.total:,} records, {observed:,.0f} rows timed), {args.cards:,} cards:"
        )
        print(
            f"  flow (Kafka timestamp -> Redis write): p50 {p50 * 1000:.0f} ms, "
            f"p99 {p99 * 1000:.0f} ms (target p99 < 250 ms)"
            if p50 is not None and p99 is not None
            else "  flow: no freshness observed"
        )
        for what, hist in (
            ("Redis batch writes", "freshet_redis_write_seconds"),
            ("Parquet batch writes", "freshet_parquet_write_seconds"),
            ("engine shard snapshots", "freshet_state_snapshot_seconds"),
        ):
            q50 = histogram_quantile(only, hist, 0.5)
            q99 = histogram_quantile(only, hist, 0.99)
            n = metrics.get(f"{hist}_count{{{view}}}", 0)
            if q50 is not None and q99 is not None:
                print(f"  {what}: {n:,.0f}, p50 {q50 * 1000:.1f} ms, "
                      f"p99 {q99 * 1000:.1f} ms")  # fmt: skip
        pickled = metrics.get(f"freshet_state_entities_pickled_total{{{view}}}", 0)
        written = metrics.get(f"freshet_state_bytes_written_total{{{view}}}", 0)
        if pickled:
            print(
                f"  recovery state: {pickled:,.0f} states pickled for {counts.total:,} records, "
                f"{written / 1e6:,.1f} MB written ({written / max(pickled, 1):,.0f} B per state)"
            )
        if raw:
            print(
                f"  limit, plain consumer (Kafka timestamp -> received): p50 "
                f"{_percentile(raw, 0.5) * 1000:.0f} ms, p99 {_percentile(raw, 0.99) * 1000:.0f} ms"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--shapes", default="live,hour", help="stream shapes to measure: live, hour (see above)"
    )
    parser.add_argument("--events", type=int, default=1_000_000, help="records of the live shape")
    parser.add_argument("--live-rate", type=float, default=50_000)
    parser.add_argument("--hour-events", type=int, default=200_000)
    parser.add_argument("--cards", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rate", type=float, default=5_000)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument(
        "--flow-args", default="-w 1", help='extra "freshet run" arguments, e.g. "-p 2"'
    )
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-freshness", action="store_true")
    args = parser.parse_args()
    args.workers = shlex.split(args.flow_args)
    args.shapes = [shape.strip() for shape in args.shapes.split(",") if shape.strip()]
    if not set(args.shapes) <= {"live", "hour"}:
        parser.error(f"--shapes takes live and/or hour, not {args.shapes}")
    if not args.skip_throughput:
        throughput(args)
    if not args.skip_freshness:
        freshness(args)


if __name__ == "__main__":
    main()
