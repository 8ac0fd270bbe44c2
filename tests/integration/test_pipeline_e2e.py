"""``freshet run`` against the real Kafka and Redis: what it writes equals the engine's reference.

(Named ``_e2e``: ``tests/unit/test_pipeline.py`` holds the module name ``test_pipeline``.)

Each test produces a synthetic card stream (``freshet.ops.generator``: Zipf cards, some late and
some malformed records) to its own topic, runs the flow as a real process and compares Redis, the
offline log, the dead-letter topic and ``/metrics`` with ``ViewEngine`` run directly over the
records read back from Kafka.
"""

from __future__ import annotations

import bisect
import random
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import redis
from pipeline_harness import (
    LATENESS_MS,
    VIEW,
    FlowProcess,
    Reference,
    check_redis,
    flow_args,
    flow_env,
    offline_rows,
    passes,
    produce_stream,
    read_topic,
    scrape,
    wait_until,
)
from redis_servers import RedisProcess, free_port


def test_redis_log_dead_letters_and_metrics_equal_the_engine_reference(
    kafka_bootstrap: str,
    redis_url: str,
    redis_client: redis.Redis,
    topic_factory: Callable[..., str],
    offline_dir: Path,
    tmp_path: Path,
) -> None:
    topic, dlq = topic_factory(3), topic_factory(1)
    counts = produce_stream(kafka_bootstrap, topic, 6_000, seed=11)
    source = read_topic(kafka_bootstrap, topic)
    ref = Reference.of(VIEW, source)
    assert ref.late == counts.late > 0
    assert ref.bad == counts.bad > 0

    port = free_port()
    env = flow_env(kafka_bootstrap, redis_url, offline_dir)
    with FlowProcess(flow_args(topic, dlq, metrics_port=port), env=env, log=tmp_path / "flow.log"):
        label = f'{{view="{VIEW.name}"}}'
        wait_until(
            lambda: scrape(port).get(f"freshet_events_in_total{label}") == counts.total,
            timeout=60,
            what="the flow to read every record",
        )
        wait_until(
            passes(lambda: ref.check_rows(offline_rows(offline_dir, VIEW))),
            timeout=30,
            what="the offline log to hold every row",
        )
        wait_until(passes(lambda: check_redis(redis_client, ref)), timeout=30, what="Redis")
        lag = wait_until(
            lambda: (
                [v for k, v in scrape(port).items() if k.startswith("freshet_consumer_lag")]
                if all(
                    v == 0 for k, v in scrape(port).items() if k.startswith("freshet_consumer_lag")
                )
                else None
            ),
            timeout=30,
            what="consumer lag 0 on every partition",
        )
        assert len(lag) == 3
        m = scrape(port)

    assert m[f"freshet_events_decoded_total{label}"] == counts.total - counts.bad
    assert m[f"freshet_events_late_total{label}"] == ref.late
    dead = {k: v for k, v in m.items() if k.startswith("freshet_dead_letters_total")}
    assert dead[f'freshet_dead_letters_total{{reason="late",view="{VIEW.name}"}}'] == ref.late
    assert sum(dead.values()) == ref.late + ref.bad
    applied_rows = sum(len(rows) for rows in ref.applied.values())
    assert m[f"freshet_rows_emitted_total{label}"] >= applied_rows
    assert m[f"freshet_freshness_seconds_count{label}"] == counts.total - counts.bad - ref.late
    assert m[f"freshet_segments_written_total{label}"] >= 1
    assert m[f"freshet_redis_write_seconds_count{label}"] >= 1

    # The dead-letter topic holds each refused record once, with its error and origin.
    letters = read_topic(kafka_bootstrap, dlq)
    reasons = Counter(dict(letter.headers or [])["freshet.reason"] for letter in letters)
    reasons = Counter({bytes(k).decode(): v for k, v in reasons.items()})
    assert reasons["late"] == ref.late
    assert sum(reasons.values()) == ref.late + ref.bad
    by_origin = {(record.partition, record.offset): record for record in source}
    for letter in letters:
        headers = dict(letter.headers or [])
        assert headers["freshet.error"]
        assert headers["freshet.source.topic"] == topic.encode()
        # Late letters too carry the source record's own key and bytes (read back by the sink).
        origin = by_origin[
            (int(headers["freshet.source.partition"]), int(headers["freshet.source.offset"]))
        ]
        assert (letter.key, letter.value) == (origin.key, origin.value)
        assert "freshet.value.encoding" not in headers

    # Point-in-time lookups on the offline log equal the reference at random times.
    log = offline_rows(offline_dir, VIEW)
    by_entity: dict[str, list[tuple[int, tuple[object, ...]]]] = {}
    for row in log:
        by_entity.setdefault(row.entity, []).append((row.as_of, row.values))
    rng = random.Random(3)
    for entity in rng.sample(sorted(ref.applied), 100):
        history = by_entity[entity]
        lo, hi = history[0][0], ref.max_event_time[entity] - LATENESS_MS
        for t in (rng.randint(lo, max(lo, hi)) for _ in range(5)):
            i = bisect.bisect_right([as_of for as_of, _ in history], t) - 1
            assert history[i][1] == ref.value_as_of(entity, t), (entity, t)


