"""Mutated records through the real flow: each one the decoder refuses lands on the
dead-letter topic with its original bytes, the flow keeps running, the good records' rows are
exactly the reference's. (The decoders alone are fuzzed in ``tests/unit/test_decode_fuzz.py``;
the endpoint's bad requests are in ``test_endpoint_input.py``.)"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

from confluent_kafka import Producer
from pipeline_harness import (
    VIEW,
    FlowProcess,
    Reference,
    flow_args,
    flow_env,
    offline_rows,
    read_topic,
)

from freshet.decode.decoder import decoder_for
from freshet.ops.generator import GeneratorConfig, TransactionStream


def _mutate(rng: random.Random, value: bytes) -> bytes:
    data = bytearray(value)
    for _ in range(rng.randint(1, 3)):
        at = rng.randint(0, len(data))
        edit = rng.choice(["flip", "cut", "insert", "repeat"])
        if edit == "flip" and data:
            data[min(at, len(data) - 1)] ^= 1 << rng.randint(0, 7)
        elif edit == "cut":
            data = data[:at]
        elif edit == "insert":
            data[at:at] = rng.randbytes(rng.randint(1, 6))
        elif edit == "repeat":
            data[at:at] = data[at : at + rng.randint(1, 12)]
    return bytes(data)


def test_mutated_records_all_land_on_the_dead_letter_topic_and_good_ones_are_computed(
    kafka_bootstrap: str,
    redis_url: str,
    topic_factory: Callable[..., str],
    offline_dir: Path,
    tmp_path: Path,
) -> None:
    # One partition: a mutated record may name another card than its key, so only a single
    # partition keeps every card's events in one order for the flow and the reference alike.
    topic, dlq = topic_factory(1), topic_factory(1)
    rng = random.Random(81)
    stream = TransactionStream(VIEW, GeneratorConfig(cards=200, late_fraction=0, bad_fraction=0))
    producer = Producer(
        {"bootstrap.servers": kafka_bootstrap, "linger.ms": "20", "enable.idempotence": True}
    )
    for record in stream.records(3_000, start_ms=1_714_564_800_000, rate=500):
        value = _mutate(rng, record.value) if rng.random() < 0.2 else record.value
        producer.produce(topic, value, record.key)
        producer.poll(0)
    for value in (None, b"", b"\x00" * 1_000, rng.randbytes(100_000)):  # tombstone, empties, big
        producer.produce(topic, value, b"odd")
    assert producer.flush(30) == 0

    messages = read_topic(kafka_bootstrap, topic)
    decoded = decoder_for(VIEW).decode(messages)
    refused = {(d.partition, d.offset) for d in decoded.dead}
    ref = Reference.of(VIEW, messages)
    assert len(refused) > 400
    assert len(decoded.events) > 2_000

    env = flow_env(kafka_bootstrap, redis_url, offline_dir)
    run = FlowProcess(flow_args(topic, dlq, "--stop-at-end"), env=env, log=tmp_path / "flow.log")
    assert run.wait(timeout=90) == 0, run.output()

    letters = read_topic(kafka_bootstrap, dlq)
    by_origin = {}
    for letter in letters:
        headers = {k: bytes(v or b"") for k, v in letter.headers or []}
        origin = (int(headers["freshet.source.partition"]), int(headers["freshet.source.offset"]))
        by_origin[origin] = (letter.value, headers["freshet.reason"].decode())
    undecodable = {o for o, (_, reason) in by_origin.items() if reason != "late"}
    assert undecodable == refused
    assert len(by_origin) - len(undecodable) == ref.late
    originals = {(m.partition, m.offset): m.value for m in messages}
    for origin in refused:
        assert by_origin[origin][0] == originals[origin], origin  # the record's own bytes
    ref.check_rows(offline_rows(offline_dir, VIEW))
    print(
        f"\n{len(messages)} records ({len(refused)} refused by the decoder, {ref.late} late): "
        f"{len(letters)} dead letters, every refused record among them with its bytes"
    )
