"""``freshet run --recovery-dir``: SIGKILL at any moment, start again: nothing lost or doubled.

The flow is killed twice mid-stream (no clean-up at all: the whole process group gets SIGKILL)
and restarted with the same command; once it has caught up, the offline reader must show each
of the reference's rows exactly once and Redis must hold, for every card, the reference's value
as of its newest events — what an uninterrupted run leaves.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import redis
from pipeline_harness import (
    LABEL,
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
    # Small polls keep the first run busy long enough to be killed while it reads (most likely
    # before its first snapshot). The second run is killed once a snapshot holding its progress
    # is on disk (entity states pickled, then two more 1-s snapshot intervals), so the third run
    # must resume from it rather than start over, however fast the flow reads.
    extra = ["--recovery-dir", str(recovery), "--batch-size", "50"]

    for run in ("first", "second"):
        port = free_port()
        args = flow_args(topic, dlq, *extra, metrics_port=port)
        with FlowProcess(args, env=env, log=tmp_path / "flow.log") as flow:
            if run == "first":
                read = wait_until(
                    lambda port=port: (
                        scrape(port).get(f"freshet_events_in_total{LABEL}", 0) >= counts.total // 4
                    ),
                    timeout=60,
                    what=f"{counts.total // 4} records read before the kill",
                    interval=0.02,
                )
            else:
                read = wait_until(
                    lambda port=port: (
                        scrape(port).get(f"freshet_state_entities_pickled_total{LABEL}", 0) > 0
                    ),
                    timeout=60,
                    what="a snapshot of the engine state before the kill",
                    interval=0.02,
                )
                time.sleep(2.0)  # two snapshot intervals: that snapshot is committed
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

        # It resumed: the third run did not start over from the first record (it read none
        # when the second run's last snapshot came after the end of the topic).
        def caught_up() -> bool:
            lags = [v for k, v in scrape(port).items() if k.startswith("freshet_consumer_lag{")]
            return len(lags) == 3 and not any(lags)

        wait_until(caught_up, timeout=30, what="the resumed flow to read to the end")
        read_again = scrape(port).get(f"freshet_events_in_total{LABEL}", 0)
        assert read_again < counts.total, flow.output()
