"""freshet.decode.decoder: Kafka records of a view's source -> engine events, bad records -> dead
letters."""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from bytewax.connectors.kafka import KafkaSourceMessage
from confluent_kafka import Message
from fastavro import parse_schema, schemaless_writer
from hypothesis import given, settings
from hypothesis import strategies as st

from freshet.decode.decoder import (
    EVENT_TIME_MAX_MS,
    EVENT_TIME_MIN_MS,
    AvroDecoder,
    DecodeConfigError,
    JsonDecoder,
    decoder_for,
)
from freshet.decode.messages import RawMessage

SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "Txn",
    "namespace": "test",
    "fields": [
        {"name": "card_id", "type": "string"},
        {"name": "merchant_id", "type": "string"},
        {"name": "amount", "type": "double"},
        {"name": "items", "type": "long", "default": 1},
        {"name": "note", "type": ["null", "string"], "default": None},
        {"name": "event_time", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    ],
}
INPUT_FIELDS = ("amount", "merchant_id")
T0 = 1_714_564_800_000  # 2024-05-01T12:00:00Z
_PARSED = parse_schema(SCHEMA)


def avro(record: dict[str, Any], schema: Any = _PARSED) -> bytes:
    buf = io.BytesIO()
    schemaless_writer(buf, schema, record)
    return buf.getvalue()


def txn(card: Any = "c1", amount: Any = 12.5, t: Any = T0, **extra: Any) -> dict[str, Any]:
    return {
        "card_id": card,
        "merchant_id": "m7",
        "amount": amount,
        "items": 2,
        "note": None,
        "event_time": t,
        **extra,
    }


def msg(value: bytes | None, offset: int = 0, *, partition: int = 1, key: bytes = b"k") -> Any:
    return RawMessage(
        key=key,
        value=value,
        topic="transactions",
        partition=partition,
        offset=offset,
        timestamp=(1, T0 + 5),
        headers=[("trace", b"abc")],
    )


def avro_decoder(**kwargs: Any) -> AvroDecoder:
    return AvroDecoder(
        SCHEMA,
        view="card_txn",
        entity_field="card_id",
        time_field="event_time",
        input_fields=INPUT_FIELDS,
        **kwargs,
    )


def json_decoder(schema: dict[str, Any] | None = SCHEMA, fields: Any = INPUT_FIELDS) -> JsonDecoder:
    return JsonDecoder(
        view="card_txn_json",
        entity_field="card_id",
        time_field="event_time",
        input_fields=fields,
        schema=schema,
    )


# --- Avro --------------------------------------------------------------------------------


def test_avro_records_become_events_with_fields_in_input_order_and_int_millis() -> None:
    out = avro_decoder().decode([msg(avro(txn("c1", 10.0)), 5), msg(avro(txn("c2", 3.5)), 6)])

    assert out.dead == []
    assert out.events == [
        ("c1", T0, (10.0, "m7"), 1, 5, T0 + 5),
        ("c2", T0, (3.5, "m7"), 1, 6, T0 + 5),
    ]
    assert type(out.events[0][1]) is int  # timestamp-millis is not turned into a datetime


def test_avro_decoder_accepts_bytewax_kafka_source_messages() -> None:
    item = KafkaSourceMessage(
        key=b"c1",
        value=avro(txn()),
        topic="transactions",
        headers=[],
        offset=42,
        partition=2,
        timestamp=(1, T0 + 9),
    )

    out = avro_decoder().decode([item])

    assert out.events == [("c1", T0, (12.5, "m7"), 2, 42, T0 + 9)]


def consumer_message(raw: RawMessage) -> Message:
    """``raw`` as the Kafka consumer returns it (fields are methods)."""
    return Message(
        topic=raw.topic,
        partition=raw.partition,
        offset=raw.offset,
        key=raw.key,
        value=raw.value,
        timestamp=raw.timestamp or (0, -1),
        headers=raw.headers,
    )


