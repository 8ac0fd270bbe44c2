"""freshet on a real 3-primary Redis Cluster (``redis-server --cluster-enabled yes`` on loopback).

``FRESHET_REDIS_URL=redis://<any node>/0?cluster=true`` is all an operator sets: the flow's sink,
the lookup endpoint and verify/reconcile then use Redis Cluster clients. A batch that spans
hundreds of hash slots must still cost one round trip per node (not one per slot), for writes
(the flow) and for batch lookups (the endpoint): counted here as the packed sends each node's
connections make while the batch runs.
"""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import redis
import redis.asyncio
import redis.cluster
import redis.connection
from click.testing import CliRunner
from http_servers import running_server
from pipeline_harness import FlowProcess, Reference, read_topic
from redis.crc import key_slot
from redis_servers import RedisProcess, start_cluster

from freshet.cli import cli
from freshet.dsl.registry import get_view
from freshet.ops.generator import GeneratorConfig, produce
from freshet.serving.app import create_app
from freshet.sinks.redis_store import (
    AsyncRedisFeatureReader,
    RedisFeatureReader,
    RedisFeatureWriter,
    connect,
    connect_async,
    record_key,
)
from freshet.sinks.rows import Row
from freshet.sinks.settings import Settings

VIEW = get_view("card_txn")
LAYOUT = VIEW.layout()
NOW_MS = 1_900_000_000_000  # fixed, far from any TTL edge: as_of + TTL is in the future


class _CountingConnection(redis.connection.Connection):
    """Counts packed sends per server port: each is one request flight of a round trip."""

    sends: ClassVar[Counter[int]] = Counter()

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        _CountingConnection.sends[self.port] += 1
        super().send_packed_command(command, check_health)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RedisProcess]]:
    nodes = start_cluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        yield nodes
    finally:
        for node in nodes:
            node.stop()


@pytest.fixture
def cluster_url(cluster: list[RedisProcess]) -> str:
    """The cluster's URL as an operator writes it, every primary flushed first."""
    for node in cluster:
        client = redis.Redis(port=node.port)
        client.flushall()
        client.close()
    return f"redis://127.0.0.1:{cluster[0].port}/0?cluster=true"


def _row(entity: str, as_of: int, offset: int, count: int) -> Row:
    return Row(
        VIEW.name, entity, as_of, (count, 1.5 * count, 1.5, 2.0, f"m{count}", count), 0, offset
    )


def _node_of(client: redis.cluster.RedisCluster, entity: str) -> int:
    node = client.get_node_from_key(record_key(LAYOUT, entity))
    assert node is not None
    return int(node.port)


def _evalsha_calls(nodes: list[RedisProcess]) -> int:
    total = 0
    for node in nodes:
        client = redis.Redis(port=node.port)
        stats = client.info("commandstats")
        client.close()
        total += int(stats.get("cmdstat_evalsha", {}).get("calls", 0))
    return total


def test_a_write_batch_across_hundreds_of_slots_is_one_round_trip_per_node(
    cluster: list[RedisProcess], cluster_url: str
) -> None:
    client = redis.cluster.RedisCluster(host="127.0.0.1", port=cluster[0].port)
    for node in client.get_nodes():  # every later connection counts its sends
        assert node.redis_connection is not None
        pool = node.redis_connection.connection_pool
        pool.disconnect()
        pool.reset()  # forget the connections made while discovering the cluster
        pool.connection_class = _CountingConnection
    try:
        writer = RedisFeatureWriter(client, {LAYOUT.name: LAYOUT})
        writer.write([_row("warm-up", NOW_MS, 0, 1)])  # loads the script on its node
        rows = [_row(f"card-{i:04d}", NOW_MS + i, i, i) for i in range(600)]
        slots = {key_slot(record_key(LAYOUT, row.entity)) for row in rows}
        nodes = {_node_of(client, row.entity) for row in rows}
        assert len(slots) > 400  # the batch really spans the cluster
        assert len(nodes) == 3
        calls_before = _evalsha_calls(cluster)
        _CountingConnection.sends.clear()

        assert writer.write(rows) == 600

        assert dict(_CountingConnection.sends) == dict.fromkeys(nodes, 1)
        # One script call per slot (a script may touch one slot only), all in those 3 flights.
        assert _evalsha_calls(cluster) - calls_before == len(slots)
        reader = RedisFeatureReader(client, {LAYOUT.name: LAYOUT}, clock_ms=lambda: NOW_MS)
        lookups = reader.get_many(VIEW.name, [row.entity for row in rows])
        assert [lk["features"]["txn_count_5m"] for lk in lookups] == list(range(600))
    finally:
        client.close()


