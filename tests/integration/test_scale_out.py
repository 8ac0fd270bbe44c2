"""Scale-out: two ``freshet run`` processes forming one Bytewax cluster (``-i ID -a ADDRESSES``,
as two pods would) over a 6-partition topic write exactly what one process writes.

Both runs read the same records; the offline log (every row) and the final Redis record of
every entity must be identical, and equal to the engine's reference. Event times start now, so
no expiry boundary is reached while the test runs and the rows depend on the input alone.
The wall time of each run is printed (spawn to exit, start-up included); the throughput
comparison is ``tests/bench/scale/bench_scale_out.py``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import redis
from pipeline_harness import FlowProcess, Reference, offline_rows, read_topic, redis_records
from redis_servers import free_port

from freshet.dsl.registry import get_view
from freshet.ops.generator import GeneratorConfig, produce

VIEW = get_view("card_txn")
EVENTS = 6_000
_RUN_TIMEOUT_S = 120.0


def _args(topic: str, dlq: str) -> list[str]:
    return [VIEW.name, "--topic", topic, "--dead-letter-topic", dlq, "--metrics-port", "0",
            "--stop-at-end"]  # fmt: skip


def _env(bootstrap: str, redis_url: str, offline: Path) -> dict[str, str]:
    return {
        "FRESHET_KAFKA_BOOTSTRAP": bootstrap,
        "FRESHET_REDIS_URL": redis_url,
        "FRESHET_OFFLINE_DIR": str(offline),
    }


def test_two_processes_write_the_same_rows_and_redis_state_as_one(
    kafka_bootstrap: str,
    redis_url: str,
    redis_client: redis.Redis,
    topic_factory: Callable[..., str],
    offline_dir: Path,
    tmp_path: Path,
) -> None:
    topic, dlq = topic_factory(6), topic_factory(1)
    config = GeneratorConfig(cards=500, late_fraction=0.02, bad_fraction=0.01, seed=21)
    produce(kafka_bootstrap, topic, view=VIEW, count=EVENTS, pace=False, config=config,
            max_seconds=60)  # fmt: skip
    ref = Reference.of(VIEW, read_topic(kafka_bootstrap, topic))
    entities = sorted(ref.applied)

    one_dir = offline_dir / "one"
    started = time.monotonic()
    one = FlowProcess(
        _args(topic, dlq), env=_env(kafka_bootstrap, redis_url, one_dir), log=tmp_path / "one.log"
    )
    assert one.wait(timeout=_RUN_TIMEOUT_S) == 0, one.output()
    one_s = time.monotonic() - started
    one_redis = redis_records(redis_client, VIEW, entities)
    redis_client.flushdb()

    two_dir = offline_dir / "two"
    addresses = f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"
    env = _env(kafka_bootstrap, redis_url, two_dir)
    started = time.monotonic()
    cluster = [
        FlowProcess(
            [*_args(topic, dlq), "-i", str(i), "-a", addresses],
            env=env,
            log=tmp_path / f"two-{i}.log",
        )
        for i in range(2)
    ]
    try:
        for i, process in enumerate(cluster):
            assert process.wait(timeout=_RUN_TIMEOUT_S) == 0, f"process {i}:\n{process.output()}"
    finally:
        for process in cluster:
            process.kill()
    two_s = time.monotonic() - started
    for i, process in enumerate(cluster):
        assert f"in process {i} of 2" in process.output()
    two_redis = redis_records(redis_client, VIEW, entities)

    one_rows = offline_rows(one_dir, VIEW)
    two_rows = offline_rows(two_dir, VIEW)
    ref.check_rows(one_rows)
    assert two_rows == one_rows
    assert {p.name.split("-")[0] for p in two_dir.rglob("*.parquet")} == {"p0", "p1"}

    assert set(one_redis) == set(entities)
    assert two_redis == one_redis
    for entity, (as_of, offset, values) in one_redis.items():
        last = ref.applied[entity][-1]
        assert (as_of, offset, values) == (last.as_of, last.offset, last.values), entity

    print(
        f"\nscale-out, {EVENTS:,} events over 6 partitions, spawn to exit: "
        f"1 process {one_s:.1f} s, 2 processes {two_s:.1f} s"
    )