def test_one_worker_two_workers_and_two_processes_write_identical_offline_rows(
    kafka_bootstrap: str,
    redis_url: str,
    topic_factory: Callable[..., str],
    offline_dir: Path,
    tmp_path: Path,
) -> None:
    topic, dlq = topic_factory(4), topic_factory(1)
    produce_stream(kafka_bootstrap, topic, 4_000, seed=12)
    ref = Reference.of(VIEW, read_topic(kafka_bootstrap, topic))
    applied = {row for rows in ref.applied.values() for row in rows}
    results = {}
    for name, scale in {"w1": [], "w2": ["-w", "2"], "p2": ["-p", "2"]}.items():
        root = offline_dir / name
        env = flow_env(kafka_bootstrap, redis_url, root)
        run = FlowProcess(
            flow_args(topic, dlq, "--stop-at-end", *scale), env=env, log=tmp_path / f"{name}.log"
        )
        assert run.wait(timeout=60) == 0, run.output()
        rows = offline_rows(root, VIEW)
        ref.check_rows(rows)
        results[name] = sorted(row for row in rows if row in applied)
    assert results["w1"] == results["w2"] == results["p2"]
    assert len(results["w1"]) == len(applied)


def test_rows_computed_while_redis_is_down_reach_it_after_its_restart(
    kafka_bootstrap: str, topic_factory: Callable[..., str], offline_dir: Path, tmp_path: Path
) -> None:
    server = RedisProcess(free_port(), tmp_path / "redis")
    server.start()
    client = redis.Redis(port=server.port)
    topic, dlq = topic_factory(3), topic_factory(1)
    start_ms = time.time_ns() // 1_000_000
    first = produce_stream(kafka_bootstrap, topic, 2_000, seed=13, start_ms=start_ms)
    port = free_port()
    env = flow_env(kafka_bootstrap, server.url, offline_dir)
    try:
        with FlowProcess(
            flow_args(topic, dlq, metrics_port=port), env=env, log=tmp_path / "flow.log"
        ) as flow:
            label = f'{{view="{VIEW.name}"}}'
            wait_until(
                lambda: scrape(port).get(f"freshet_events_in_total{label}") == first.total,
                timeout=60,
                what="the first part to be read",
            )
            ref_first = Reference.of(VIEW, read_topic(kafka_bootstrap, topic))
            wait_until(passes(lambda: check_redis(client, ref_first)), timeout=30, what="Redis")
            server.stop()
            # Later events of the same cards, produced and consumed while Redis is down.
            second = produce_stream(
                kafka_bootstrap, topic, 2_000, seed=14, start_ms=start_ms + 60_000
            )
            wait_until(
                lambda: "redis write of" in flow.output(),
                timeout=30,
                what="the flow's Redis writes to fail and retry",
            )
            wait_until(
                lambda: scrape(port).get(f"freshet_redis_write_retries_total{label}", 0) > 0,
                timeout=30,
                what="the retries to be counted",
            )
            assert flow.proc.poll() is None, flow.output()
            server.start()  # empty: this test's Redis keeps nothing on disk
            ref = Reference.of(VIEW, read_topic(kafka_bootstrap, topic))
            wait_until(
                lambda: (
                    scrape(port).get(f"freshet_events_in_total{label}")
                    == first.total + second.total
                ),
                timeout=60,
                what="the second part to be read",
            )
            # Cards with accepted events in the second part: their rows were computed during
            # the outage or after it.
            touched = {
                e for e, t in ref.max_event_time.items() if t != ref_first.max_event_time.get(e)
            }
            assert len(touched) > 50
            wait_until(
                passes(lambda: check_redis(client, ref, touched)),
                timeout=30,
                what="every card updated during the outage to be in Redis",
            )
            wait_until(
                passes(lambda: ref.check_rows(offline_rows(offline_dir, VIEW))),
                timeout=30,
                what="the offline log to hold every row",
            )
    finally:
        client.close()
        server.stop()
