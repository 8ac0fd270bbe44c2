"""Bad and late records land in the dead-letter topic, intact and explained (real broker)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition

from freshet.decode.decoder import decoder_for
from freshet.decode.messages import DeadLetter, RawMessage
from freshet.dsl.registry import get_view
from freshet.engine.view_engine import ViewEngine
from freshet.ops.generator import GeneratorConfig, produce
from freshet.stream.deadletter import (
    DeadLetterError,
    DeadLetterProducer,
    RecentRecords,
    SourceRecords,
    late_letter,
)

DEADLINE_S = 60.0
START = 1_714_564_800_000


def consume_all(bootstrap: str, topic: str, expected: int, partitions: int = 3) -> list[Message]:
    """Every record of ``topic`` (``expected`` of them), in partition then offset order."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "freshet-test-unused",  # manual assign: no group membership
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    out: list[Message] = []
    deadline = time.monotonic() + DEADLINE_S
    try:
        while len(out) < expected and time.monotonic() < deadline:
            for message in consumer.consume(num_messages=1000, timeout=0.5):
                assert message.error() is None, message.error()
                out.append(message)
        # Nothing more than expected arrives.
        out += [m for m in consumer.consume(num_messages=10, timeout=0.5) if m.error() is None]
    finally:
        consumer.close()
    assert len(out) == expected, f"{topic}: {len(out)} records, expected {expected}"
    return sorted(out, key=lambda m: (m.partition(), m.offset()))


def headers_of(message: Message) -> dict[str, bytes]:
    return {k: v for k, v in (message.headers() or []) if v is not None}


def test_malformed_and_late_records_land_in_the_dlq_with_their_bytes_and_reasons(
    kafka_bootstrap: str, topic_factory: Callable[..., str]
) -> None:
    view = get_view("card_txn")
    source, dlq = topic_factory(3), topic_factory(1)
    config = GeneratorConfig(cards=300, bad_fraction=0.03, late_fraction=0.02, seed=7)
    sent = produce(
        kafka_bootstrap,
        source,
        view=view,
        count=4_000,
        rate=2_000,
        pace=False,
        config=config,
        start_ms=START,
    )
    assert sent.total == 4_000
    assert sent.bad > 60
    assert sent.late > 40

    # The pipeline's path for one view: decode, engine, dead letters for the refused.
    records = [RawMessage.from_confluent(m) for m in consume_all(kafka_bootstrap, source, 4_000)]
    decoded = decoder_for(view).decode(records)
    engine = ViewEngine(view)
    states: dict[str, Any] = {}
    letters: list[DeadLetter] = list(decoded.dead)
    for event in sorted(decoded.events, key=lambda e: (e[3], e[4])):
        state = states.setdefault(event[0], engine.new_state())
        if engine.apply(state, event[0], event[1], event[2], event[3], event[4]) is None:
            letters.append(late_letter(view, event, watermark_ms=state.wm, topic=source))
    delivered: Counter[tuple[str, str]] = Counter()
    producer = DeadLetterProducer(
        {"bootstrap.servers": kafka_bootstrap},
        on_delivered=lambda v, reason: delivered.update([(v, reason)]),
    ).build()
    assert producer.send(dlq, letters) == sent.bad + sent.late
    producer.close()

    assert delivered == {("card_txn", "undecodable"): sent.bad, ("card_txn", "late"): sent.late}
    by_origin = {(r.partition, r.offset): r for r in records}
    reasons: Counter[str] = Counter()
    for message in consume_all(kafka_bootstrap, dlq, sent.bad + sent.late, partitions=1):
        h = headers_of(message)
        assert h["freshet.view"] == b"card_txn"
        assert h["freshet.source.topic"] == source.encode()
        origin = by_origin[(int(h["freshet.source.partition"]), int(h["freshet.source.offset"]))]
        reason = h["freshet.reason"].decode()
        reasons[reason] += 1
        assert message.key() == origin.key
        if reason == "late":
            assert h["freshet.error"].startswith(b"late: event time ")
            assert h["freshet.value.encoding"] == b"decoded-json"
            replayed = orjson.loads(message.value())  # type: ignore[arg-type]
            assert replayed["card_id"].encode() == origin.key
            assert replayed["ts"] < int(h["freshet.error"].split(b"watermark ")[1].split()[0])
        else:
            assert message.value() == origin.value  # the original bytes, untouched
            assert b"not Avro" in h["freshet.error"]
    assert reasons == {"undecodable": sent.bad, "late": sent.late}


