"""The Redis online store against a real Redis: values, newer-wins, TTL, restarts, cluster."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import redis.cluster
from redis_servers import RedisProcess, free_port, start_cluster

from freshet.dsl.registry import get_view
from freshet.sinks.layout import ViewLayout
from freshet.sinks.redis_store import (
    RedisFeatureReader,
    RedisFeatureWriter,
    UnknownLayoutError,
    connect,
    record_key,
)
from freshet.sinks.rows import Row

CARD_TXN = get_view("card_txn").layout()
LAYOUTS = {CARD_TXN.name: CARD_TXN}
NOW_MS = 10_000  # the readers' clock; rows' as_of are small numbers of ms before it


def _row(entity: str, as_of: int, offset: int, count: int = 1, merchant: str = "m1") -> Row:
    return Row("card_txn", entity, as_of, (count, 10.5, 10.5, 10.5, merchant, 1), 0, offset)


@pytest.fixture
def writer(redis_url: str) -> Iterator[RedisFeatureWriter]:
    client = connect(redis_url)
    yield RedisFeatureWriter(client, LAYOUTS)
    client.close()


@pytest.fixture
def reader(redis_url: str) -> Iterator[RedisFeatureReader]:
    client = connect(redis_url)
    yield RedisFeatureReader(client, LAYOUTS, clock_ms=lambda: NOW_MS)
    client.close()


def test_reader_returns_exactly_what_the_writer_wrote(
    writer: RedisFeatureWriter, reader: RedisFeatureReader
) -> None:
    row = Row("card_txn", "card_1", NOW_MS - 250, (3, 152.5, 50.833333, 100.0, "m_0012", 2), 1, 77)
    assert writer.write([row]) == 1
    got = reader.get("card_txn", "card_1")
    assert got["found"]
    assert got["as_of"] == NOW_MS - 250
    assert got["age_ms"] == 250
    assert got["features"] == dict(zip(CARD_TXN.feature_names, row.values, strict=True))
    assert set(got["status"].values()) == {"present"}


def test_batch_lookup_keeps_request_order_and_reports_unknown_entities(
    writer: RedisFeatureWriter, reader: RedisFeatureReader
) -> None:
    writer.write([_row(f"card_{i}", NOW_MS, i, count=i) for i in range(5)])
    got = reader.get_many("card_txn", ["card_3", "nobody", "card_0", "card_3"], ["txn_count_5m"])
    assert [(g["entity"], g["found"], g["features"]) for g in got] == [
        ("card_3", True, {"txn_count_5m": 3}),
        ("nobody", False, {"txn_count_5m": None}),
        ("card_0", True, {"txn_count_5m": 0}),
        ("card_3", True, {"txn_count_5m": 3}),
    ]
    assert got[1]["status"] == {"txn_count_5m": "not_found"}
    assert got[1]["as_of"] is None
    assert got[1]["age_ms"] is None


def test_an_older_row_never_regresses_a_newer_one(
    writer: RedisFeatureWriter, reader: RedisFeatureReader
) -> None:
    assert writer.write([_row("c", as_of=2_000, offset=10, count=2)]) == 1
    assert writer.write([_row("c", as_of=1_000, offset=99, count=1)]) == 0  # older as_of
    assert (
        writer.write([_row("c", as_of=2_000, offset=9, count=1)]) == 0
    )  # same as_of, lower offset
    got = reader.get("card_txn", "c")
    assert (got["as_of"], got["features"]["txn_count_5m"]) == (2_000, 2)


def test_within_one_batch_the_newest_row_wins_whatever_the_order(
    writer: RedisFeatureWriter, reader: RedisFeatureReader
) -> None:
    rows = [_row("c", 3_000, 3, count=3), _row("c", 1_000, 1, count=1), _row("c", 2_000, 2, 2)]
    assert writer.write(rows) == 1
    assert reader.get("card_txn", "c")["features"]["txn_count_5m"] == 3


def test_rewriting_the_same_row_is_idempotent(
    writer: RedisFeatureWriter, reader: RedisFeatureReader, redis_client: redis.Redis
) -> None:
    row = _row("c", 2_000, 5, count=7)
    writer.write([row])
    before = redis_client.get(record_key(CARD_TXN, "c"))
    assert writer.write([row, row]) == 2  # equal version wins (">="): replays are harmless
    assert redis_client.get(record_key(CARD_TXN, "c")) == before
    assert writer.write([_row("c", 2_000, 6, count=8)]) == 1  # same as_of, later offset
    assert reader.get("card_txn", "c")["features"]["txn_count_5m"] == 8


def test_ttl_is_set_per_view_from_write_time(
    redis_url: str, redis_client: redis.Redis, writer: RedisFeatureWriter
) -> None:
    forever = ViewLayout("forever", 1, "card_id", CARD_TXN.features, ttl_seconds=0)
    short = ViewLayout("short", 1, "card_id", CARD_TXN.features, ttl_seconds=60)
    mixed = RedisFeatureWriter(redis_client, {**LAYOUTS, "forever": forever, "short": short})
    mixed.write(
        [
            _row("c", NOW_MS, 1)._replace(view="forever"),
            _row("c", NOW_MS, 1)._replace(view="short"),
            _row("c", NOW_MS, 1),
        ]
    )
    assert redis_client.pttl(record_key(forever, "c")) == -1
    assert 59_000 < redis_client.pttl(record_key(short, "c")) <= 60_000
    assert 604_790_000 < redis_client.pttl(record_key(CARD_TXN, "c")) <= 604_800_000
    # A later row of a view without TTL removes a TTL the key had (SET without PX).
    redis_client.pexpire(record_key(forever, "c"), 5_000)
    mixed.write([_row("c", NOW_MS + 1, 2)._replace(view="forever")])
    assert redis_client.pttl(record_key(forever, "c")) == -1


def test_reader_reports_values_older_than_the_ttl_as_expired(
    redis_client: redis.Redis, writer: RedisFeatureWriter
) -> None:
    writer.write([_row("old", NOW_MS - 604_800_001, 1), _row("fresh", NOW_MS - 604_799_000, 2)])
    reader = RedisFeatureReader(redis_client, LAYOUTS, clock_ms=lambda: NOW_MS)
    old, fresh = reader.get_many("card_txn", ["old", "fresh"])
    assert old["found"]
    assert old["as_of"] == NOW_MS - 604_800_001
    assert set(old["status"].values()) == {"expired"}
    assert set(old["features"].values()) == {None}
    assert set(fresh["status"].values()) == {"present"}
    assert fresh["features"]["merchant_last"] == "m1"


def test_writes_survive_a_script_flush(
    writer: RedisFeatureWriter, reader: RedisFeatureReader, redis_client: redis.Redis
) -> None:
    writer.write([_row("c", 1_000, 1)])
    redis_client.script_flush()
    assert writer.write([_row("c", 2_000, 2, count=2), _row("d", 2_000, 3)]) == 2
    assert reader.get("card_txn", "c")["features"]["txn_count_5m"] == 2
    assert reader.get("card_txn", "d")["found"]


@pytest.mark.parametrize(
    "entity",
    [
        "a:b",
        "{x}",
        "}{",
        "",
        "card_1}:card_txn:1:{card_2",
        "\x00nul",
        "é",
        b"\xff\xfe".decode("utf-8", "surrogateescape"),
    ],
)
def test_any_entity_bytes_round_trip_without_touching_other_keys(
    entity: str, writer: RedisFeatureWriter, reader: RedisFeatureReader, redis_client: redis.Redis
) -> None:
    writer.write([_row("card_2", 1_000, 1, merchant="victim")])
    writer.write([_row(entity, 2_000, 2, merchant="mine")])
    assert reader.get("card_txn", entity)["features"]["merchant_last"] == "mine"
    assert reader.get("card_txn", "card_2")["features"]["merchant_last"] == "victim"
    assert redis_client.dbsize() == (1 if entity == "card_2" else 2)


def test_batches_larger_than_one_script_call_land_whole(redis_client: redis.Redis) -> None:
    writer = RedisFeatureWriter(redis_client, LAYOUTS, max_rows_per_call=100)
    rows = [_row(f"card_{i}", 1_000, i, count=i) for i in range(1_050)]
    assert writer.write(rows) == 1_050
    reader = RedisFeatureReader(redis_client, LAYOUTS, clock_ms=lambda: NOW_MS)
    got = reader.get_many("card_txn", [r.entity for r in rows], ["txn_count_5m"])
    assert [g["features"]["txn_count_5m"] for g in got] == list(range(1_050))


def test_unknown_view_lookup_names_the_known_views(reader: RedisFeatureReader) -> None:
    with pytest.raises(UnknownLayoutError, match="unknown view 'nope'; known: card_txn"):
        reader.get("nope", "c")


def test_writer_blocks_through_a_redis_restart_and_loses_no_rows(tmp_path: Path) -> None:
    server = RedisProcess(free_port(), tmp_path / "redis")
    server.start()
    client = connect(server.url)
    try:
        retries: list[float] = []
        writer = RedisFeatureWriter(
            client, LAYOUTS, backoff_initial_s=0.02, backoff_max_s=0.2, sleep=_recording(retries)
        )
        writer.write([_row("c", 1_000, 1)])  # loads the script on the first server
        server.stop()

        rows = [_row(f"card_{i}", 2_000, i, count=i) for i in range(300)]
        result: list[int] = []
        thread = threading.Thread(target=lambda: result.append(writer.write(rows)))
        thread.start()
        _await(lambda: len(retries) >= 2, "the writer to retry while Redis is down")
        assert thread.is_alive()  # it blocks instead of dropping the batch
        server.start()  # a fresh server: empty, and without the script (NOSCRIPT path)
        thread.join(timeout=30)
        assert not thread.is_alive()
        assert result == [300]
        got = RedisFeatureReader(client, LAYOUTS, clock_ms=lambda: NOW_MS).get_many(
            "card_txn", [r.entity for r in rows]
        )
        assert [g["features"]["txn_count_5m"] for g in got] == list(range(300))
    finally:
        client.close()
        server.stop()


def test_writer_and_reader_work_on_a_redis_cluster(tmp_path: Path) -> None:
    nodes = start_cluster(tmp_path / "cluster")
    client = redis.cluster.RedisCluster(host="127.0.0.1", port=nodes[0].port)
    try:
        writer = RedisFeatureWriter(client, LAYOUTS, max_rows_per_call=50)
        rows = [_row(f"card_{i}", 2_000, i, count=i) for i in range(500)]
        assert writer.write(rows) == 500
        assert writer.write([_row("card_7", 1_000, 1, count=-1)]) == 0  # newer-wins there too
        owners = {client.get_node_from_key(record_key(CARD_TXN, r.entity)).port for r in rows}
        assert len(owners) == 3  # the batch really spanned every node
        client.script_flush()
        assert writer.write(rows[:10]) == 10  # NOSCRIPT on a cluster
        reader = RedisFeatureReader(client, LAYOUTS, clock_ms=lambda: NOW_MS)
        got = reader.get_many("card_txn", [r.entity for r in rows] + ["nobody"])
        assert [g["features"]["txn_count_5m"] for g in got] == [*range(500), None]
    finally:
        client.close()
        for node in nodes:
            node.stop()


def _recording(calls: list[float]) -> Callable[[float], None]:
    def sleep(seconds: float) -> None:
        calls.append(seconds)
        time.sleep(seconds)

    return sleep


def _await(condition: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.01)
