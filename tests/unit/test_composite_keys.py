"""Composite entity keys: the stored encoding is injective and readable back, and the decoder
turns a view's key fields into that one id (or a dead letter naming the bad key field)."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from freshet.decode.decoder import decoder_for
from freshet.decode.messages import RawMessage
from freshet.dsl.definitions import Aggregation, Entity, Feature, FeatureView, Source
from freshet.engine.view_engine import ViewEngine
from freshet.sinks.layout import decode_entity, encode_entity

VIEW = FeatureView(
    name="card_merchant",
    version=1,
    entity=Entity("card_merchant", key=("card_id", "merchant")),
    source=Source(topic="t", encoding="json", schema="transaction.avsc", event_time_field="ts"),
    features=(Feature("n", Aggregation.COUNT, window="1h"),
              Feature("amount_sum", Aggregation.SUM, "amount", window="1h")),
)  # fmt: skip
T0 = 1_767_225_600_000

keys = st.lists(st.text(alphabet="ab|%7C25", max_size=6), min_size=2, max_size=4)


@given(keys, keys)
def test_the_encoding_is_injective_and_decodes_back(a: list[str], b: list[str]) -> None:
    assert decode_entity(encode_entity(a), len(a)) == tuple(a)
    if len(a) == len(b) and a != b:
        assert encode_entity(a) != encode_entity(b)


def test_the_documented_examples() -> None:
    assert encode_entity(("c1", "m2")) == "c1|m2"
    assert encode_entity(("c|1", "50%")) == "c%7C1|50%25"
    assert encode_entity(("solo",)) == "solo"  # one field: the value itself
    with pytest.raises(ValueError, match="not a key of 2 fields"):
        decode_entity("a|b|c", 2)


def _record(offset: int, **fields: object) -> RawMessage:
    value = {"card_id": "c1", "merchant": "m|2", "amount": 2.5, "ts": T0 + offset, **fields}
    return RawMessage(key=b"c1", value=orjson.dumps(value), topic="t", partition=0,
                      offset=offset)  # fmt: skip


def test_the_decoder_joins_the_key_fields_and_dead_letters_a_bad_one() -> None:
    records = [_record(0), _record(1, merchant=""), _record(2, merchant="m\x01"), _record(3)]
    decoded = decoder_for(VIEW).decode(records)
    assert [(e[0], e[1], e[2], e[4]) for e in decoded.events] == [
        ("c1|m%7C2", T0, (2.5,), 0),
        ("c1|m%7C2", T0 + 3, (2.5,), 3),
    ]
    dead = sorted(decoded.dead, key=lambda d: d.offset)
    assert [(d.offset, d.reason) for d in dead] == [(1, "invalid_value"), (2, "invalid_value")]
    assert "'merchant' is an empty string" in dead[0].error
    assert dead[0].value == records[1].value  # the original bytes, for a replay
    # The engine keys its rows by the joined id.
    engine = ViewEngine(VIEW, clock=lambda: 0)
    state = engine.new_state()
    entity, t, fields, partition, offset, _ = decoded.events[0]
    rows = engine.apply(state, entity, t, fields, partition, offset)
    assert rows is not None
    assert [(r.entity, r.values) for r in rows] == [("c1|m%7C2", (1, 2.5))]
