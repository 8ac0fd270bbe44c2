"""Fuzzing the decoders: random and mutated Avro/JSON bytes never raise out of ``decode``, and
every record comes out exactly once, as an event the rest of the flow can use or as a dead
letter that can be sent to Kafka as it is.

The demo views' real decoders (``decoder_for(card_txn)``: schemaless Avro of
``schemas/transaction.avsc``; ``card_txn_json``: JSON checked against the same schema) are fed
batches of: arbitrary bytes, tombstones, valid records with bytes flipped / cut / inserted /
repeated, JSON with random values in each field, and JSON texts with random edits; the reader
generated for flat Avro schemas (``freshet.decode.avro_reader``) must read exactly what fastavro
reads (same values and end offset, or a refusal). Hypothesis
shrinks any failure to a minimal record. (``tests/chaos/fuzz_decode_atheris.py`` runs the same
checks under coverage-guided atheris, outside CI.)
"""

from __future__ import annotations

import io
import json
from typing import Any

import orjson
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from freshet.decode.avro_reader import compile_reader
from freshet.decode.decoder import (
    EVENT_TIME_MAX_MS,
    EVENT_TIME_MIN_MS,
    AvroDecoder,
    Decoded,
    decoder_for,
    load_schema,
    strip_time_logical_types,
)
from freshet.decode.messages import REASONS, RawMessage
from freshet.dsl.registry import get_view
from freshet.sinks.redis_store import record_key

AVRO_VIEW = get_view("card_txn")
JSON_VIEW = get_view("card_txn_json")
AVRO = decoder_for(AVRO_VIEW)
JSON = decoder_for(JSON_VIEW)
_SCHEMA = parse_schema(strip_time_logical_types(load_schema(AVRO_VIEW.source.schema_path)))
FASTAVRO = AvroDecoder(
    load_schema(AVRO_VIEW.source.schema_path),
    view=AVRO_VIEW.name,
    entity_field=AVRO_VIEW.entity.key,
    time_field=AVRO_VIEW.source.event_time_field,
    input_fields=AVRO_VIEW.input_fields,
    generated_reader=False,
)
T0 = 1_714_564_800_000

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check_decoded(view: Any, messages: list[RawMessage], out: Decoded) -> None:
    """What the flow relies on, for any input."""
    # Every record exactly once: an event or a dead letter, never both, never dropped.
    offsets = sorted([e[4] for e in out.events] + [d.offset for d in out.dead])
    assert offsets == sorted(m.offset for m in messages)
    by_offset = {m.offset: m for m in messages}
    layout = view.layout()
    for entity, event_time, fields, partition, offset, kafka_ts in out.events:
        # Usable downstream: shard hashing and the Redis key encode the entity ...
        assert isinstance(entity, str)
        assert entity
        entity.encode("utf-8", "surrogateescape")
        record_key(layout, entity)
        # ... and the event time is integer milliseconds in the accepted range.
        assert type(event_time) is int
        assert EVENT_TIME_MIN_MS <= event_time < EVENT_TIME_MAX_MS
        assert len(fields) == len(view.input_fields)
        amount, merchant = dict(zip(view.input_fields, fields, strict=True)).values()
        assert type(amount) is float
        assert type(merchant) is str
        assert (partition, kafka_ts) == (
            by_offset[offset].partition,
            by_offset[offset].timestamp[1],
        )
    for letter in out.dead:
        source = by_offset[letter.offset]
        # The original bytes and origin, a known reason, an error text ...
        assert (letter.key, letter.value, letter.topic, letter.partition) == (
            source.key,
            source.value,
            source.topic,
            source.partition,
        )
        assert letter.reason in REASONS
        assert letter.reason != "late"
        assert letter.error
        assert letter.view == view.name
        # ... and headers Kafka takes as they are (the producer sends exactly these).
        for name, value in letter.kafka_headers():
            assert isinstance(name, str)
            assert isinstance(value, bytes | str | None)


def messages_of(values: list[bytes | None]) -> list[RawMessage]:
    return [
        RawMessage(
            key=b"k%d" % i,
            value=value,
            topic="fuzz",
            partition=i % 3,
            offset=i,
            timestamp=(1, T0 + i),
        )
        for i, value in enumerate(values)
    ]