@pytest.mark.parametrize("decoder", [avro_decoder, json_decoder])
def test_consumer_messages_decode_like_their_attribute_copies(decoder: Any) -> None:
    encode = avro if decoder is avro_decoder else orjson.dumps
    records = [
        msg(encode(txn("c1", 10.0)), 5),
        msg(b"\xff\xfe not a record", 6, key=b"bad"),
        msg(encode(txn("c2", 3.5, t=T0 + 1)), 7, partition=0),
        msg(None, 8),
    ]

    native = decoder().decode([consumer_message(r) for r in records])

    assert native == decoder().decode(records)
    assert [e[4] for e in native.events] == [5, 7]
    assert [(d.offset, d.key, d.headers) for d in native.dead] == [
        (6, b"bad", [("trace", b"abc")]),
        (8, b"k", [("trace", b"abc")]),
    ]


def test_missing_kafka_timestamp_is_minus_one() -> None:
    raw = RawMessage(
        key=None, value=avro(txn()), topic="t", partition=0, offset=0, timestamp=(0, -1)
    )

    assert avro_decoder().decode([raw]).events[0][5] == -1


def test_garbage_bytes_become_an_undecodable_dead_letter_with_the_original_record() -> None:
    bad = b"\xff\xfe not avro at all"

    out = avro_decoder().decode([msg(avro(txn()), 1), msg(bad, 2, key=b"kk"), msg(avro(txn()), 3)])

    assert [e[4] for e in out.events] == [1, 3]
    (letter,) = out.dead
    assert letter.reason == "undecodable"
    assert "card_txn" in letter.error
    assert (letter.key, letter.value, letter.topic, letter.partition, letter.offset) == (
        b"kk",
        bad,
        "transactions",
        1,
        2,
    )
    assert letter.headers == [("trace", b"abc")]


def test_tombstone_is_a_dead_letter_not_a_crash() -> None:
    (letter,) = avro_decoder().decode([msg(None)]).dead

    assert letter.reason == "undecodable"
    assert "tombstone" in letter.error


def test_record_written_with_a_smaller_schema_is_refused() -> None:
    small = parse_schema(
        {
            "type": "record",
            "name": "Old",
            "fields": [
                {"name": "card_id", "type": "string"},
                {"name": "event_time", "type": "long"},
            ],
        }
    )

    out = avro_decoder().decode([msg(avro({"card_id": "c1", "event_time": T0}, small))])

    assert out.events == []
    assert out.dead[0].reason == "undecodable"


def test_trailing_bytes_mean_another_schema_and_are_refused() -> None:
    (letter,) = avro_decoder().decode([msg(avro(txn()) + b"\x02\x04")]).dead

    assert letter.reason == "undecodable"
    assert "bytes" in letter.error


@pytest.mark.parametrize(
    ("record", "reason", "words"),
    [
        (txn(card=""), "invalid_value", ["card_id", "empty"]),
        (txn(t=1_714_564_800), "invalid_value", ["event_time", "seconds"]),
        (txn(t=EVENT_TIME_MAX_MS), "invalid_value", ["event_time", "outside"]),
    ],
)
def test_invalid_avro_values_name_the_field_and_the_problem(
    record: dict[str, Any], reason: str, words: list[str]
) -> None:
    (letter,) = avro_decoder().decode([msg(avro(record))]).dead

    assert letter.reason == reason
    for word in words:
        assert word in letter.error


def test_confluent_wire_format_header_is_stripped() -> None:
    framed = b"\x00" + (7).to_bytes(4, "big") + avro(txn())

    out = avro_decoder(wire_format="confluent").decode([msg(framed)])

    assert out.events == [("c1", T0, (12.5, "m7"), 1, 0, T0 + 5)]


def test_confluent_wire_format_refuses_missing_magic_byte_and_unknown_schema_ids() -> None:
    decoder = avro_decoder(wire_format="confluent", schema_ids=frozenset({7}))
    unframed = avro(txn(card="x"))  # starts with the string length, not 0x00
    other_id = b"\x00" + (8).to_bytes(4, "big") + avro(txn())

    out = decoder.decode([msg(unframed, 1), msg(other_id, 2), msg(b"\x00\x00", 3)])

    assert out.events == []
    errors = [d.error for d in out.dead]
    assert "magic byte" in errors[0]
    assert "schema id 8" in errors[1]
    assert "magic byte" in errors[2]