def test_newer_wins_holds_on_every_node_of_the_cluster(cluster_url: str) -> None:
    client = connect(cluster_url)
    assert isinstance(client, redis.cluster.RedisCluster)
    try:
        writer = RedisFeatureWriter(client, {LAYOUT.name: LAYOUT})
        entities = [f"card-{i}" for i in range(60)]
        writer.write([_row(e, NOW_MS, 10, 2) for e in entities])
        # Older rows (a replay, a late worker) must not regress any value, whichever node.
        assert writer.write([_row(e, NOW_MS - 1, 99, 1) for e in entities]) == 0
        assert writer.write([_row(e, NOW_MS, 9, 1) for e in entities]) == 0
        reader = RedisFeatureReader(client, {LAYOUT.name: LAYOUT}, clock_ms=lambda: NOW_MS)
        counts = {lk["features"]["txn_count_5m"] for lk in reader.get_many(VIEW.name, entities)}
        assert counts == {2}
        assert len({_node_of(client, e) for e in entities}) == 3
    finally:
        client.close()


def _reads_processed(admins: list[redis.Redis]) -> list[int]:
    return [int(admin.info("stats")["total_reads_processed"]) for admin in admins]


def test_an_endpoint_batch_lookup_is_one_round_trip_per_node(
    cluster: list[RedisProcess], cluster_url: str
) -> None:
    """Counted on the servers: socket reads each node processed while the batch ran (the
    requests are small enough to leave the client in one write per node)."""
    entities = [f"card-{i:03d}" for i in range(150)]
    sync = connect(cluster_url)
    RedisFeatureWriter(sync, {LAYOUT.name: LAYOUT}).write(
        [_row(e, NOW_MS, i, i) for i, e in enumerate(entities)]
    )
    sync.close()
    admins = [redis.Redis(port=node.port) for node in cluster]

    async def lookup() -> tuple[list[Any], list[int]]:
        client = connect_async(cluster_url)
        try:
            reader = AsyncRedisFeatureReader(client, {LAYOUT.name: LAYOUT}, clock_ms=lambda: NOW_MS)
            await reader.get_many(VIEW.name, entities)  # connects to every node
            first = _reads_processed(admins)
            idle = [b - a for a, b in zip(first, _reads_processed(admins), strict=True)]
            before = _reads_processed(admins)
            lookups = await reader.get_many(VIEW.name, entities)
            after = _reads_processed(admins)
            reads = [b - a - i for a, b, i in zip(before, after, idle, strict=True)]
            return [lk["features"]["txn_count_5m"] for lk in lookups], reads
        finally:
            await client.aclose()

    try:
        counts, reads = asyncio.run(lookup())
    finally:
        for admin in admins:
            admin.close()
    assert counts == list(range(150))
    assert reads == [1, 1, 1]


def _http(url: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="GET" if data is None else "POST")
    request.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_the_endpoint_serves_from_the_cluster_url_of_its_settings(cluster_url: str) -> None:
    import time

    now = time.time_ns() // 1_000_000
    entities = [f"card-{i}" for i in range(50)]
    client = connect(cluster_url)
    RedisFeatureWriter(client, {LAYOUT.name: LAYOUT}).write(
        [_row(e, now - 1000, i, i) for i, e in enumerate(entities)]
    )
    client.close()
    app = create_app(Settings(redis_url=cluster_url))
    with running_server(app) as base:
        assert _http(f"{base}/readyz")[0] == 200
        status, one = _http(f"{base}/v1/features/{VIEW.name}/card-7")
        assert status == 200
        assert one["features"]["txn_count_5m"] == 7
        status, batch = _http(
            f"{base}/v1/features/{VIEW.name}", {"entities": [*entities, "nobody"]}
        )
        assert status == 200
        results = batch["results"]
        assert [r["features"]["txn_count_5m"] for r in results[:-1]] == list(range(50))
        assert results[-1]["found"] is False


def test_a_feature_service_lookup_reads_views_on_several_nodes(cluster_url: str) -> None:
    """A service's views hash their records by different entities (card, card|merchant), so
    one request's keys span slots and nodes: the endpoint's mget_nonatomic reads them all."""
    import time

    from freshet.dsl.registry import Registry
    from freshet.sinks.layout import encode_entity

    registry = Registry()
    registry.load({"FRESHET_VIEWS": str(Path(__file__).with_name("service_views.py"))})
    pairs = registry.get("card_merchant").layout()
    now = time.time_ns() // 1_000_000
    cards = [f"card-{i}" for i in range(30)]
    client = connect(cluster_url)
    writer = RedisFeatureWriter(client, {LAYOUT.name: LAYOUT, pairs.name: pairs})
    writer.write([_row(c, now - 1000, i, i) for i, c in enumerate(cards)])
    writer.write(
        [Row(pairs.name, encode_entity((c, "m1")), now - 1000, (i, 2.0 * i), 0, i)
         for i, c in enumerate(cards)]
    )  # fmt: skip
    client.close()
    assert len({key_slot(f"{{{c}|m1}}".encode()) for c in cards} | {
        key_slot(f"{{{c}}}".encode()) for c in cards
    }) > 3  # fmt: skip
    app = create_app(Settings(redis_url=cluster_url), registry=registry)
    rows = [{"card_id": c, "merchant": "m1", "amount": 1.0} for c in cards]
    with running_server(app) as base:
        status, body = _http(f"{base}/v1/services/fraud_v1", {"rows": rows})
    assert status == 200
    got = [
        (r["features"]["card_txn__txn_count_5m"], r["features"]["card_merchant__amount_sum_1h"])
        for r in body["results"]
    ]
    assert got == [(i, 2.0 * i) for i in range(30)]


