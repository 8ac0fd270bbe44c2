"""``freshet doctor`` against the real broker, private Redis servers and a real Redis Cluster.

Redis settings are changed only on servers these tests start (never on the shared one).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner
from redis_servers import RedisProcess, free_port, start_cluster

from freshet.cli import cli
from freshet.dsl.definitions import FeatureView
from freshet.dsl.registry import get_view
from freshet.ops.doctor import (
    Finding,
    KafkaFacts,
    Level,
    RedisFacts,
    diagnose,
    probe_kafka,
    probe_redis,
)

VIEW = get_view("card_txn")


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(free_port(), tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _on_topics(source: str, dlq: str) -> FeatureView:
    return dataclasses.replace(
        VIEW, source=dataclasses.replace(VIEW.source, topic=source), dead_letter_topic=dlq
    )


def test_real_topics_partitions_and_a_missing_dead_letter_topic_are_reported(
    kafka_bootstrap: str, topic_factory: Callable[..., str], redis_url: str, tmp_path: Path
) -> None:
    source = topic_factory(6)
    view = _on_topics(source, f"{source}.never-created")
    kafka = probe_kafka({"bootstrap.servers": kafka_bootstrap})
    assert kafka.error is None
    assert kafka.topics[source] == 6
    findings = {
        f.check: f for f in diagnose(kafka, probe_redis(redis_url), [view], tmp_path, workers=4)
    }
    assert findings["kafka"].level is Level.OK
    assert findings[f"topic {source}"].level is Level.WARN  # 6 partitions over 4 workers
    assert "some read 2, others 1" in findings[f"topic {source}"].message
    assert findings[f"topic {source}.never-created"].level is Level.WARN
    assert findings["redis"].level is Level.OK


def test_an_unreachable_broker_fails_within_the_timeout() -> None:
    started = time.monotonic()
    facts = probe_kafka({"bootstrap.servers": f"127.0.0.1:{free_port()}"}, timeout_s=1.0)
    assert facts.error is not None
    assert time.monotonic() - started < 10


def test_an_eviction_policy_set_on_the_server_is_read_back_and_judged(
    private_redis: RedisProcess, tmp_path: Path
) -> None:
    admin = redis.Redis(port=private_redis.port)
    admin.config_set("maxmemory", str(64 << 20))
    admin.config_set("maxmemory-policy", "volatile-lru")
    admin.close()
    facts = probe_redis(private_redis.url)
    assert facts.error is None
    (node,) = facts.nodes
    assert node.policy == "volatile-lru"
    assert node.maxmemory == 64 << 20
    memory = {f.check: f for f in diagnose_redis_only(facts, tmp_path)}[
        f"redis memory 127.0.0.1:{private_redis.port}"
    ]
    assert memory.level is Level.WARN
    assert "card_txn" in memory.message


def diagnose_redis_only(facts: RedisFacts, tmp_path: Path) -> list[Finding]:
    return diagnose(KafkaFacts("-", error="not checked"), facts, [VIEW], tmp_path)


def test_the_cli_exit_status_follows_the_findings(
    private_redis: RedisProcess, tmp_path: Path, kafka_bootstrap: str
) -> None:
    admin = redis.Redis(port=private_redis.port)
    admin.config_set("maxmemory", str(64 << 20))
    admin.config_set("maxmemory-policy", "allkeys-lru")
    admin.close()
    env = {
        "FRESHET_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "FRESHET_REDIS_URL": private_redis.url,
        "FRESHET_OFFLINE_DIR": str(tmp_path / "offline"),
    }
    runner = CliRunner()
    result = runner.invoke(cli, ["doctor", VIEW.name, "--json"], env=env)
    findings = json.loads(result.output)
    levels = {f["check"]: f["level"] for f in findings}
    assert levels[f"redis memory 127.0.0.1:{private_redis.port}"] == "warn"
    assert levels["offline dir"] == "ok"
    errors = [f for f in findings if f["level"] == "error"]
    assert result.exit_code == (1 if errors else 0), result.output
    strict = runner.invoke(cli, ["doctor", VIEW.name, "--strict"], env=env)
    assert strict.exit_code == 1  # the eviction warning fails a strict run
    assert "fix: CONFIG SET maxmemory-policy noeviction" in strict.output

    env["FRESHET_REDIS_URL"] = f"redis://127.0.0.1:{free_port()}/0"
    down = runner.invoke(cli, ["doctor", VIEW.name, "--timeout", "1"], env=env)
    assert down.exit_code == 1
    assert "FAIL  redis: cannot reach Redis" in down.output


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RedisProcess]]:
    nodes = start_cluster(tmp_path_factory.mktemp("doctor-cluster"))
    try:
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def test_a_cluster_is_probed_on_every_primary(cluster: list[RedisProcess]) -> None:
    facts = probe_redis(f"redis://127.0.0.1:{cluster[0].port}/0?cluster=true")
    assert facts.error is None
    assert sorted(n.address for n in facts.nodes) == sorted(f"127.0.0.1:{n.port}" for n in cluster)
    assert all(n.cluster_enabled for n in facts.nodes)


def test_a_cluster_node_reached_without_the_cluster_flag_is_an_error(
    cluster: list[RedisProcess], tmp_path: Path
) -> None:
    facts = probe_redis(f"redis://127.0.0.1:{cluster[1].port}/0")
    mode = {f.check: f for f in diagnose_redis_only(facts, tmp_path)}["redis mode"]
    assert mode.level is Level.ERROR
    assert "?cluster=true" in mode.fix


def test_a_cluster_url_on_a_plain_server_is_an_error(
    private_redis: RedisProcess, tmp_path: Path
) -> None:
    facts = probe_redis(f"{private_redis.url}?cluster=true")
    mode = {f.check: f for f in diagnose_redis_only(facts, tmp_path)}["redis mode"]
    assert mode.level is Level.ERROR
    assert "remove ?cluster=true" in mode.fix