def avro_record(card: str, amount: float, merchant: str, ts: int) -> bytes:
    buf = io.BytesIO()
    schemaless_writer(
        buf, _SCHEMA, {"card_id": card, "amount": amount, "merchant": merchant, "ts": ts}
    )
    return buf.getvalue()


_text = st.text(max_size=12)
_times = st.integers(min_value=0, max_value=2**63 - 1) | st.integers(EVENT_TIME_MIN_MS, T0)
_amounts = st.floats(allow_nan=True, allow_infinity=True)
valid_avro = st.builds(avro_record, _text, _amounts, _text, _times)


@st.composite
def mutated(draw: st.DrawFn, records: st.SearchStrategy[bytes]) -> bytes:
    """A record with random edits: flipped bytes, a cut, inserted bytes, a repeated slice."""
    data = bytearray(draw(records))
    for _ in range(draw(st.integers(1, 4))):
        edit = draw(st.sampled_from(["flip", "cut", "insert", "repeat", "set"]))
        at = draw(st.integers(0, len(data)))
        if edit == "flip" and data:
            i = min(at, len(data) - 1)
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif edit == "cut":
            data = data[:at] if draw(st.booleans()) else data[at:]
        elif edit == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif edit == "repeat":
            data[at:at] = data[at : at + draw(st.integers(1, 16))]
        elif edit == "set" and data:
            data[min(at, len(data) - 1)] = draw(st.sampled_from([0x00, 0x7F, 0x80, 0xFF, 0x01]))
    return bytes(data)


_values = st.none() | st.binary(max_size=64)


@FUZZ
@given(st.lists(_values, max_size=20))
def test_random_bytes_never_escape_either_decoder(values: list[bytes | None]) -> None:
    for view, decoder in ((AVRO_VIEW, AVRO), (JSON_VIEW, JSON)):
        messages = messages_of(values)
        check_decoded(view, messages, decoder.decode(messages))


@FUZZ
@given(st.lists(valid_avro | mutated(valid_avro) | _values, min_size=1, max_size=20))
def test_valid_and_mutated_avro_records_become_events_or_dead_letters(
    values: list[bytes | None],
) -> None:
    messages = messages_of(values)
    check_decoded(AVRO_VIEW, messages, AVRO.decode(messages))


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=6,
)
_iso = st.datetimes().map(lambda d: d.isoformat()) | st.datetimes(timezones=st.timezones()).map(
    lambda d: d.isoformat()
)


@st.composite
def json_records(draw: st.DrawFn) -> bytes:
    """A transaction object whose every field may be missing or any JSON value."""
    record: dict[str, Any] = {
        "card_id": draw(st.text(min_size=1, max_size=10) | st.integers() | _json_values),
        "amount": draw(st.floats() | st.integers(-(2**70), 2**70) | _json_values),
        "merchant": draw(_text | _json_values),
        "ts": draw(_times | _iso | _json_values),
    }
    for name in draw(st.sets(st.sampled_from(sorted(record)), max_size=2)):
        del record[name]
    record.update(draw(st.dictionaries(st.text(max_size=5), _json_values, max_size=2)))
    # The stdlib writes what orjson will not: big integers, NaN, escaped surrogates.
    return json.dumps(record, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")


valid_json = st.builds(
    lambda card, amount, merchant, ts: orjson.dumps(
        {"card_id": card, "amount": amount, "merchant": merchant, "ts": ts}
    ),
    st.text(min_size=1, max_size=10),
    st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**53), 2**53),
    _text,
    st.integers(EVENT_TIME_MIN_MS, EVENT_TIME_MAX_MS - 1),
)
_json_text_edits = mutated(valid_json | json_records())


@FUZZ
@given(st.lists(valid_json | json_records() | _json_text_edits | _values, min_size=1, max_size=20))
def test_json_records_with_any_values_or_edits_become_events_or_dead_letters(
    values: list[bytes | None],
) -> None:
    messages = messages_of(values)
    check_decoded(JSON_VIEW, messages, JSON.decode(messages))


