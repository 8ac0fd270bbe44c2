"""``POST /v1/ingest/{view}`` on the real stack: events produced through the endpoint reach a
running ``freshet run`` and are served as of each event when the answer says so; a batch with
one bad event is refused whole; a key without the write scope is refused."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from confluent_kafka import TopicPartition
from http_servers import running_server
from pipeline_harness import VIEW, FlowProcess, flow_args, flow_env, read_topic

from freshet.decode.decoder import decoder_for
from freshet.serving import Client, ServingError
from freshet.serving.app import FeatureApp
from freshet.serving.auth import ApiKeys
from freshet.serving.ingest import Ingestor
from freshet.serving.redis_link import RedisLink
from freshet.sinks.redis_store import decode_record, record_key
from freshet.stream import kafka_clients

LAYOUT = VIEW.layout()
WRITER, READER = "k_writer", "k_reader"
KEYS = ApiKeys.parse(f"{WRITER}:card_txn=rw;{READER}:card_txn")


@pytest.fixture
def topic(topic_factory: Any) -> str:
    name: str = topic_factory(3)
    return name


@pytest.fixture
def server_url(kafka_bootstrap: str, redis_url: str, topic: str) -> Iterator[str]:
    config = {"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True, "linger.ms": 2}
    ingest = Ingestor(
        {VIEW.name: VIEW},
        make_producer=lambda: kafka_clients.producer(config),
        topics={VIEW.name: topic},
    )
    app = FeatureApp(
        layouts={VIEW.name: LAYOUT},
        views_doc=[],
        redis_client=RedisLink(redis_url),
        api_keys=KEYS,
        ingest=ingest,
    )
    with running_server(app) as url:
        yield url


def _events(count: int, *, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    start = time.time_ns() // 1_000_000 - 60_000
    return [
        {
            "card_id": f"card_{rng.randrange(300)}",
            "amount": round(rng.uniform(1, 500), 2),
            "merchant": f"m_{rng.randrange(40)}",
            "ts": start + i * 50,  # each card's events in time order: none is late
        }
        for i in range(count)
    ]


def _end_offsets(bootstrap: str, topic: str) -> int:
    consumer = kafka_clients.consumer({"bootstrap.servers": bootstrap, "group.id": "ingest-t"})
    try:
        return sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(3)
        )
    finally:
        consumer.close()


def test_an_ingest_with_wait_answers_once_every_event_is_served(
    kafka_bootstrap: str,
    redis_url: str,
    redis_client: redis.Redis,
    offline_dir: Path,
    tmp_path: Path,
    topic: str,
    topic_factory: Any,
    server_url: str,
) -> None:
    events = _events(1_000, seed=7)
    args = flow_args(topic, topic_factory(1))
    with FlowProcess(args, env=flow_env(kafka_bootstrap, redis_url, offline_dir),
                     log=tmp_path / "flow.log") as flow, Client(server_url, api_key=WRITER,
                                                                timeout=30) as client:  # fmt: skip
        # The flow is running once it serves a first event (its start takes seconds).
        warm_up = {**events[0], "card_id": "warm_up", "ts": events[0]["ts"] - 1}
        ready = client.ingest("card_txn", [warm_up], wait_ms=60_000)
        assert ready["served"] is True, f"{ready}\n{flow.output()}"
        try:
            answer = client.ingest("card_txn", events, wait_ms=5_000)
        except ServingError as exc:
            raise AssertionError(f"{exc}\n{flow.output()}") from exc
        assert answer["produced"] == 1_000
        assert answer["served"] is True, answer
        assert answer["pending_count"] == 0
        # Every event's entity is then served as of that event (read independently of the
        # endpoint: the Redis record itself), and through the endpoint.
        latest: dict[str, int] = {}
        for event in events:
            latest[event["card_id"]] = max(event["ts"], latest.get(event["card_id"], 0))
        cards = sorted(latest)
        raws = redis_client.mget([record_key(LAYOUT, c) for c in cards])
        for card, raw in zip(cards, raws, strict=True):
            assert raw is not None, card
            assert decode_record(raw)[0] >= latest[card], card
        served = client.get_many("card_txn", cards)
        assert all(s["as_of"] >= latest[s["entity"]] for s in served)
        # The topic holds exactly the events, keyed by card, decodable by the flow's decoder.
        messages = read_topic(kafka_bootstrap, topic)
        decoded = decoder_for(VIEW).decode(messages)
        assert not decoded.dead
        assert sorted((e[0], e[1]) for e in decoded.events) == sorted(
            (ev["card_id"], ev["ts"]) for ev in [warm_up, *events]
        )
        decoder = decoder_for(VIEW)
        for message in messages:
            (event,) = decoder.decode([message]).events
            assert message.key == event[0].encode()


def test_a_batch_with_one_bad_event_is_refused_whole_and_nothing_is_produced(
    kafka_bootstrap: str, topic: str, server_url: str
) -> None:
    events = _events(50, seed=3)
    events[17]["amount"] = "12,50"
    with Client(server_url, api_key=WRITER) as client:
        with pytest.raises(ServingError) as info:
            client.ingest("card_txn", events)
        assert info.value.status == 422
        assert "events[17]" in info.value.message
        assert "'amount'" in info.value.message
        assert "wrong_type" in info.value.message
        assert "events[16]" not in info.value.message
        # The good events alone go through (202: produced, no wait asked).
        good = client.ingest("card_txn", events[:17])
        assert good["produced"] == 17
        assert good["served"] is False
    assert _end_offsets(kafka_bootstrap, topic) == 17


def test_a_key_without_the_write_scope_is_forbidden(
    kafka_bootstrap: str, topic: str, server_url: str
) -> None:
    with Client(server_url, api_key=READER) as client:
        with pytest.raises(ServingError) as info:
            client.ingest("card_txn", _events(3, seed=1))
        assert info.value.status == 403
        assert "may not write view 'card_txn'" in info.value.message
        assert client.get("card_txn", "card_1")["found"] is False  # it still reads
    with Client(server_url) as anonymous:
        with pytest.raises(ServingError) as info:
            anonymous.ingest("card_txn", _events(3, seed=1))
        assert info.value.status == 401
    assert _end_offsets(kafka_bootstrap, topic) == 0
