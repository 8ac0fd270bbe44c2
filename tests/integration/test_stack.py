"""The local stack is real: Kafka keeps per-key order and seeks by time, Redis pipelines, and
``freshet dev up`` is idempotent while ``down`` stops what it started."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from freshet.ops import devstack, processes

MESSAGES = 10_000
KEYS = 200
DEADLINE_S = 60.0


def _consumer(bootstrap: str) -> Consumer:
    # No group membership: manual assign avoids a rebalance wait.
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "freshet-test-unused",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
        }
    )


def test_10k_keyed_messages_come_back_in_per_key_order_across_3_partitions(
    kafka_bootstrap: str, topic_factory: Callable[..., str]
) -> None:
    topic = topic_factory(partitions=3)
    # Idempotence keeps per-key order across retries (a fresh topic's first sends can be
    # retried while later batches land; without it they come back out of order).
    producer = Producer(
        {"bootstrap.servers": kafka_bootstrap, "linger.ms": 5, "enable.idempotence": True}
    )
    for i in range(MESSAGES):
        key = f"card-{i % KEYS}"
        producer.produce(topic, key=key, value=f"{key}:{i // KEYS}".encode())
        producer.poll(0)
    assert producer.flush(30) == 0

    consumer = _consumer(kafka_bootstrap)
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(3)])
    seen: dict[str, list[int]] = defaultdict(list)
    partitions_of: dict[str, set[int]] = defaultdict(set)
    received = 0
    deadline = time.monotonic() + DEADLINE_S
    try:
        while received < MESSAGES and time.monotonic() < deadline:
            for message in consumer.consume(num_messages=1000, timeout=1.0):
                assert message.error() is None, message.error()
                key_bytes, value = message.key(), message.value()
                assert key_bytes is not None
                assert value is not None
                key = key_bytes.decode()
                value_key, seq = value.decode().split(":")
                assert value_key == key
                seen[key].append(int(seq))
                partitions_of[key].add(message.partition())
                received += 1
    finally:
        consumer.close()

    assert received == MESSAGES
    assert len(seen) == KEYS
    for key, sequence in seen.items():
        assert sequence == list(range(MESSAGES // KEYS)), f"{key} out of order"
        assert len(partitions_of[key]) == 1, f"{key} spread over {partitions_of[key]}"
    used = set().union(*partitions_of.values())
    assert used == {0, 1, 2}


def test_offsets_for_times_finds_the_first_offset_at_or_after_a_timestamp(
    kafka_bootstrap: str, topic_factory: Callable[..., str]
) -> None:
    topic = topic_factory(partitions=3)
    base_ms = 1_700_000_000_000
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for i in range(20):  # partition 1, one message per second of event time
        producer.produce(topic, value=str(i).encode(), partition=1, timestamp=base_ms + i * 1000)
    assert producer.flush(30) == 0

    consumer = _consumer(kafka_bootstrap)
    try:
        queries = {
            base_ms - 60_000: 0,  # before the first message: the first offset
            base_ms: 0,
            base_ms + 5_000: 5,  # an exact hit
            base_ms + 5_500: 6,  # between two messages: the next one
            base_ms + 19_000: 19,
            base_ms + 20_000: -1,  # after the last message: the end (OFFSET_END)
        }
        for timestamp, expected in queries.items():
            [found] = consumer.offsets_for_times([TopicPartition(topic, 1, timestamp)], timeout=10)
            assert found.error is None
            assert found.offset == expected, f"ts {timestamp - base_ms:+} ms"
        # A partition without messages answers the end as well.
        [empty] = consumer.offsets_for_times([TopicPartition(topic, 0, base_ms)], timeout=10)
        assert empty.offset == -1
        # Reading from the offset found returns the message with that timestamp.
        consumer.assign([TopicPartition(topic, 1, 6)])
        message = consumer.poll(10)
        assert message is not None
        assert message.error() is None
        assert message.value() == b"6"
        assert message.timestamp()[1] == base_ms + 6_000
    finally:
        consumer.close()


def test_redis_pipeline_round_trip_in_a_clean_database(redis_client: redis.Redis) -> None:
    assert redis_client.dbsize() == 0
    pipe = redis_client.pipeline(transaction=False)
    for i in range(1000):
        pipe.hset(f"fv:test:{i}", mapping={"as_of": i, "value": f"v{i}"})
        pipe.expire(f"fv:test:{i}", 60)
    results = pipe.execute()
    assert len(results) == 2000

    pipe = redis_client.pipeline(transaction=False)
    for i in range(1000):
        pipe.hgetall(f"fv:test:{i}")
    rows = pipe.execute()
    assert rows[7] == {b"as_of": b"7", b"value": b"v7"}
    assert all(row[b"value"] == f"v{i}".encode() for i, row in enumerate(rows))
    assert 0 < redis_client.ttl("fv:test:999") <= 60


def _freshet(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).with_name("freshet")), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def _status_pids(env: dict[str, str]) -> dict[str, int | None]:
    import orjson

    result = _freshet("dev", "status", "--json", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    return {s["name"]: s["pid"] for s in orjson.loads(result.stdout)["services"]}


def test_dev_up_twice_keeps_one_broker_and_one_redis(
    dev_stack: devstack.StackConfig,
) -> None:
    env = {**os.environ, "FRESHET_DEV_DIR": str(dev_stack.dev_dir)}
    before = _status_pids(env)
    for _ in range(2):
        result = _freshet("dev", "up", env=env)
        assert result.returncode == 0, result.stdout + result.stderr
    after = _status_pids(env)
    assert after == before
    assert after["kafka"] == processes.listening_pid(dev_stack.kafka_port)
    assert after["redis"] == processes.listening_pid(dev_stack.redis_port)


def test_a_second_stack_starts_logs_is_reused_and_stops_completely(
    dev_stack: devstack.StackConfig, tmp_path: Path
) -> None:
    # Own dev dir and ports; shares the jar cache so nothing is downloaded.
    kafka_port = processes.free_port()
    config = devstack.StackConfig(
        dev_dir=tmp_path / "dev",
        kafka_port=kafka_port,
        controller_port=processes.free_port(),
        redis_port=processes.free_port(),
        lib_dir_override=dev_stack.lib_dir,
    )
    try:
        kafka, redis_status = devstack.up(config)
        assert (kafka.state, redis_status.state) == ("running", "running")
        assert kafka.pid is not None
        assert redis_status.pid is not None
        assert kafka.version
        assert kafka.version.startswith("4.")
        assert kafka.rss_bytes
        assert kafka.rss_bytes < 1024 * 2**20
        # The broker really logs (Log4j 2 + SLF4J binding are on the classpath).
        server_log = config.log_file("kafka").read_text()
        assert "Kafka Server started" in server_log
        assert "Ready to accept connections" in config.log_file("redis").read_text()

        again = devstack.up(config)
        assert (again[0].pid, again[1].pid) == (kafka.pid, redis_status.pid)
        assert processes.listening_pid(kafka_port) == kafka.pid
    finally:
        devstack.down(config, timeout=30)

    assert processes.process_cmdline(kafka.pid) is None
    assert processes.process_cmdline(redis_status.pid) is None
    assert not processes.port_is_open(config.kafka_port)
    assert not processes.port_is_open(config.redis_port)
    assert [s.state for s in devstack.status(config)] == ["stopped", "stopped"]
