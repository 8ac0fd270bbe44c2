"""The C loop (``flows/decode/_fastdecode.c``) decodes exactly what the Python loop decodes.

Both loops of ``AvroDecoder`` get the same batches — valid records, records with random
edits, arbitrary bytes, tombstones, entities and event times at and beyond the rules' edges,
long varints, bad union branches, Confluent headers with unknown ids — and must return equal
events and equal dead letters in the same order. ``shard_groups`` in C must group like the
Python definition (``zlib.crc32`` of the ``surrogateescape`` bytes). And the extension must be
built: CI installs with a C compiler, so a missing build is a failure, not a slow pass.
"""

from __future__ import annotations

import io
import struct
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_writer
from hypothesis import given
from hypothesis import strategies as st
from test_decode_fuzz import FUZZ, messages_of, mutated, valid_avro

from freshet.decode import decoder as decode
from freshet.decode.decoder import (
    EVENT_TIME_MAX_MS,
    EVENT_TIME_MIN_MS,
    AvroDecoder,
    load_schema,
)
from freshet.decode.messages import RawMessage
from freshet.dsl.registry import get_view

VIEW = get_view("card_txn")


def decoders(schema: dict[str, Any], **kwargs: Any) -> tuple[AvroDecoder, AvroDecoder]:
    args = {"view": "v", **kwargs}
    return AvroDecoder(schema, **args), AvroDecoder(schema, c_loop=False, **args)


CARD = decoders(
    load_schema(VIEW.source.schema_path),
    entity_field=VIEW.entity.key,
    time_field=VIEW.source.event_time_field,
    input_fields=VIEW.input_fields,
)

# Every type the C loop reads, unions with null either side, fields it skips, a time first.
WIDE = {
    "type": "record",
    "name": "Wide",
    "fields": [
        {"name": "ts", "type": "long"},
        {"name": "skipped_s", "type": "string"},
        {"name": "who", "type": ["null", "string"]},
        {"name": "f", "type": "float"},
        {"name": "n", "type": ["int", "null"]},
        {"name": "skipped_d", "type": ["null", "double"]},
        {"name": "d", "type": "double"},
    ],
}
WIDE_PARSED = parse_schema(WIDE)
WIDE_ARGS = {"entity_field": "who", "time_field": "ts", "input_fields": ["d", "n", "f"]}
SCHEMALESS = decoders(WIDE, **WIDE_ARGS)
CONFLUENT = decoders(WIDE, wire_format="confluent", schema_ids=frozenset({7}), **WIDE_ARGS)


def wide_record(
    ts: int, skipped: str, who: str | None, f: float, n: int | None, sd: float | None, d: float
) -> bytes:
    buf = io.BytesIO()
    record = {"ts": ts, "skipped_s": skipped, "who": who, "f": f, "n": n, "skipped_d": sd, "d": d}
    schemaless_writer(buf, WIDE_PARSED, record)
    return buf.getvalue()


_entities = (
    st.none()
    | st.text(max_size=6)
    | st.sampled_from(["", "a" * 1024, "a" * 1025, "x\x00", "x\x1f", "\x7f", "\x9f", "é", "\ud7ff"])
)
_times = st.integers(-(2**62), 2**62) | st.sampled_from(
    [EVENT_TIME_MIN_MS - 1, EVENT_TIME_MIN_MS, EVENT_TIME_MAX_MS - 1, EVENT_TIME_MAX_MS]
)
_floats = st.floats(width=32) | st.sampled_from([float("nan"), float("inf"), -0.0])
valid_wide = st.builds(
    wide_record,
    _times,
    st.text(max_size=4),
    _entities.filter(lambda e: e is None or "\ud7ff" not in e),
    _floats,
    st.none() | st.integers(-(2**31), 2**31 - 1),
    st.none() | st.floats(),
    st.floats(),
)


@st.composite
def odd_varints(draw: st.DrawFn) -> bytes:
    """A record whose first varint (the time) is 8-11 bytes long: the same value padded
    with 0x80s, or random bytes (values beyond 64 bits wrap)."""
    record = bytearray(draw(valid_wide))
    end = next(i for i, b in enumerate(record) if b < 0x80)
    length = draw(st.integers(8, 11))
    if draw(st.booleans()):
        varint = bytearray(record[: end + 1])
        while len(varint) < length:
            varint[-1] |= 0x80
            varint.append(0)
    else:
        varint = bytearray(b | 0x80 for b in draw(st.binary(min_size=length, max_size=length)))
        varint[-1] &= 0x7F
    return bytes(varint) + bytes(record[end + 1 :])


def zigzag(n: int) -> bytes:
    z, out = (n << 1) ^ (n >> 63), bytearray()
    while z >= 0x80:
        out.append(z & 0x7F | 0x80)
        z >>= 7
    return bytes(out + bytes([z]))


@st.composite
def union_branches(draw: st.DrawFn) -> bytes:
    """A record spelled by hand with any branch index (-3..3) in its three unions: negative
    indexes count from the end of the branch list, as in fastavro; others are refused."""
    branch = st.integers(-3, 3)
    utf8 = draw(st.text(max_size=3)).encode("utf-8", "surrogatepass")
    who, n, sd = draw(branch), draw(branch), draw(branch)
    return b"".join(
        [
            zigzag(EVENT_TIME_MIN_MS),
            zigzag(0),  # skipped_s: ""
            zigzag(who) + (zigzag(len(utf8)) + utf8 if who in (1, -1) else b""),
            struct.pack("<f", 1.5),
            zigzag(n) + (zigzag(7) if n in (0, -2) else b""),
            zigzag(sd) + (struct.pack("<d", 2.5) if sd in (1, -1) else b""),
            struct.pack("<d", 3.5),
        ]
    )