def test_avro_entity_of_type_long_becomes_its_decimal_text() -> None:
    schema = {
        "type": "record",
        "name": "T",
        "fields": [{"name": "user", "type": "long"}, {"name": "ts", "type": "long"}],
    }
    decoder = AvroDecoder(schema, view="v", entity_field="user", time_field="ts", input_fields=())

    out = decoder.decode([msg(avro({"user": 12345, "ts": T0}, parse_schema(schema)))])

    assert out.events == [("12345", T0, (), 1, 0, T0 + 5)]


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"entity_field": "card"}, ["entity field 'card'", "card_id, merchant_id"]),
        ({"time_field": "merchant_id"}, ["event time field 'merchant_id'"]),
        ({"input_fields": ("amount", "amt")}, ["input field 'amt'"]),
        ({"wire_format": "protobuf"}, ["protobuf"]),
    ],
)
def test_avro_config_errors_name_the_bad_setting(kwargs: dict[str, Any], words: list[str]) -> None:
    args: dict[str, Any] = {
        "view": "v",
        "entity_field": "card_id",
        "time_field": "event_time",
        "input_fields": INPUT_FIELDS,
        **kwargs,
    }
    with pytest.raises(DecodeConfigError) as info:
        AvroDecoder(SCHEMA, **args)
    for word in words:
        assert word in str(info.value)


# --- JSON --------------------------------------------------------------------------------


def test_json_records_become_events_and_int_amounts_become_floats() -> None:
    out = json_decoder().decode(
        [msg(orjson.dumps(txn(amount=3.0)), 1), msg(orjson.dumps(txn(amount=4)), 2)]
    )

    assert out.dead == []
    assert out.events == [
        ("c1", T0, (3.0, "m7"), 1, 1, T0 + 5),
        ("c1", T0, (4.0, "m7"), 1, 2, T0 + 5),
    ]
    assert type(out.events[1][2][0]) is float


def test_json_event_time_may_be_iso_8601_with_an_offset() -> None:
    out = json_decoder().decode(
        [
            msg(orjson.dumps(txn(t="2024-05-01T12:00:00.250Z"))),
            msg(orjson.dumps(txn(t="2024-05-01T14:00:00+02:00"))),
        ]
    )

    assert [e[1] for e in out.events] == [T0 + 250, T0]


@pytest.mark.parametrize(
    ("value", "reason", "words"),
    [
        (b"{not json", "undecodable", ["not JSON"]),
        (b"[1, 2]", "wrong_type", ["object", "list"]),
        (
            orjson.dumps({"merchant_id": "m", "amount": 1.0, "event_time": T0}),
            "missing_field",
            ["card_id"],
        ),
        (orjson.dumps(txn(card=["c"])), "wrong_type", ["card_id", "list"]),
        (orjson.dumps(txn(t=1.7e12)), "wrong_type", ["event_time", "milliseconds", "float"]),
        (orjson.dumps(txn(t="2024-05-01T12:00:00")), "invalid_value", ["event_time", "UTC offset"]),
        (orjson.dumps(txn(t="yesterday")), "invalid_value", ["event_time", "ISO-8601"]),
        (orjson.dumps(txn(amount="12.5")), "wrong_type", ["'amount'", "number", "str"]),
        (orjson.dumps(txn(amount=True)), "wrong_type", ["'amount'", "number", "bool"]),
        (orjson.dumps(txn(amount=None)), "missing_field", ["'amount'", "null"]),
        (
            orjson.dumps({"card_id": "c", "event_time": T0, "amount": 1.0}),
            "missing_field",
            ["'merchant_id'"],
        ),
    ],
)
def test_bad_json_records_become_dead_letters_naming_field_and_problem(
    value: bytes, reason: str, words: list[str]
) -> None:
    out = json_decoder().decode([msg(value, 9)])

    assert out.events == []
    (letter,) = out.dead
    assert (letter.reason, letter.value, letter.offset) == (reason, value, 9)
    for word in words:
        assert word in letter.error


def test_json_missing_fields_take_schema_defaults_or_null_when_nullable() -> None:
    decoder = json_decoder(fields=("items", "note", "amount"))
    record = {"card_id": "c1", "merchant_id": "m", "amount": 2.0, "event_time": T0}

    out = decoder.decode([msg(orjson.dumps(record))])

    assert out.events[0][2] == (1, None, 2.0)