@FUZZ
@given(st.text(max_size=12), st.text(max_size=12))
def test_json_escapes_for_lone_surrogates_are_refused_or_encodable(
    card: str, merchant: str
) -> None:
    # "\ud800" escapes decode to lone surrogates in some JSON parsers; an entity holding one
    # could not be hashed to a shard or written to Redis.
    text = b'{"card_id": "%s\\ud800", "amount": 1.0, "merchant": "%s", "ts": %d}' % (
        orjson.dumps(card)[1:-1],
        orjson.dumps(merchant)[1:-1],
        T0,
    )
    messages = messages_of([text])
    check_decoded(JSON_VIEW, messages, JSON.decode(messages))


# --- The generated Avro reader reads what fastavro reads ------------------------------------

_WIDE = {
    "type": "record",
    "name": "Wide",
    "fields": [
        {"name": "s", "type": "string"},
        {"name": "l", "type": "long"},
        {"name": "i", "type": "int"},
        {"name": "f", "type": "float"},
        {"name": "d", "type": "double"},
        {"name": "ns", "type": ["null", "string"]},
        {"name": "dn", "type": ["double", "null"]},
        {"name": "t", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    ],
}
_WIDE_STRIPPED = strip_time_logical_types(_WIDE)
_WIDE_PARSED = parse_schema(_WIDE_STRIPPED)
_WIDE_FIELDS = [f["name"] for f in _WIDE["fields"]]
_WIDE_READER = compile_reader(_WIDE_STRIPPED, ["t", "s", "dn", "l"])
_int32 = st.integers(-(2**31), 2**31 - 1)
_int64 = st.integers(-(2**63), 2**63 - 1)


def wide_record(s: str, n: int, i: int, f: float, d: float, ns: Any, dn: Any, t: int) -> bytes:
    buf = io.BytesIO()
    values = [s, n, i, f, d, ns, dn, t]
    schemaless_writer(buf, _WIDE_PARSED, dict(zip(_WIDE_FIELDS, values, strict=True)))
    return buf.getvalue()


valid_wide = st.builds(
    wide_record, _text, _int64, _int32, st.floats(width=32), st.floats(),
    st.none() | _text, st.none() | st.floats(), _int64,
)  # fmt: skip


def _same(a: Any, b: Any) -> bool:
    return repr(a) == repr(b)  # NaN == NaN for this purpose


@FUZZ
@given(valid_wide | mutated(valid_wide) | st.binary(max_size=64), st.sampled_from([0, 2]))
def test_the_generated_avro_reader_reads_what_fastavro_reads(value: bytes, start: int) -> None:
    assert _WIDE_READER is not None
    try:
        buf = io.BytesIO(value)
        buf.seek(start)
        record = schemaless_reader(buf, _WIDE_PARSED, None)
        expected: Any = ((record["t"], record["s"], record["dn"], record["l"]), buf.tell())
    except Exception:  # fastavro refuses it: so must the generated reader
        expected = "refused"
    try:
        got: Any = _WIDE_READER(value, start)
    except Exception:
        got = "refused"
    assert _same(got, expected)


@FUZZ
@given(st.lists(valid_avro | mutated(valid_avro) | _values, min_size=1, max_size=20))
def test_the_demo_decoder_decodes_like_fastavro(values: list[bytes | None]) -> None:
    messages = messages_of(values)
    out, expected = AVRO.decode(messages), FASTAVRO.decode(messages)
    assert _same(out.events, expected.events)
    assert [(d.offset, d.reason) for d in out.dead] == [(d.offset, d.reason) for d in expected.dead]


def test_the_demo_schema_is_read_by_a_generated_reader_and_others_by_fastavro() -> None:
    demo = strip_time_logical_types(load_schema(AVRO_VIEW.source.schema_path))
    assert compile_reader(demo, ["card_id", "ts", "amount", "merchant"]) is not None
    unsupported: list[Any] = [
        "boolean",
        "bytes",
        ["null", "string", "long"],
        {"type": "map", "values": "long"},
    ]
    for avro_type in unsupported:
        schema = {"type": "record", "name": "R", "fields": [{"name": "x", "type": avro_type}]}
        assert compile_reader(schema, ["x"]) is None