def confluent(schema_id: int, body: bytes) -> bytes:
    return b"\x00" + struct.pack(">I", schema_id) + body


def assert_same(pair: tuple[AvroDecoder, AvroDecoder], values: list[bytes | None]) -> None:
    fast, slow = pair
    messages = messages_of(values)
    # Compared as text: NaN equals itself there, and -0.0 differs from 0.0.
    assert repr(fast.decode(messages)) == repr(slow.decode(messages))


@FUZZ
@given(st.lists(valid_avro | mutated(valid_avro) | st.none() | st.binary(max_size=40), max_size=20))
def test_card_records_decode_the_same_in_c_and_python(values: list[bytes | None]) -> None:
    assert_same(CARD, values)


@FUZZ
@given(
    st.lists(
        valid_wide | mutated(valid_wide) | odd_varints() | union_branches(), min_size=1, max_size=20
    )
)
def test_every_field_type_decodes_the_same_in_c_and_python(values: list[bytes | None]) -> None:
    assert_same(SCHEMALESS, values)


@FUZZ
@given(
    st.lists(
        st.builds(
            confluent, st.sampled_from([7, 7, 8, 2**32 - 1]), valid_wide | mutated(valid_wide)
        )
        | mutated(st.builds(confluent, st.just(7), valid_wide))
        | st.binary(max_size=6),
        min_size=1,
        max_size=20,
    )
)
def test_confluent_records_decode_the_same_in_c_and_python(values: list[bytes | None]) -> None:
    assert_same(CONFLUENT, values)


def test_c_loop_keeps_the_order_of_records_it_hands_to_python() -> None:
    ok = wide_record(EVENT_TIME_MIN_MS, "", "a", 1.0, 1, None, 2.0)
    long_time = wide_record(EVENT_TIME_MIN_MS + 1, "", "a", 1.0, 1, None, 2.0)
    # The time as 9 bytes: read by the C loop; as 10: handed to the Python path.
    end = next(i for i, b in enumerate(long_time) if b < 0x80)
    padded = bytearray(long_time[: end + 1])
    while len(padded) < 10:
        padded[-1] |= 0x80
        padded.append(0)
    values = [ok, bytes(padded) + long_time[end + 1 :], ok, b"\xff", ok]
    fast, _ = SCHEMALESS
    out = fast.decode(messages_of(values))
    assert [e[4] for e in out.events] == [0, 1, 2, 4]
    assert [e[1] for e in out.events] == [EVENT_TIME_MIN_MS, EVENT_TIME_MIN_MS + 1] + [
        EVENT_TIME_MIN_MS
    ] * 2
    assert [d.offset for d in out.dead] == [3]


def test_consumer_messages_and_source_messages_decode_alike() -> None:
    """The C loop calls the accessors of either kind of message."""
    values = [wide_record(EVENT_TIME_MIN_MS + i, "s", f"e{i}", 0.5, i, None, 1.5) for i in range(3)]
    raw = messages_of(values)
    fast, slow = SCHEMALESS
    events = fast.decode(raw).events
    assert [e[0] for e in events] == ["e0", "e1", "e2"]
    assert events == slow.decode(raw).events
    # No timestamp, or one of type 0 (TIMESTAMP_NOT_AVAILABLE): -1, as in the Python loop.
    no_ts = [
        RawMessage(key=None, value=v, topic="t", partition=0, offset=i, timestamp=ts)
        for i, (v, ts) in enumerate(zip(values, [None, (0, 5), (2, 5)], strict=True))
    ]
    assert [e[5] for e in fast.decode(no_ts).events] == [-1, -1, 5]
    assert repr(fast.decode(no_ts)) == repr(slow.decode(no_ts))


@given(st.lists(st.text(max_size=8), max_size=50), st.integers(1, 300))
def test_shard_groups_in_c_group_like_crc32(entities: list[str], shards: int) -> None:
    events = [(e, i, (), 0, i, -1) for i, e in enumerate(entities)]
    assert decode.shard_groups(events, shards) == decode._shard_groups_py(events, shards)


def test_shard_groups_take_entities_with_lone_surrogates() -> None:
    events = [("\udcff-card", 1, (), 0, 0, -1), ("card", 2, (), 0, 1, -1)]
    assert decode.shard_groups(events, 7) == decode._shard_groups_py(events, 7)


def test_the_c_extension_is_built() -> None:
    if decode._fastdecode is None:
        pytest.fail(
            "freshet.decode._fastdecode is not built: `pip install -e .` needs a C compiler and "
            "Python headers (the flow then decodes ~2.5x faster)"
        )
    assert CARD[0]._fast is not None


def test_the_c_loop_takes_its_entity_length_limit_from_the_layout_constant(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(decode, "MAX_ENTITY_LENGTH", 3)
    values = [wide_record(1_714_521_600_000, "", w, 1.0, 1, None, 2.0) for w in ("abc", "abcd")]
    messages = [
        RawMessage(key=None, value=v, topic="t", partition=0, offset=i)
        for i, v in enumerate(values)
    ]
    for decoder in SCHEMALESS:
        events, dead = decoder.decode(messages)
        assert [e[0] for e in events] == ["abc"]
        assert [d.offset for d in dead] == [1]
