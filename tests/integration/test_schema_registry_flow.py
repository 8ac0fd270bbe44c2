"""``freshet run`` on a topic in the Confluent wire format, with a schema registry (real broker,
real Redis, a registry served over HTTP on loopback)."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from confluent_kafka import Producer
from fastavro import parse_schema, schemaless_writer
from http_servers import running_server
from pipeline_harness import VIEW, FlowProcess, flow_args, flow_env, read_topic, redis_records

from freshet.decode.decoder import load_schema

VIEW_SCHEMA = load_schema(VIEW.source.schema_path)  # type: ignore[arg-type]
# A newer producer's schema: another field order, a field the view does not read.
EVOLVED = {
    "type": "record",
    "name": "Transaction",
    "namespace": "freshet.demo",
    "fields": [
        {"name": "merchant", "type": "string"},
        {"name": "channel", "type": "string"},
        {"name": "ts", "type": "long"},
        {"name": "amount", "type": "double"},
        {"name": "card_id", "type": "string"},
    ],
}
SCHEMAS = {11: VIEW_SCHEMA, 12: EVOLVED}
UNKNOWN_ID = 99


def registry_app(requests: list[str]) -> Callable[..., Any]:
    """A Confluent-compatible registry answering ``GET /schemas/ids/<id>`` (ASGI)."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        requests.append(path)
        schema_id = path.rsplit("/", 1)[-1]
        schema = SCHEMAS.get(int(schema_id)) if schema_id.isdigit() else None
        status = 200 if schema is not None else 404
        body = json.dumps(
            {"schema": json.dumps(schema)} if schema else {"error_code": 40403}
        ).encode()
        headers = [(b"content-type", b"application/vnd.schemaregistry.v1+json")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def framed(schema_id: int, schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    schemaless_writer(buf, parse_schema(dict(schema)), record)
    return b"\x00" + schema_id.to_bytes(4, "big") + buf.getvalue()


def test_flow_reads_confluent_records_with_registered_schemas_and_dead_letters_unknown_ids(
    kafka_bootstrap: str,
    topic_factory: Callable[..., str],
    redis_url: str,
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    topic, dlq = topic_factory(2), topic_factory(1)
    start = time.time_ns() // 1_000_000 - 60_000
    cards = [f"card-{i}" for i in range(20)]
    expected: dict[str, tuple[int, float, str]] = {}  # card -> (events, amount sum, last merchant)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": "true"})
    for i in range(400):
        card = cards[i % len(cards)]
        record = {"card_id": card, "amount": float(i % 7), "merchant": f"m{i}", "ts": start + i}
        if i % 2:
            value = framed(11, VIEW_SCHEMA, record)
        else:
            value = framed(12, EVOLVED, {**record, "channel": "web"})
        producer.produce(topic, key=card.encode(), value=value)
        n, total, _ = expected.get(card, (0, 0.0, ""))
        expected[card] = (n + 1, total + record["amount"], record["merchant"])
    unknown = framed(UNKNOWN_ID, VIEW_SCHEMA, {"card_id": "x", "amount": 1.0, "merchant": "m",
                                               "ts": start})  # fmt: skip
    producer.produce(topic, key=b"x", value=unknown)
    assert producer.flush(30) == 0

    requests: list[str] = []
    with running_server(registry_app(requests)) as registry_url:
        env = {
            **flow_env(kafka_bootstrap, redis_url, tmp_path / "offline"),
            "FRESHET_SCHEMA_REGISTRY_URL": registry_url,
        }
        flow = FlowProcess(
            [*flow_args(topic, dlq), "--stop-at-end"], env=env, log=tmp_path / "flow.log"
        )
        assert flow.wait(timeout=120) == 0, flow.output()

    stored = redis_records(redis_client, VIEW, cards)
    assert set(stored) == set(cards)
    for card, (count, total, merchant) in expected.items():
        values = stored[card][2]
        assert values[0] == count, card  # txn_count_5m
        assert abs(values[1] - total) < 1e-9, card  # amount_sum_1h
        assert values[4] == merchant, card  # merchant_last
    # Each schema id was fetched once; the unknown one is dead-lettered with its bytes.
    assert sorted(set(requests)) == [f"/schemas/ids/{i}" for i in (11, 12, UNKNOWN_ID)]
    assert len(requests) == 3
    (letter,) = read_topic(kafka_bootstrap, dlq)
    assert letter.value == unknown
    headers = dict(letter.headers or [])
    assert headers["freshet.reason"] == b"undecodable"
    assert b"schema id 99 is not in the schema registry" in headers["freshet.error"]
