"""``approx_percentile`` rows are reproducible end to end, against the real Kafka and Redis.

One topic of four hours of card history (six cards, so each card's hour windows and lifetime
hold hundreds of amounts: past the exact range, the sketch is what is read) goes through
``freshet run --stop-at-end`` twice, with different ``--batch-size`` and ``--shards`` and
offline dirs of their own, and through ``freshet backfill`` of an hour in the middle: every
offline row of the percentile view (``percentile_views.py``, loaded via ``FRESHET_VIEWS``) is
bit-identical across the runs, and the backfill's rows equal the live rows of its range (in
the windowed features: a backfill's lifetime features count only the history it replays).
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Producer
from percentile_views import PCT_TXN
from pipeline_harness import FlowProcess, read_topic

from freshet.decode.decoder import decoder_for
from freshet.dsl.definitions import FeatureView
from freshet.dsl.views import CARD_TXN
from freshet.engine.aggregations import EXACT_QUANTILE_LIMIT
from freshet.ops.generator import GeneratorConfig, TransactionStream
from freshet.sinks.parquet_log import read_log

HOUR = 3_600_000
VIEWS_FILE = Path(__file__).with_name("percentile_views.py")
_FRESHET = [sys.executable, "-c", "import sys; from freshet.cli import main; sys.exit(main())"]

# (entity, as_of ms, values, partition, offset), values with floats as their bit patterns.
LogRow = tuple[str, int, tuple[Any, ...], int, int]


def _bits(value: Any) -> Any:
    """A float as its IEEE 754 bits (so 0.0 and -0.0 differ, as "bit-identical" means)."""
    return struct.pack("<d", value) if isinstance(value, float) else value


def log_rows(root: Path, view: FeatureView) -> list[LogRow]:
    names = view.layout().feature_names
    table = read_log(root, view.name, version=view.version)
    return sorted(
        (
            r["entity"],
            int(r["as_of"].timestamp() * 1000),
            tuple(_bits(r[n]) for n in names),
            r["partition"],
            r["offset"],
        )
        for r in table.to_pylist()
    )


def settled(
    rows: dict[tuple[str, int], LogRow], last_event: dict[str, int]
) -> dict[tuple[str, int], LogRow]:
    """The rows no wall-clock timer decides: as of before each card's last event time minus
    the lateness. A live run that stops at the end of the topic emits the expiry rows of the
    boundaries after that only if their timer fires before the run ends (DESIGN "Clocks"),
    which depends on how fast the run was, not on its batches or shards."""
    lateness = PCT_TXN.allowed_lateness_seconds * 1000
    return {k: r for k, r in rows.items() if k[1] < last_event[k[0]] - lateness}


def coalesced(rows: list[LogRow]) -> dict[tuple[str, int], LogRow]:
    """The last row (highest offset) per ``(entity, as_of)``: DESIGN.md lets rows with the
    same ``(entity, as_of)`` be coalesced, which may depend on batch boundaries."""
    last: dict[tuple[str, int], LogRow] = {}
    for row in rows:  # sorted: the highest offset comes last
        last[row[0], row[1]] = row
    return last


def produce(bootstrap: str, topic: str, *, count: int, start_ms: int, hours: float) -> None:
    """``count`` events of six cards over ``hours``, Kafka timestamps on their schedule."""
    rate = count / (hours * 3600)
    stream = TransactionStream(
        CARD_TXN, GeneratorConfig(cards=6, seed=14, late_fraction=0.01, bad_fraction=0.005)
    )
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": "20", "enable.idempotence": True}
    )
    step = 1000.0 / rate
    for i, rec in enumerate(stream.records(count, start_ms=start_ms, rate=rate)):
        producer.produce(topic, rec.value, rec.key, timestamp=start_ms + int(i * step))
        if i % 1000 == 0:
            producer.poll(0)
    assert producer.flush(30) == 0, "Kafka did not take every record"


def freshet(args: list[str], env: dict[str, str], *, timeout: float = 120) -> str:
    proc = subprocess.run(
        [*_FRESHET, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, f"freshet {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_percentile_rows_are_identical_across_batch_sizes_shards_and_backfill(
    kafka_bootstrap: str, redis_url: str, topic_factory: Callable[..., str], tmp_path: Path
) -> None:
    topic, dlq = topic_factory(3), topic_factory(1)
    start = time.time_ns() // 1_000_000 - 5 * HOUR
    produce(kafka_bootstrap, topic, count=6_000, start_ms=start, hours=4)

    def env(offline: Path) -> dict[str, str]:
        return {
            **os.environ,
            "FRESHET_KAFKA_BOOTSTRAP": kafka_bootstrap,
            "FRESHET_REDIS_URL": redis_url,
            "FRESHET_OFFLINE_DIR": str(offline),
            "FRESHET_VIEWS": str(VIEWS_FILE),
        }

    runs: list[list[LogRow]] = []
    for name, batch_size, shards in (("a", 7, 1), ("b", 10_000, 64)):
        offline = tmp_path / f"offline-{name}"
        args = [
            PCT_TXN.name, "--topic", topic, "--dead-letter-topic", dlq, "--metrics-port", "0",
            "--stop-at-end", "--batch-size", str(batch_size), "--shards", str(shards),
        ]  # fmt: skip
        flow = FlowProcess(args, env=env(offline), log=tmp_path / f"run-{name}.log")
        assert flow.wait(timeout=120) == 0, flow.output()
        runs.append(log_rows(offline, PCT_TXN))
    first, second = runs
    assert len(first) > 5_000
    # The sketch is read, not just the exact range: hour windows and lifetimes hold hundreds.
    counts = [row[2][0] for row in first]
    assert max(counts) > 2 * EXACT_QUANTILE_LIMIT, max(counts)
    last_event: dict[str, int] = {}
    for entity, t, *_ in decoder_for(PCT_TXN).decode(read_topic(kafka_bootstrap, topic)).events:
        last_event[entity] = max(t, last_event.get(entity, t))
    assert settled(coalesced(first), last_event) == settled(coalesced(second), last_event)
    assert len(settled(coalesced(first), last_event)) > 0.95 * len(coalesced(first))

    lo, hi = start + 2 * HOUR, start + 3 * HOUR
    summary = orjson.loads(
        freshet(
            ["backfill", PCT_TXN.name, "--topic", topic, "--from", str(lo), "--to", str(hi),
             "--batch-size", "500", "--json"],
            env(tmp_path / "offline-backfill"),
        )
    )  # fmt: skip
    assert summary["complete"], summary
    # A backfill replays the range plus the longest window before it, so lifetime features
    # other than `last` count only that (flows/backfill/plan.py, its plan warns): compare the
    # windowed ones.
    windowed = [i for i, f in enumerate(PCT_TXN.features) if f.window is not None]

    def in_range(rows: dict[tuple[str, int], LogRow]) -> dict[tuple[str, int], LogRow]:
        return {
            k: (*r[:2], tuple(r[2][i] for i in windowed), *r[3:])
            for k, r in rows.items()
            if lo <= k[1] <= hi
        }

    live = in_range(coalesced(first))
    assert len(live) > 1_000
    assert in_range(coalesced(log_rows(tmp_path / "offline-backfill", PCT_TXN))) == live