def test_json_without_schema_only_checks_entity_time_and_presence() -> None:
    decoder = json_decoder(schema=None)
    odd = orjson.dumps({"card_id": 17, "event_time": T0, "amount": "x", "merchant_id": [1]})
    missing = orjson.dumps({"card_id": "c", "event_time": T0, "amount": 1})

    out = decoder.decode([msg(odd, 1), msg(missing, 2)])

    assert out.events == [("17", T0, ("x", [1]), 1, 1, T0 + 5)]
    assert out.dead[0].reason == "missing_field"
    assert "'merchant_id'" in out.dead[0].error


# --- both, and the view entry point ------------------------------------------------------

# Valid entity ids hold no control characters (freshet.sinks.layout.ENTITY_FORBIDDEN_CHARS).
_cards = st.text(
    st.characters(exclude_categories=("Cc", "Cs")),
    min_size=1,
    max_size=20,
)
_amounts = st.floats(allow_nan=False, allow_infinity=False, width=64)
_times = st.integers(min_value=EVENT_TIME_MIN_MS, max_value=EVENT_TIME_MAX_MS - 1)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_cards, _amounts, _times, st.text(max_size=10)), max_size=30))
def test_avro_and_json_decoders_agree_on_any_valid_record(
    rows: list[tuple[str, float, int, str]],
) -> None:
    records = [
        {"card_id": c, "merchant_id": m, "amount": a, "items": 1, "note": None, "event_time": t}
        for c, a, t, m in rows
    ]

    from_avro = avro_decoder().decode([msg(avro(r), i) for i, r in enumerate(records)])
    from_json = json_decoder().decode([msg(orjson.dumps(r), i) for i, r in enumerate(records)])

    assert from_avro.dead == from_json.dead == []
    assert from_avro.events == from_json.events
    assert [(e[0], e[1], e[2]) for e in from_avro.events] == [
        (r["card_id"], r["event_time"], (r["amount"], r["merchant_id"])) for r in records
    ]


def _view(encoding: str, schema_path: Path | None) -> Any:
    return SimpleNamespace(
        name="card_txn",
        entity=SimpleNamespace(key="card_id", keys=("card_id",)),
        input_fields=INPUT_FIELDS,
        source=SimpleNamespace(
            topic="transactions",
            encoding=encoding,
            schema_path=schema_path,
            event_time_field="event_time",
        ),
    )


def test_decoder_for_reads_the_views_schema_file_and_encoding(tmp_path: Path) -> None:
    path = tmp_path / "txn.avsc"
    path.write_text(json.dumps(SCHEMA))

    avro_out = decoder_for(_view("avro", path)).decode([msg(avro(txn()))])
    json_out = decoder_for(_view("json", path)).decode([msg(orjson.dumps(txn()))])

    assert avro_out.events == json_out.events == [("c1", T0, (12.5, "m7"), 1, 0, T0 + 5)]


def test_decoder_for_names_the_missing_schema_file_and_unknown_encodings(tmp_path: Path) -> None:
    with pytest.raises(DecodeConfigError, match=r"nope\.avsc"):
        decoder_for(_view("avro", tmp_path / "nope.avsc"))
    with pytest.raises(DecodeConfigError, match="'protobuf'"):
        decoder_for(_view("protobuf", None))


def test_entity_ids_longer_than_the_store_takes_are_dead_letters_in_both_encodings() -> None:
    from freshet.sinks.layout import MAX_ENTITY_LENGTH

    longest, too_long = "c" * MAX_ENTITY_LENGTH, "c" * (MAX_ENTITY_LENGTH + 1)
    for decoder, encode in ((avro_decoder(), avro), (json_decoder(), orjson.dumps)):
        out = decoder.decode(
            [msg(encode(txn(card=longest)), 1), msg(encode(txn(card=too_long)), 2)]
        )

        assert [e[0] for e in out.events] == [longest]
        (letter,) = out.dead
        assert letter.offset == 2
        assert letter.reason == "invalid_value"
        assert f"maximum is {MAX_ENTITY_LENGTH}" in letter.error


def test_entity_ids_with_control_characters_are_dead_letters_in_both_encodings() -> None:
    for decoder, encode in ((avro_decoder(), avro), (json_decoder(), orjson.dumps)):
        out = decoder.decode([msg(encode(txn(card="c\n1")), 1), msg(encode(txn(card="c 1")), 2)])

        assert [e[0] for e in out.events] == ["c 1"]
        (letter,) = out.dead
        assert (letter.offset, letter.reason) == (1, "invalid_value")
        assert "control characters" in letter.error