def test_late_letters_get_their_source_records_back_and_keep_json_only_when_gone(
    kafka_bootstrap: str, topic_factory: Callable[..., str]
) -> None:
    view = get_view("card_txn")
    source = topic_factory(2)
    config = GeneratorConfig(cards=50, bad_fraction=0.0, late_fraction=0.0, seed=3)
    produce(kafka_bootstrap, source, view=view, count=400, rate=2_000, pace=False,
            config=config, start_ms=START)  # fmt: skip
    records = {(m.partition(), m.offset()): m for m in consume_all(kafka_bootstrap, source, 400, 2)}
    events = {(e[3], e[4]): e for e in decoder_for(view).decode(
        [RawMessage.from_confluent(m) for m in records.values()]
    ).events}  # fmt: skip
    picked = [(0, 3), (0, 40), (1, 0), (1, 17), (1, 18)]
    letters = [
        late_letter(view, events[at], watermark_ms=START + 10**9, topic=source) for at in picked
    ]
    gone = late_letter(view, (*events[(1, 0)][:4], 10**6, -1), watermark_ms=START, topic=source)
    undecodable = DeadLetter("undecodable", "bad", view.name, b"k", b"\xff", source, 0, 5)
    # Nothing remembered: every record is read back from the topic.
    sources = SourceRecords(
        {"bootstrap.servers": kafka_bootstrap}, recent=RecentRecords(), timeout_s=5
    )
    out = sources.restore([*letters, gone, undecodable])
    for letter, at in zip(out, picked, strict=False):
        origin = records[at]
        assert (letter.key, letter.value, letter.headers) == (
            origin.key(), origin.value(), origin.headers()
        )  # fmt: skip
        assert letter.reason == "late"
        assert letter.error.startswith("late: event time ")
    # Offset 1,000,000 does not exist: that letter keeps its JSON and says so.
    assert out[len(picked)] == gone
    assert dict(out[len(picked)].kafka_headers())["freshet.value.encoding"] == b"decoded-json"
    assert out[-1] == undecodable  # letters with their bytes are left alone


def test_original_headers_are_kept_ahead_of_freshets(
    kafka_bootstrap: str, topic_factory: Callable[..., str]
) -> None:
    dlq = topic_factory(1)
    letter = DeadLetter(
        reason="wrong_type",
        error="field 'amount' must be a number, got str '12.50'",
        view="card_txn_json",
        key=b"card_000001",
        value=b'{"amount": "12.50"}',
        topic="transactions_json",
        partition=2,
        offset=41,
        headers=[("traceparent", b"00-abc-01"), ("empty", None)],
    )
    producer = DeadLetterProducer({"bootstrap.servers": kafka_bootstrap}).build()
    producer.send(dlq, [letter])
    producer.close()

    (message,) = consume_all(kafka_bootstrap, dlq, 1, partitions=1)

    assert message.headers() == [
        ("traceparent", b"00-abc-01"),
        ("empty", None),
        ("freshet.error", b"field 'amount' must be a number, got str '12.50'"),
        ("freshet.reason", b"wrong_type"),
        ("freshet.view", b"card_txn_json"),
        ("freshet.source.topic", b"transactions_json"),
        ("freshet.source.partition", b"2"),
        ("freshet.source.offset", b"41"),
    ]
    assert (message.key(), message.value()) == (letter.key, letter.value)


def test_a_full_producer_queue_waits_instead_of_dropping(
    kafka_bootstrap: str, topic_factory: Callable[..., str]
) -> None:
    dlq = topic_factory(1)
    letters = [
        DeadLetter("undecodable", "bad", "v", b"k", b"x" * 100, "src", 0, i) for i in range(3_000)
    ]
    producer = DeadLetterProducer(
        # A queue of 50 records: BufferError on almost every produce call.
        {"bootstrap.servers": kafka_bootstrap, "queue.buffering.max.messages": "50"}
    ).build()

    assert producer.send(dlq, letters) == 3_000
    producer.close()

    offsets = [
        int(headers_of(m)["freshet.source.offset"])
        for m in consume_all(kafka_bootstrap, dlq, 3_000, partitions=1)
    ]
    assert offsets == list(range(3_000))  # all of them, in order


def test_a_dead_letter_kafka_refuses_raises_naming_its_origin(kafka_bootstrap: str) -> None:
    producer = DeadLetterProducer(
        {"bootstrap.servers": kafka_bootstrap, "message.max.bytes": "2000"}
    ).build()
    huge = DeadLetter("undecodable", "bad", "v", b"k", b"x" * 5_000, "src", 1, 99)

    with pytest.raises(DeadLetterError, match=r"src\[1\]@99"):
        producer.send("never-created", [huge])


def test_build_fails_fast_when_no_broker_answers() -> None:
    producer = DeadLetterProducer({"bootstrap.servers": "127.0.0.1:1"}, connect_timeout_s=1.0)
    started = time.monotonic()

    with pytest.raises(DeadLetterError, match=r"127\.0\.0\.1:1"):
        producer.build()
    assert time.monotonic() - started < 10


def test_generator_produce_counts_match_what_the_topic_holds(
    kafka_bootstrap: str, topic_factory: Callable[..., str]
) -> None:
    topic = topic_factory(3)
    rate = 2_000.0

    sent = produce(
        kafka_bootstrap,
        topic,
        view=get_view("card_txn_json"),
        count=1_000,
        rate=rate,
        config=GeneratorConfig(bad_fraction=0.05, late_fraction=0.05, seed=3),
    )

    assert sent.seconds >= 1_000 / rate * 0.9  # paced at the rate
    messages = consume_all(kafka_bootstrap, topic, 1_000)
    decoded = decoder_for(get_view("card_txn_json")).decode(
        [RawMessage.from_confluent(m) for m in messages]
    )
    assert len(decoded.dead) == sent.bad == sum(sent.by_shape.values())
    assert len(decoded.events) == sent.good + sent.late
    # Keyed by card: one card's records all sit in one partition.
    partitions: dict[bytes, set[int]] = {}
    for m in messages:
        partitions.setdefault(m.key() or b"", set()).add(m.partition())
    assert all(len(p) == 1 for p in partitions.values())
