"""The Kafka broker restarted under a running flow (a broker of this test's own: the shared one
is never restarted): the flow keeps running, reconnects by itself, reads on from where it was
(no record read twice, none skipped) and everything it writes equals the engine reference."""

from __future__ import annotations

import time
from pathlib import Path

import redis
from confluent_kafka.admin import AdminClient, NewTopic
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
from private_stack import private_stack
from redis_servers import free_port

from freshet.ops import devstack, processes


def _create_topics(bootstrap: str, topics: dict[str, int]) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=n, replication_factor=1) for name, n in topics.items()]
    )
    for future in futures.values():
        future.result(timeout=30)


def test_broker_restarted_mid_stream_the_flow_reads_on_from_where_it_was(
    dev_stack: devstack.StackConfig, offline_dir: Path, tmp_path: Path
) -> None:
    with private_stack(dev_stack, tmp_path / "stack") as stack:
        bootstrap = stack.kafka_bootstrap
        topic, dlq = "transactions-restart", "transactions-restart.dlq"
        _create_topics(bootstrap, {topic: 3, dlq: 1})
        first = produce_stream(bootstrap, topic, 3_000, seed=61)
        client = redis.Redis(port=stack.redis_port)
        port = free_port()
        env = flow_env(bootstrap, stack.redis_url, offline_dir)
        recovery = str(tmp_path / "recovery")
        args = flow_args(topic, dlq, "--recovery-dir", recovery, metrics_port=port)
        with FlowProcess(args, env=env, log=tmp_path / "flow.log") as flow:
            wait_until(
                lambda: scrape(port).get(f"freshet_events_in_total{LABEL}") == first.total,
                timeout=60,
                what="the first part to be read",
            )
            kafka_pid = processes.read_pid(stack.kafka_pid_file)
            assert kafka_pid is not None
            stopped_at = time.monotonic()
            assert processes.stop_pid(kafka_pid, str(stack.server_properties), timeout=30)
            time.sleep(3)  # down for a while: the flow polls a broker that is not there
            assert flow.proc.poll() is None, flow.output()
            devstack.up(stack)  # the same broker, data dir and ports
            down_s = time.monotonic() - stopped_at
            second = produce_stream(bootstrap, topic, 3_000, seed=62)
            total = first.total + second.total
            wait_until(
                lambda: scrape(port).get(f"freshet_events_in_total{LABEL}") == total,
                timeout=90,
                what="the flow to read the records produced after the restart",
            )
            caught_up_s = time.monotonic() - stopped_at
            ref = Reference.of(VIEW, read_topic(bootstrap, topic))
            wait_until(
                passes(lambda: ref.check_rows(offline_rows(offline_dir, VIEW))),
                timeout=30,
                what="the offline log to hold every row once",
            )
            wait_until(passes(lambda: check_redis(client, ref)), timeout=30, what="Redis")
            assert flow.proc.poll() is None, flow.output()
            # Read on from where it was: exactly the records produced, none twice.
            assert scrape(port)[f"freshet_events_in_total{LABEL}"] == total
        client.close()
    print(
        f"\nKafka broker down/restarting for {down_s:.1f} s; the flow (same process) read all "
        f"{total} records exactly once, {caught_up_s:.1f} s after the stop"
    )
