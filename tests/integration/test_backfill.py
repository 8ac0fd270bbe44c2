"""``freshet backfill`` against the real Kafka and Redis.

Each test produces 30 hours of synthetic card history (``freshet.ops.generator``) to its own topic,
with record timestamps on the stream's schedule (as a producer sending each event as it
happens would), and runs ``freshet run`` / ``freshet backfill`` as real processes. The range
backfilled lies in the middle, more than the longest window (24 h + 15 min) after the start, so
the replay must fetch its window history from the right offsets. Every card has events after
the range, so the live flow has emitted every row of the range and the comparison is exact.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import redis
from confluent_kafka import Producer
from pipeline_harness import FlowProcess, Reference, read_topic, redis_records

from freshet.dsl.definitions import Aggregation, Feature, FeatureView
from freshet.dsl.views import CARD_TXN
from freshet.ops.generator import GeneratorConfig, TransactionStream
from freshet.ops.processes import cluster_addresses
from freshet.sinks.parquet_log import read_log, segment_paths
from freshet.sinks.redis_store import record_key

HOUR = 3_600_000
LATENESS_MS = CARD_TXN.allowed_lateness_seconds * 1000
_FRESHET = [sys.executable, "-c", "import sys; from freshet.cli import main; sys.exit(main())"]

# (entity, as_of ms, values, partition, offset): a log row as the reader returns it
LogRow = tuple[str, int, tuple[Any, ...], int, int]


def produce_history(
    bootstrap: str, topic: str, *, count: int, start_ms: int, hours: float, seed: int
) -> None:
    """``count`` card events over ``hours`` from ``start_ms``; each record's Kafka timestamp is
    its scheduled send time (event times lag it by up to 2 s; late records are older)."""
    rate = count / (hours * 3600)
    step = 1000.0 / rate
    stream = TransactionStream(
        CARD_TXN, GeneratorConfig(cards=40, seed=seed, late_fraction=0.01, bad_fraction=0.005)
    )
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": "20", "enable.idempotence": True}
    )
    for i, rec in enumerate(stream.records(count, start_ms=start_ms, rate=rate)):
        producer.produce(topic, rec.value, rec.key, timestamp=start_ms + int(i * step))
        if i % 1000 == 0:
            producer.poll(0)
    assert producer.flush(30) == 0, "Kafka did not take every record"


def env_of(bootstrap: str, redis_url: str, offline_dir: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "FRESHET_KAFKA_BOOTSTRAP": bootstrap,
        "FRESHET_REDIS_URL": redis_url,
        "FRESHET_OFFLINE_DIR": str(offline_dir),
        **extra,
    }


def freshet(args: list[str], env: dict[str, str], *, timeout: float = 180) -> str:
    """Run ``freshet ARGS``; returns stdout, fails the test with the output on an error."""
    proc = subprocess.run(
        [*_FRESHET, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, f"freshet {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def backfill(view: str, topic: str, lo: int, hi: int, env: dict[str, str], *extra: str) -> Any:
    out = freshet(
        ["backfill", view, "--topic", topic, "--from", str(lo), "--to", str(hi), "--json", *extra],
        env,
    )
    return orjson.loads(out)


def run_live(view: FeatureView, topic: str, dlq: str, env: dict[str, str], log: Path) -> None:
    args = [view.name, "--topic", topic, "--dead-letter-topic", dlq, "--metrics-port", "0"]
    flow = FlowProcess([*args, "--stop-at-end", "--snapshot-interval", "1"], env=env, log=log)
    code = flow.wait(timeout=180)
    assert code == 0, flow.output()


def as_rows(records: Iterable[dict[str, Any]], view: FeatureView) -> list[LogRow]:
    names = view.layout().feature_names
    return sorted(
        (
            r["entity"],
            int(r["as_of"].timestamp() * 1000),
            tuple(r[n] for n in names),
            r["partition"],
            r["offset"],
        )
        for r in records
    )


def log_rows(root: Path, view: FeatureView, *, dedupe: bool = True) -> list[LogRow]:
    """The view version's whole log through the reader."""
    table = read_log(root, view.name, version=view.version, dedupe=dedupe)
    return as_rows(table.to_pylist(), view)


def backfill_rows(root: Path, view: FeatureView) -> list[LogRow]:
    """Only what backfills wrote (writer ids ``bf…``), every row as stored (no dedupe)."""
    paths = [p for p in segment_paths(root, view.name, view.version) if p.name.startswith("bf")]
    return as_rows((r for p in paths for r in pq.read_table(p).to_pylist()), view)


