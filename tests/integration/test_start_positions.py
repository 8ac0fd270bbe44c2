"""``freshet run --recovery-dir D --from latest``: the resolved start is durable.

``latest`` (or a time) is resolved to offsets when the flow first starts. Killed before its
first snapshot and started again, the flow must begin at those recorded offsets, not at the
new ``latest``: every event produced after the first start is in the offline log exactly once,
and none produced before it.
"""

from __future__ import annotations

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


def test_sigkill_before_the_first_snapshot_of_a_latest_start_loses_no_later_event(
    kafka_bootstrap: str,
    redis_url: str,
    redis_client: redis.Redis,
    topic_factory: Callable[..., str],
    offline_dir: Path,
    tmp_path: Path,
) -> None:
    topic, dlq = topic_factory(3), topic_factory(1)
    before = produce_stream(kafka_bootstrap, topic, 3_000, seed=5, cards=200)
    env = flow_env(kafka_bootstrap, redis_url, offline_dir)
    recovery = tmp_path / "recovery"
    # A long snapshot interval (the last --snapshot-interval given wins): the first run is
    # killed before any snapshot.
    extra = ["--from", "latest", "--recovery-dir", str(recovery), "--snapshot-interval", "600"]

    # Where "latest" is when the flow first starts: after the records produced so far.
    starts = dict.fromkeys(range(3), 0)
    for message in read_topic(kafka_bootstrap, topic):
        starts[message.partition] = max(starts[message.partition], message.offset + 1)
    assert sum(starts.values()) == before.total

    port = free_port()
    with FlowProcess(
        flow_args(topic, dlq, *extra, metrics_port=port), env=env, log=tmp_path / "flow.log"
    ) as flow:
        # Partitions assigned (their consumers report lag): the start is resolved.
        wait_until(
            lambda: sum(k.startswith("freshet_consumer_lag{") for k in scrape(port)) == 3,
            timeout=60,
            what="the flow's three partitions assigned",
        )
        after = produce_stream(kafka_bootstrap, topic, 2_000, seed=6, cards=200)
        wait_until(
            lambda: scrape(port).get(f"freshet_events_in_total{LABEL}", 0) > 0,
            timeout=60,
            what="the flow to read some of the new records",
            interval=0.02,
        )
        assert flow.proc.poll() is None, flow.output()
        # Leaving the block SIGKILLs it: no snapshot was ever taken.
    more = produce_stream(kafka_bootstrap, topic, 2_000, seed=7, cards=200)

    # The reference: exactly the records produced after the first start.
    messages = [m for m in read_topic(kafka_bootstrap, topic) if m.offset >= starts[m.partition]]
    assert len(messages) == after.total + more.total
    ref = Reference.of(VIEW, messages)

    # Started again, snapshotting every second (flow_args) so its rows reach the log.
    again = flow_args(topic, dlq, *extra[:4], metrics_port=free_port())
    with FlowProcess(again, env=env, log=tmp_path / "flow.log"):
        wait_until(
            passes(lambda: ref.check_rows(offline_rows(offline_dir, VIEW))),
            timeout=90,
            what="every row of the events produced after the first start, once",
        )
        wait_until(passes(lambda: check_redis(redis_client, ref)), timeout=30, what="Redis")
