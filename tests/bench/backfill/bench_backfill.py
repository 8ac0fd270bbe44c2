"""Replay speed of ``freshet backfill``, next to limits measured in the same run on the same topic.

``--events`` generated card transactions (``--cards`` cards, Zipf) spread over 30 hours of
record time are produced to a fresh 3-partition topic (record timestamps on the schedule).
The backfill range is hours 25..29, so the plan replays from hour 0:45 (24 h 15 min of window
history) to 29:00 + lateness + grace: most of the topic. Per repeat:

(a) **raw**: a plain confluent-kafka consumer reads exactly the plan's offsets with
    ``consume(1000)`` and decodes them with the view's decoder — the limit;
(b) **backfill**: ``freshet backfill card_txn -p N`` (N processes of one worker each) for each
    ``--processes`` value, into a private Redis and a tmp offline dir; its rate is the records
    over the replay time the summary reports (first record read to the last row written, both
    stores, slowest process), per worker;
(c) **live** (unless ``--skip-live``): ``freshet run --stop-at-end -w 1`` over the whole topic,
    timed as ``tests/bench/pipeline/bench_pipeline.py`` does (first record read -> exit).

Prints each run and, per measurement, the median and p99 (over repeats) of events/s and of
the ratio to the raw rate of the same repeat.

Usage::

    .venv/bin/python tests/bench/backfill/bench_backfill.py [--events 200000] [--cards 50000]
        [--repeats 3] [--processes 1 2] [--skip-live]

Needs the dev stack's Kafka (``freshet dev up``); starts its own redis-server.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition

from freshet.backfill.plan import KafkaOffsets, plan_backfill
from freshet.decode.decoder import decoder_for
from freshet.decode.messages import RawMessage
from freshet.dsl.registry import get_view
from freshet.ops.generator import GeneratorConfig, TransactionStream

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pipeline"))
from bench_pipeline import private_redis, run_flow_to_end, topics

VIEW = get_view("card_txn")
BOOTSTRAP = os.environ.get("FRESHET_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
HOUR = 3_600_000
_FRESHET = [sys.executable, "-c", "import sys; from freshet.cli import main; sys.exit(main())"]
_MAX_RUN_S = 900.0


def produce_history(topic: str, count: int, cards: int, start_ms: int, hours: float) -> None:
    rate = count / (hours * 3600)
    step = 1000.0 / rate
    stream = TransactionStream(VIEW, GeneratorConfig(cards=cards, seed=7))
    producer = Producer(
        {"bootstrap.servers": BOOTSTRAP, "linger.ms": "20", "compression.type": "lz4"}
    )
    deadline = time.monotonic() + _MAX_RUN_S
    for i, rec in enumerate(stream.records(count, start_ms=start_ms, rate=rate)):
        while True:
            try:
                producer.produce(topic, rec.value, rec.key, timestamp=start_ms + int(i * step))
                break
            except BufferError:
                if time.monotonic() > deadline:
                    raise RuntimeError("Kafka stopped taking records") from None
                producer.poll(0.05)
        if i % 10_000 == 0:
            producer.poll(0)
    if producer.flush(60):
        raise RuntimeError("Kafka did not acknowledge every record")


def raw_consume_decode(topic: str, ranges: dict[int, tuple[int, int]]) -> tuple[int, float]:
    """(records, events/s) of a plain consumer + decoder over exactly ``ranges``."""
    decoder = decoder_for(VIEW)
    consumer = Consumer(
        {"bootstrap.servers": BOOTSTRAP, "group.id": "bench", "enable.auto.commit": "false"}
    )
    consumer.assign([TopicPartition(topic, p, lo) for p, (lo, hi) in ranges.items() if hi > lo])
    left = {p: hi for p, (lo, hi) in ranges.items() if hi > lo}
    seen = 0
    started = time.perf_counter()
    deadline = time.monotonic() + _MAX_RUN_S
    while left and time.monotonic() < deadline:
        batch = []
        for msg in consumer.consume(1000, 1.0):
            p = msg.partition()
            if msg.error() or p not in left or msg.offset() >= left[p]:
                continue
            batch.append(RawMessage.from_confluent(msg))
            if msg.offset() + 1 >= left[p]:
                del left[p]
        decoded = decoder.decode(batch)
        seen += len(decoded.events) + len(decoded.dead)
    elapsed = time.perf_counter() - started
    consumer.close()
    return seen, seen / elapsed


def run_backfill(topic: str, lo: int, hi: int, processes: int, redis_url: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as offline:
        env = {
            **os.environ,
            "FRESHET_KAFKA_BOOTSTRAP": BOOTSTRAP,
            "FRESHET_REDIS_URL": redis_url,
            "FRESHET_OFFLINE_DIR": offline,
        }
        proc = subprocess.run(
            [*_FRESHET, "backfill", VIEW.name, "--topic", topic, "--from", str(lo),
             "--to", str(hi), "--processes", str(processes), "--json"],
            env=env, capture_output=True, text=True, timeout=_MAX_RUN_S, check=False,
        )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"freshet backfill failed:\n{proc.stderr[-3000:]}")
    summary: dict[str, float] = json.loads(proc.stdout)
    return summary


def p99(values: list[float]) -> float:
    """The p99 of a speed: the rate 99 % of runs reach (the slow tail; with few repeats, the
    slowest)."""
    ordered = sorted(values)
    return ordered[round(0.01 * (len(ordered) - 1))]


def report(name: str, rates: list[float], raws: list[float]) -> None:
    ratios = [r / raw for r, raw in zip(rates, raws, strict=True)]
    print(
        f"  {name:<22} median {statistics.median(rates):>9,.0f} ev/s  p99 {p99(rates):>9,.0f}"
        f" | ratio to raw: median {statistics.median(ratios):.3f}, p99 {p99(ratios):.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--cards", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3)
    # --workers: this option's name before backfills had -p (one worker per process then too)
    parser.add_argument("--processes", "--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--skip-live", action="store_true")
    args = parser.parse_args()

    with topics(3, 1) as (topic, dlq), private_redis() as redis_url:
        start = time.time_ns() // 1_000_000 - 31 * HOUR
        produce_history(topic, args.events, args.cards, start, hours=30)
        lo, hi = start + 25 * HOUR, start + 29 * HOUR
        with KafkaOffsets({"bootstrap.servers": BOOTSTRAP}) as lookup:
            plan = plan_backfill(
                VIEW, lookup, from_ms=lo, to_ms=hi, now_ms=time.time_ns() // 1_000_000, topic=topic
            )
        ranges = {p.partition: (p.start, p.end) for p in plan.partitions}
        print(
            f"backfill bench: {args.events:,} records over 30 h, {args.cards:,} cards, "
            f"3 partitions; range hours 25..29 replays {plan.messages:,} records "
            f"({plan.messages / args.events:.0%})"
        )
        raws: list[float] = []
        backfills: dict[int, list[float]] = {w: [] for w in args.processes}
        lives: list[float] = []
        for i in range(args.repeats):
            n, raw = raw_consume_decode(topic, ranges)
            assert n == plan.messages, (n, plan.messages)
            raws.append(raw)
            line = f"  run {i + 1}: raw consume+decode {raw:>9,.0f} ev/s"
            for w in args.processes:
                summary = run_backfill(topic, lo, hi, w, redis_url)
                assert summary["consumed"] == plan.messages, summary
                per_worker = summary["events_per_second_per_worker"]
                backfills[w].append(per_worker)
                line += f" | backfill -p {w} {per_worker:>8,.0f} ev/s/worker"
            if not args.skip_live:
                lives.append(run_flow_to_end(topic, dlq, args.events, redis_url, ["-w", "1"]))
                line += f" | live run -w 1 {lives[-1]:>8,.0f} ev/s"
            print(line, flush=True)
        print(f"summary over {args.repeats} repeats (p99: the slow tail; of few, the slowest):")
        report("raw consume+decode", raws, raws)
        for w, rates in backfills.items():
            report(f"backfill per worker -p{w}", rates, raws)
        if lives:
            report("live run -w 1", lives, raws)


if __name__ == "__main__":
    main()