def reference_row_counts(ref: Reference, lo: int, hi: int) -> Counter[LogRow]:
    """The reference's rows in ``[lo, hi]``, each with how often the engine emits it: twice
    when an event lies exactly on an expiry boundary (its event row, then the identical
    expiry row), once otherwise."""
    rows = [r for rs in [*ref.applied.values(), *ref.flushed.values()] for r in rs]
    return Counter(
        (r.entity, r.as_of, r.values, r.partition, r.offset) for r in rows if lo <= r.as_of <= hi
    )


def reference_rows(ref: Reference, lo: int, hi: int) -> set[LogRow]:
    return set(reference_row_counts(ref, lo, hi))


def written_more_often_than_emitted(
    rows: list[LogRow], ref: Reference, lo: int, hi: int
) -> list[LogRow]:
    """Rows the log holds more often than the reference engine emits them (none: every row
    once, without the reader's dedupe)."""
    emitted = reference_row_counts(ref, lo, hi)
    return [row for row, n in Counter(rows).items() if n > emitted[row]]


def in_range(rows: Iterable[LogRow], lo: int, hi: int) -> list[LogRow]:
    return [r for r in rows if lo <= r[1] <= hi]


def history(
    bootstrap: str, topic_factory: Callable[..., str], *, count: int, seed: int
) -> tuple[str, int, int, int]:
    """A topic with 30 h of history ending an hour ago; returns ``(topic, start, lo, hi)`` where
    ``[lo, hi]`` is the hour starting 26 h in (every card has events after it)."""
    topic = topic_factory(3)
    start = (time.time_ns() // 1_000_000) - 31 * HOUR
    produce_history(bootstrap, topic, count=count, start_ms=start, hours=30, seed=seed)
    return topic, start, start + 26 * HOUR, start + 27 * HOUR


def check_cards_outlive_the_range(ref: Reference, hi: int) -> None:
    early = [e for e, t in ref.max_event_time.items() if t <= hi + LATENESS_MS + 60_000]
    assert not early, f"cards without events after the range (pick another seed): {early}"


def test_backfill_of_a_middle_range_equals_the_live_rows_and_never_regresses_redis(
    kafka_bootstrap: str,
    redis_url: str,
    redis_client: redis.Redis,
    topic_factory: Callable[..., str],
    offline_dir: Path,
    tmp_path: Path,
) -> None:
    topic, _, lo, hi = history(kafka_bootstrap, topic_factory, count=12_000, seed=5)
    ref = Reference.of(CARD_TXN, read_topic(kafka_bootstrap, topic))
    check_cards_outlive_the_range(ref, hi)
    env = env_of(kafka_bootstrap, redis_url, offline_dir)
    run_live(CARD_TXN, topic, topic_factory(1), env, tmp_path / "live.log")
    live = log_rows(offline_dir, CARD_TXN)
    cards = sorted(ref.applied)
    served = redis_records(redis_client, CARD_TXN, cards)
    assert set(served) == set(cards)
    # Two cards lose their record (expired, say): the backfill may write those.
    gone = cards[-2:]
    redis_client.delete(*(record_key(CARD_TXN.layout(), card) for card in gone))

    summary = backfill(CARD_TXN.name, topic, lo, hi, env)

    mine = backfill_rows(offline_dir, CARD_TXN)
    expected = in_range(live, lo, hi)
    assert len(expected) > 500
    assert set(mine) == set(expected), "backfilled rows differ from the live rows of the range"
    assert set(mine) == reference_rows(ref, lo, hi)
    assert summary["rows_offline"] == len(mine)
    # Through the reader, every row is there once: the log is exactly what it was.
    assert log_rows(offline_dir, CARD_TXN) == live
    # Redis: the newer values served before are untouched; the lost ones hold the newest row of
    # the range, which is older than what had been served.
    after = redis_records(redis_client, CARD_TXN, cards)
    assert {c: after[c] for c in cards if c not in gone} == {
        c: served[c] for c in cards if c not in gone
    }
    for card in gone:
        newest = max((r for r in expected if r[0] == card), key=lambda r: (r[1], r[4]))
        assert after[card] == (newest[1], newest[4], newest[2])
        assert after[card][0] < served[card][0]


def test_running_the_same_backfill_twice_changes_nothing(
    kafka_bootstrap: str,
    redis_url: str,
    redis_client: redis.Redis,
    topic_factory: Callable[..., str],
    offline_dir: Path,
) -> None:
    topic, _, lo, hi = history(kafka_bootstrap, topic_factory, count=6_000, seed=7)
    ref = Reference.of(CARD_TXN, read_topic(kafka_bootstrap, topic))
    check_cards_outlive_the_range(ref, hi)
    env = env_of(kafka_bootstrap, redis_url, offline_dir)

    first = backfill(CARD_TXN.name, topic, lo, hi, env)
    log_once = log_rows(offline_dir, CARD_TXN, dedupe=False)
    segments_once = segment_paths(offline_dir, CARD_TXN.name)
    redis_once = {k: redis_client.get(k) for k in redis_client.keys("*")}
    second = backfill(CARD_TXN.name, topic, lo, hi, env, "--workers", "2")

    assert set(log_once) == reference_rows(ref, lo, hi)
    assert first["rows_offline"] == second["rows_offline"] == len(log_once)
    # Even without the reader's dedupe, the log holds the same rows: the second run's segments
    # replaced the first's (in two workers' segments now).
    assert log_rows(offline_dir, CARD_TXN, dedupe=False) == log_once
    assert not set(segment_paths(offline_dir, CARD_TXN.name)) & set(segments_once)
    assert {k: redis_client.get(k) for k in redis_client.keys("*")} == redis_once
    assert second["consumed"] == first["consumed"] > 0


V2 = replace(
    CARD_TXN,
    version=2,
    features=(
        *CARD_TXN.features,
        Feature("amount_min_1h", Aggregation.MIN, "amount", window="1h"),
    ),
)


def test_a_new_view_version_backfills_into_its_own_key_space_and_log_beside_the_old_one(
    kafka_bootstrap: str,
    redis_url: str,
    redis_client: redis.Redis,
    topic_factory: Callable[..., str],
    offline_dir: Path,
    tmp_path: Path,
) -> None:
    topic, _, lo, hi = history(kafka_bootstrap, topic_factory, count=6_000, seed=7)
    messages = read_topic(kafka_bootstrap, topic)
    ref_v1, ref_v2 = Reference.of(CARD_TXN, messages), Reference.of(V2, messages)
    check_cards_outlive_the_range(ref_v1, hi)
    views_module = tmp_path / "team_views.py"
    views_module.write_text(
        "from dataclasses import replace\n"
        "from freshet.dsl.definitions import Aggregation, Feature\n"
        "from freshet.dsl.views import CARD_TXN\n"
        "CARD_TXN_V2 = replace(CARD_TXN, version=2, features=(*CARD_TXN.features,\n"
        "    Feature('amount_min_1h', Aggregation.MIN, 'amount', window='1h')))\n"
    )
    env = env_of(kafka_bootstrap, redis_url, offline_dir, FRESHET_VIEWS=str(views_module))
    backfill("card_txn@1", topic, lo, hi, env)
    v1_log = log_rows(offline_dir, CARD_TXN, dedupe=False)
    cards = sorted(ref_v1.applied)
    v1_redis = redis_records(redis_client, CARD_TXN, cards)

    summary = backfill("card_txn", topic, lo, hi, env)  # the newest version: 2

    assert (summary["view"], summary["version"]) == ("card_txn", 2)
    v2_log = log_rows(offline_dir, V2, dedupe=False)
    assert set(v2_log) == reference_rows(ref_v2, lo, hi)
    assert all(len(values) == len(V2.features) for _, _, values, _, _ in v2_log)
    assert log_rows(offline_dir, CARD_TXN, dedupe=False) == v1_log  # v1's log untouched
    assert set(v1_log) == reference_rows(ref_v1, lo, hi)
    assert redis_records(redis_client, CARD_TXN, cards) == v1_redis  # v1 keeps serving its own
    v2_redis = redis_records(redis_client, V2, cards)
    assert set(v2_redis) == {r[0] for r in v2_log}
    keys = Counter(k.split(b":")[2] for k in redis_client.keys("fs:card_txn:*"))
    assert keys == {b"1": len(v1_redis), b"2": len(v2_redis)}

    listed = orjson.loads(freshet(["views", "--json"], env))
    assert [(v["name"], v["version"]) for v in listed if v["name"] == "card_txn"] == [
        ("card_txn", 1),
        ("card_txn", 2),
    ]
    assert "amount_min_1h" in [f["name"] for f in listed[1]["features"]]


def test_dry_run_prints_the_offset_plan_and_writes_nothing(
    kafka_bootstrap: str,
    redis_url: str,
    redis_client: redis.Redis,
    topic_factory: Callable[..., str],
    offline_dir: Path,
) -> None:
    topic, _, lo, hi = history(kafka_bootstrap, topic_factory, count=3_000, seed=7)
    env = env_of(kafka_bootstrap, redis_url, offline_dir)
    messages = read_topic(kafka_bootstrap, topic)

    plan = backfill(CARD_TXN.name, topic, lo, hi, env, "--dry-run")
    table = freshet(
        ["backfill", "card_txn", "--topic", topic, "--from", str(lo), "--to", str(hi), "--dry-run"],
        env,
    )

    replay_from = lo - (24 * 3600 + 15 * 60) * 1000 - 10_000
    replay_until = hi + LATENESS_MS + 10_000
    assert (plan["replay_from_ms"], plan["replay_until_ms"]) == (replay_from, replay_until)
    for part in plan["partitions"]:
        stamps = [m.timestamp[1] for m in messages if m.partition == part["partition"]]
        inside = [i for i, t in enumerate(stamps) if replay_from <= t < replay_until]
        assert (part["start"], part["end"]) == (inside[0], inside[-1] + 1)
        assert str(part["start"]) in table
        assert str(part["end"]) in table
    assert plan["messages"] == sum(replay_from <= m.timestamp[1] < replay_until for m in messages)
    assert f"{plan['messages']:,}" in table
    assert not list(offline_dir.rglob("*.parquet"))
    assert redis_client.dbsize() == 0


def test_a_signalled_backfill_commits_what_it_replayed_and_the_same_command_completes_it(
    kafka_bootstrap: str,
    redis_url: str,
    redis_client: redis.Redis,
    topic_factory: Callable[..., str],
    offline_dir: Path,
) -> None:
    topic, _, lo, hi = history(kafka_bootstrap, topic_factory, count=6_000, seed=7)
    ref = Reference.of(CARD_TXN, read_topic(kafka_bootstrap, topic))
    expected = reference_rows(ref, lo, hi)
    env = env_of(kafka_bootstrap, redis_url, offline_dir)
    args = [CARD_TXN.name, "--topic", topic, "--from", str(lo), "--to", str(hi)]
    plan = orjson.loads(freshet(["backfill", *args, "--dry-run", "--json"], env))

    # The worker gets SIGTERM at its first Redis write, as a pod being moved would: mid-range.
    stopped = backfill(
        CARD_TXN.name, topic, lo, hi,
        {**env, "FRESHET_FAULT": "redis.batch_written:1:SIGTERM"}, "--batch-size", "100",
    )  # fmt: skip
    assert not stopped["complete"]
    assert stopped["stopped_by"] == "SIGTERM"
    assert 0 < stopped["consumed"] < plan["messages"]
    partial = backfill_rows(offline_dir, CARD_TXN)
    assert stopped["rows_offline"] == len(partial)
    # Committed, and only true rows: no boundary flushed past the events it had read.
    assert set(partial) <= expected
    assert len(set(partial)) < len(expected)
    # Redis holds, for each card written, the newest row the log has of it.
    newest: dict[str, LogRow] = {}
    for row in partial:
        if row[0] not in newest or (row[1], row[4]) > (newest[row[0]][1], newest[row[0]][4]):
            newest[row[0]] = row
    served = redis_records(redis_client, CARD_TXN, sorted(ref.applied))
    assert set(served) == set(newest)
    for card, (as_of, offset, values) in served.items():
        assert (as_of, offset, values) == (newest[card][1], newest[card][4], newest[card][2])

    done = backfill(CARD_TXN.name, topic, lo, hi, env)
    assert done["complete"]
    assert set(backfill_rows(offline_dir, CARD_TXN)) == expected


def test_two_processes_write_exactly_the_rows_of_one_and_show_their_progress(
    kafka_bootstrap: str,
    redis_url: str,
    redis_client: redis.Redis,
    topic_factory: Callable[..., str],
    tmp_path: Path,
) -> None:
    topic, _, lo, hi = history(kafka_bootstrap, topic_factory, count=12_000, seed=5)
    ref = Reference.of(CARD_TXN, read_topic(kafka_bootstrap, topic))
    expected = reference_rows(ref, lo, hi)
    cards = sorted(ref.applied)
    args = ["backfill", CARD_TXN.name, "--topic", topic, "--from", str(lo), "--to", str(hi)]
    runs = {}
    for processes in (1, 2):
        redis_client.flushdb()
        offline = tmp_path / f"offline-p{processes}"
        env = env_of(kafka_bootstrap, redis_url, offline)
        plan = orjson.loads(freshet([*args, "--dry-run", "--json"], env))
        proc = subprocess.run(
            [*_FRESHET, *args, "-p", str(processes), "--json"],
            env=env, capture_output=True, text=True, timeout=180, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        summary = orjson.loads(proc.stdout)
        writers = {
            p.name.split("-")[-2] for p in segment_paths(offline, CARD_TXN.name, CARD_TXN.version)
        }
        runs[processes] = (
            backfill_rows(offline, CARD_TXN),
            redis_records(redis_client, CARD_TXN, cards),
            summary,
            writers,
        )
        # The progress on the terminal (stderr, no progress bar without a tty): its last line
        # has every planned record read.
        n = plan["messages"]
        assert f"replayed {n:,} of {n:,} records (100%)" in proc.stderr.splitlines()[-1]
        assert summary["consumed"] == n

    (rows_1, redis_1, summary_1, writers_1), (rows_2, redis_2, summary_2, writers_2) = (
        runs[1],
        runs[2],
    )
    # Every row as often as the engine emits it (once, or twice for an event exactly on a
    # boundary), without the reader's dedupe.
    assert written_more_often_than_emitted(rows_1, ref, lo, hi) == []
    assert set(rows_1) == expected  # the brute-force reference's rows of the range
    assert rows_2 == rows_1
    assert redis_2 == redis_1
    assert set(redis_1) == {r[0] for r in expected}
    assert (summary_1["workers"], summary_2["workers"]) == (1, 2)
    assert summary_2["rows_offline"] == summary_1["rows_offline"] == len(rows_1)
    # Both processes of -p 2 wrote their share of the log (one writer each).
    assert (writers_1, writers_2) == ({"p0"}, {"p0", "p1"})


def test_a_cluster_started_process_by_process_replaces_the_ranges_earlier_segments(
    kafka_bootstrap: str,
    redis_url: str,
    redis_client: redis.Redis,
    topic_factory: Callable[..., str],
    offline_dir: Path,
) -> None:
    """``-i/-a``, as the pods of deploy/k8s/jobs/backfill.yaml run it: no parent process."""
    topic, _, lo, hi = history(kafka_bootstrap, topic_factory, count=6_000, seed=7)
    ref = Reference.of(CARD_TXN, read_topic(kafka_bootstrap, topic))
    expected = reference_rows(ref, lo, hi)
    env = env_of(kafka_bootstrap, redis_url, offline_dir)
    backfill(CARD_TXN.name, topic, lo, hi, env)
    earlier = set(segment_paths(offline_dir, CARD_TXN.name))
    redis_once = redis_records(redis_client, CARD_TXN, sorted(ref.applied))
    addresses = cluster_addresses(2)
    args = ["backfill", CARD_TXN.name, "--topic", topic, "--from", str(lo), "--to", str(hi)]

    members = [
        subprocess.Popen(
            [*_FRESHET, *args, "-i", str(i), "-a", addresses, "--json"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [m.communicate(timeout=180) for m in members]

    for member, (out, err) in zip(members, outputs, strict=True):
        assert member.returncode == 0, err
        assert out.startswith("{"), (out, err)
        assert re.search(r"replayed [\d,]+ of [\d,]+ records \(100%\), .* ETA 0:00:00", err), err
    tallies = [orjson.loads(out) for out, _ in outputs]
    assert sum(t["consumed"] for t in tallies) == sum(
        p["messages"]
        for p in orjson.loads(freshet([*args, "--dry-run", "--json"], env))["partitions"]
    )
    rows = backfill_rows(offline_dir, CARD_TXN)
    # The earlier run's segments are gone: no row more often than the engine emits it.
    assert written_more_often_than_emitted(rows, ref, lo, hi) == []
    assert set(rows) == expected
    assert not set(segment_paths(offline_dir, CARD_TXN.name)) & earlier
    assert redis_records(redis_client, CARD_TXN, sorted(ref.applied)) == redis_once
    assert not list(offline_dir.rglob(".bf*done-*"))  # the markers are cleaned up
