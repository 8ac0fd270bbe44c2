"""``freshet run --recovery-dir``: SIGKILL at any moment, start again: nothing lost or doubled.

The flow is killed twice mid-stream (no clean-up at all: the whole process group gets SIGKILL)
and restarted with the same command; once it has caught up, the offline reader must show each
of the reference's rows exactly once and Redis must hold, for every card, the reference's value
as of its newest events — what an uninterrupted run leaves.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import redis
from pipeline_harness import (
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
from redis_servers import free_port

LABEL = f'{{view="{VIEW.name}"}}'


def test_sigkill_twice_and_resume_loses_and_duplicates_no_row(
    kafka_bootstrap: str,
    redis_url: str,
    redis_client: redis.Redis,
    topic_factory: Callable[..., str],
    offline_dir: Path,
    tmp_path: Path,
) -> None:
    topic, dlq = topic_factory(3), topic_factory(1)
    counts = produce_stream(kafka_bootstrap, topic, 30_000, seed=21, cards=2_000)
    ref = Reference.of(VIEW, read_topic(kafka_bootstrap, topic))
    env = flow_env(kafka_bootstrap, redis_url, offline_dir)
    recovery = tmp_path / "recovery"
    # Small polls make the run last long enough to be killed in the middle of it.
    extra = ["--recovery-dir", str(recovery), "--batch-size", "50"]

    for kill_after in (counts.total // 4, counts.total // 4):
        port = free_port()
        args = flow_args(topic, dlq, *extra, metrics_port=port)
        with FlowProcess(args, env=env, log=tmp_path / "flow.log") as flow:
            read = wait_until(
                lambda port=port, n=kill_after: (
                    scrape(port).get(f"freshet_events_in_total{LABEL}", 0) >= n
                ),
                timeout=60,
                what=f"{kill_after} records read before the kill",
                interval=0.02,
            )
            assert read
            assert flow.proc.poll() is None, flow.output()
            # Leaving the block SIGKILLs the process group: a crash mid-run.
    assert any(recovery.glob("part-*.sqlite3"))

    port = free_port()
    with FlowProcess(
        flow_args(topic, dlq, *extra, metrics_port=port), env=env, log=tmp_path / "flow.log"
    ) as flow:
        wait_until(
            passes(lambda: ref.check_rows(offline_rows(offline_dir, VIEW))),
            timeout=60,
            what="the offline log to hold every row once",
        )
        wait_until(passes(lambda: check_redis(redis_client, ref)), timeout=30, what="Redis")
        # It resumed: the third run did not start over from the first record.
        assert scrape(port)[f"freshet_events_in_total{LABEL}"] < counts.total, flow.output()