def test_the_endpoint_answers_503_while_the_whole_cluster_is_down(tmp_path: Path) -> None:
    nodes = start_cluster(tmp_path / "doomed")
    try:
        app = create_app(Settings(redis_url=f"redis://127.0.0.1:{nodes[0].port}/0?cluster=true"))
        with running_server(app) as base:
            assert _http(f"{base}/v1/features/{VIEW.name}/card-1")[0] == 200
            for node in nodes:
                node.stop()
            status, body = _http(f"{base}/v1/features/{VIEW.name}/card-1")
            assert status == 503, body
            assert body["error"] == "unavailable"
            assert _http(f"{base}/readyz")[0] == 503
            assert _http(f"{base}/healthz")[0] == 200  # alive: only not ready
    finally:
        for node in nodes:
            node.stop()


def _cluster_records(url: str, entities: list[str]) -> dict[str, tuple[int, int]]:
    client = connect(url)
    try:
        reader = RedisFeatureReader(client, {LAYOUT.name: LAYOUT})
        return {
            lk["entity"]: (lk["as_of"], 0)
            for lk in reader.get_many(VIEW.name, entities)
            if lk["found"]
        }
    finally:
        client.close()


def test_flow_then_verify_and_reconcile_on_the_cluster(
    kafka_bootstrap: str,
    cluster_url: str,
    topic_factory: Callable[..., str],
    offline_dir: Path,
    tmp_path: Path,
) -> None:
    """``freshet run`` writes every entity's newest row to the cluster; ``freshet verify`` finds
    records removed from each node; ``freshet reconcile`` puts them back; verify passes."""
    topic, dlq = topic_factory(3), topic_factory(1)
    produce(
        kafka_bootstrap,
        topic,
        view=VIEW,
        count=2_000,
        pace=False,
        config=GeneratorConfig(cards=300, late_fraction=0.0, bad_fraction=0.0, seed=5),
        max_seconds=60,
    )
    ref = Reference.of(VIEW, read_topic(kafka_bootstrap, topic))
    env = {
        "FRESHET_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "FRESHET_REDIS_URL": cluster_url,
        "FRESHET_OFFLINE_DIR": str(offline_dir),
    }
    args = [VIEW.name, "--topic", topic, "--dead-letter-topic", dlq, "--metrics-port", "0"]
    flow = FlowProcess([*args, "--stop-at-end"], env=env, log=tmp_path / "flow.log")
    assert flow.wait(timeout=90) == 0, flow.output()

    entities = sorted(ref.applied)
    stored = _cluster_records(cluster_url, entities)
    assert set(stored) == set(entities)
    for entity, (as_of, _) in stored.items():
        assert as_of >= ref.max_event_time[entity], entity

    client = connect(cluster_url)
    assert isinstance(client, redis.cluster.RedisCluster)
    removed = entities[::7]
    assert len({_node_of(client, e) for e in removed}) == 3
    client.delete(*[record_key(LAYOUT, e) for e in removed])  # redis-py splits per slot
    client.close()

    runner = CliRunner()
    verify_args = ["verify", VIEW.name, "--offline-dir", str(offline_dir), "--json"]
    failed = runner.invoke(cli, verify_args, env=env)
    assert failed.exit_code == 1, failed.output
    report = json.loads(failed.output)
    assert report["counts"]["missing_online"] == len(removed)

    repaired = runner.invoke(
        cli, ["reconcile", VIEW.name, "--offline-dir", str(offline_dir)], env=env
    )
    assert repaired.exit_code == 0, repaired.output
    passed = runner.invoke(cli, verify_args, env=env)
    assert passed.exit_code == 0, passed.output
    assert set(_cluster_records(cluster_url, entities)) == set(entities)


def test_a_write_waits_for_a_restarting_primary_and_loses_no_row(tmp_path: Path) -> None:
    """A primary going down and rejoining (CLUSTERDOWN meanwhile) delays the batch, never fails
    or drops it: every row is in the cluster afterwards."""
    nodes = start_cluster(tmp_path / "restart")
    url = f"redis://127.0.0.1:{nodes[0].port}/0?cluster=true"
    client = connect(url)
    try:
        writer = RedisFeatureWriter(
            client, {LAYOUT.name: LAYOUT}, backoff_max_s=0.5, give_up_after_s=60
        )
        rows = [_row(f"card-{i}", NOW_MS, i, i) for i in range(300)]
        assert writer.write(rows[:10]) == 10
        nodes[2].stop()
        restart = threading.Timer(2.0, nodes[2].start)  # rejoins with its nodes.conf, empty
        restart.start()
        try:
            assert writer.write(rows) == 300
        finally:
            restart.join()
        reader = RedisFeatureReader(client, {LAYOUT.name: LAYOUT}, clock_ms=lambda: NOW_MS)
        lookups = reader.get_many(VIEW.name, [row.entity for row in rows])
        assert all(lk["found"] for lk in lookups)
    finally:
        client.close()
        for node in nodes:
            node.stop()
