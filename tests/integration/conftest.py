"""Fixtures for integration tests against the real local Kafka broker and Redis server.

The session starts the dev stack through the same code as ``freshet dev up`` (reusing a running
one) and **fails** every integration test with the reason when Kafka or Redis cannot be brought
up: these tests never skip. Each test gets its own Kafka topics (unique names, deleted after the
test) and a Redis database of its own, flushed before the test. Databases are leased per pytest
session (a ``SET NX`` key with an expiry), so several sessions can share one Redis safely.

Ports and the dev dir come from ``FRESHET_DEV_DIR`` / ``FRESHET_DEV_KAFKA_PORT`` /
``FRESHET_DEV_CONTROLLER_PORT`` / ``FRESHET_DEV_REDIS_PORT`` like ``freshet dev``'s.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from confluent_kafka.admin import AdminClient, NewTopic

from freshet.ops import devstack
from freshet.stream import kafka_clients

_HERE = Path(__file__).resolve().parent
_LEASE_TTL_S = 3 * 3600
_TOPIC_TIMEOUT_S = 30.0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under tests/integration with ``integration``."""
    for item in items:
        if _HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def dev_stack() -> devstack.StackConfig:
    """The running local stack (started here if it is not up yet)."""
    config = devstack.StackConfig.from_env(os.environ)
    problem = None
    try:
        devstack.up(config)
    except devstack.DevStackError as exc:
        problem = str(exc)
    if problem is not None:  # failed outside the except block: no chained traceback noise
        pytest.fail(
            f"the local Kafka + Redis stack is not available ({config.dev_dir}): {problem}",
            pytrace=False,
        )
    return config


@pytest.fixture(scope="session")
def kafka_bootstrap(dev_stack: devstack.StackConfig) -> str:
    """``host:port`` of the real Kafka broker."""
    return dev_stack.kafka_bootstrap


@pytest.fixture(scope="session")
def kafka_admin(kafka_bootstrap: str) -> AdminClient:
    client: AdminClient = kafka_clients.admin({"bootstrap.servers": kafka_bootstrap})
    return client


@pytest.fixture(scope="session")
def _redis_db(dev_stack: devstack.StackConfig) -> Iterator[int]:
    """A Redis database number leased to this pytest session (not db 0, not the lease db)."""
    admin = redis.Redis(host=devstack.HOST, port=dev_stack.redis_port, db=0)
    try:
        databases = int(admin.config_get("databases")["databases"])
    except redis.RedisError as exc:
        pytest.fail(f"Redis on port {dev_stack.redis_port} does not answer: {exc}", pytrace=False)
    registry = redis.Redis(host=devstack.HOST, port=dev_stack.redis_port, db=databases - 1)
    token = f"{os.getpid()}-{uuid.uuid4().hex}"
    for db in range(1, databases - 1):
        if registry.set(f"freshet:test-db-lease:{db}", token, nx=True, ex=_LEASE_TTL_S):
            break
    else:
        pytest.fail(
            f"all {databases - 2} Redis test databases are leased by other pytest sessions "
            f"(keys freshet:test-db-lease:* in db {databases - 1})",
            pytrace=False,
        )
    try:
        yield db
    finally:
        key = f"freshet:test-db-lease:{db}"
        if registry.get(key) == token.encode():
            redis.Redis(host=devstack.HOST, port=dev_stack.redis_port, db=db).flushdb()
            registry.delete(key)
        registry.close()
        admin.close()


@pytest.fixture
def redis_url(dev_stack: devstack.StackConfig, _redis_db: int) -> str:
    """URL of a Redis database of this test's own, empty when the test starts."""
    client = redis.Redis(host=devstack.HOST, port=dev_stack.redis_port, db=_redis_db)
    try:
        client.flushdb()
    finally:
        client.close()
    return f"redis://{devstack.HOST}:{dev_stack.redis_port}/{_redis_db}"


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client on ``redis_url``'s (flushed) database."""
    client = redis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def topic_factory(
    kafka_admin: AdminClient, request: pytest.FixtureRequest
) -> Iterator[Callable[..., str]]:
    """``topic_factory(partitions=3) -> name``: a new, uniquely named topic, deleted after."""
    created: list[str] = []
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name)[:60].strip("-")

    def create(partitions: int = 3) -> str:
        name = f"test-{stem}-{uuid.uuid4().hex[:8]}"
        futures = kafka_admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1)],
            operation_timeout=_TOPIC_TIMEOUT_S,
        )
        futures[name].result(timeout=_TOPIC_TIMEOUT_S)
        created.append(name)
        _await_leaders(kafka_admin, name, partitions)
        return name

    yield create
    if created:
        futures = kafka_admin.delete_topics(created, operation_timeout=_TOPIC_TIMEOUT_S)
        for future in futures.values():
            future.result(timeout=_TOPIC_TIMEOUT_S)


def _await_leaders(admin: AdminClient, topic: str, partitions: int) -> None:
    """Wait until every partition has a leader, so the first produce does not race creation."""
    deadline = time.monotonic() + _TOPIC_TIMEOUT_S
    while time.monotonic() < deadline:
        metadata = admin.list_topics(topic=topic, timeout=5).topics.get(topic)
        if (
            metadata is not None
            and metadata.error is None
            and len(metadata.partitions) == partitions
            and all(p.leader >= 0 for p in metadata.partitions.values())
        ):
            return
        time.sleep(0.05)
    raise TimeoutError(f"topic {topic!r}: partitions have no leader after {_TOPIC_TIMEOUT_S} s")


@pytest.fixture
def offline_dir(tmp_path: Path) -> Path:
    """An empty directory for the Parquet offline store."""
    path = tmp_path / "offline"
    path.mkdir()
    return path
