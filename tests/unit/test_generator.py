"""freshet.ops.generator: the demo's synthetic stream is deterministic and its labels are true."""

from __future__ import annotations

import dataclasses
import json
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from freshet.decode.decoder import decoder_for
from freshet.decode.messages import RawMessage
from freshet.dsl.definitions import Source
from freshet.dsl.registry import get_view
from freshet.engine.view_engine import ViewEngine
from freshet.ops.generator import GeneratorConfig, GeneratorError, TransactionStream

START = 1_714_564_800_000
VIEWS = ["card_txn", "card_txn_json"]


def stream(view: str = "card_txn", **config: Any) -> TransactionStream:
    return TransactionStream(get_view(view), GeneratorConfig(**config))


def test_same_seed_same_bytes_other_seed_other_bytes() -> None:
    def take(seed: int) -> list[Any]:
        return list(stream(seed=seed).records(2_000, start_ms=START, rate=500))

    assert take(1) == take(1)
    assert take(1) != take(2)


@pytest.mark.parametrize("view", VIEWS)
def test_bad_records_and_only_they_are_refused_by_the_views_decoder(view: str) -> None:
    records = list(
        stream(view, bad_fraction=0.05, late_fraction=0.02).records(
            20_000, start_ms=START, rate=2_000
        )
    )
    messages = [RawMessage(r.key, r.value, "t", 0, i) for i, r in enumerate(records)]

    decoded = decoder_for(get_view(view)).decode(messages)

    bad = [i for i, r in enumerate(records) if r.kind == "bad"]
    assert [d.offset for d in decoded.dead] == bad
    assert 800 < len(bad) < 1200  # 5 %
    assert {r.shape for r in records if r.kind == "bad"} >= {
        "bad_bytes",
        "missing_field",
        "wrong_type",
    }


@pytest.mark.parametrize("view", VIEWS)
def test_late_records_are_exactly_the_events_the_engine_refuses(view: str) -> None:
    records = list(stream(view, late_fraction=0.03).records(20_000, start_ms=START, rate=2_000))
    decoded = decoder_for(get_view(view)).decode(
        [RawMessage(r.key, r.value, "t", 0, i) for i, r in enumerate(records)]
    )
    engine = ViewEngine(get_view(view), clock=lambda: START)
    states: dict[str, Any] = {}

    refused = []
    for entity, t, fields, partition, offset, _ in decoded.events:
        state = states.setdefault(entity, engine.new_state())
        if engine.apply(state, entity, t, fields, partition, offset) is None:
            refused.append(offset)

    late = [i for i, r in enumerate(records) if r.kind == "late"]
    assert refused == late
    assert 450 < len(late) < 750  # 3 %


def test_on_time_event_times_follow_the_schedule_with_bounded_disorder() -> None:
    rate, disorder = 1_000, 1_500
    records = list(
        stream(disorder_ms=disorder, late_fraction=0, bad_fraction=0).records(
            5_000, start_ms=START, rate=rate
        )
    )

    for i, rec in enumerate(records):
        due = START + i * 1000 // rate
        assert due - disorder <= rec.event_time_ms <= due
    assert max(r.event_time_ms for r in records) - START < 5_000  # 5,000 events at 1,000/s


def test_cards_are_zipf_popular_and_amounts_lognormal_around_the_median() -> None:
    gen = stream(cards=1_000, late_fraction=0, bad_fraction=0, amount_median=40.0)
    records = list(gen.records(30_000, start_ms=START, rate=10_000))
    decoded = decoder_for(get_view("card_txn")).decode(
        [RawMessage(r.key, r.value, "t", 0, i) for i, r in enumerate(records)]
    )

    by_card = Counter(e[0] for e in decoded.events)
    assert [card for card, _ in by_card.most_common(3)] == gen.hot_cards(3)
    assert by_card[gen.hot_cards(1)[0]] > 20 * by_card[TransactionStream.card_id(999)]
    amounts = [e[2][0] for e in decoded.events]
    assert 36.0 < statistics.median(amounts) < 44.0
    assert all(a > 0 and round(a, 2) == a for a in amounts)
    assert len({e[2][1] for e in decoded.events}) > 150  # most of the 200 merchants appear


def test_records_are_keyed_by_card_id() -> None:
    records = list(stream(bad_fraction=0.1).records(500, start_ms=START, rate=100))

    assert all(r.key.startswith(b"card_") for r in records)
    decoded = decoder_for(get_view("card_txn")).decode(
        [RawMessage(r.key, r.value, "t", 0, i) for i, r in enumerate(records)]
    )
    assert all(records[e[4]].key == e[0].encode() for e in decoded.events)


@pytest.mark.parametrize(
    ("config", "word"),
    [
        ({"cards": 0}, "cards"),
        ({"merchants": 1.5}, "merchants"),
        ({"late_fraction": 1.5}, "late_fraction"),
        ({"late_fraction": 0.6, "bad_fraction": 0.6}, "bad_fraction"),
        ({"disorder_ms": -1}, "disorder_ms"),
        ({"amount_median": 0}, "amount_median"),
        ({"card_skew": -1}, "card_skew"),
    ],
)
def test_bad_settings_are_refused_naming_the_setting(config: dict[str, Any], word: str) -> None:
    with pytest.raises(GeneratorError, match=word):
        GeneratorConfig(**config)


def test_disorder_must_stay_within_the_views_allowed_lateness() -> None:
    view = get_view("card_txn")
    lateness_ms = view.allowed_lateness_seconds * 1000

    with pytest.raises(GeneratorError, match="allowed lateness"):
        TransactionStream(view, GeneratorConfig(disorder_ms=lateness_ms))


def test_count_and_rate_are_bounded() -> None:
    gen = stream()
    with pytest.raises(GeneratorError, match="count"):
        next(gen.records(0, start_ms=START, rate=10))
    with pytest.raises(GeneratorError, match="rate"):
        next(gen.records(10, start_ms=START, rate=10_000_000))


def test_a_view_with_another_schema_is_refused_naming_the_fields(tmp_path: Path) -> None:
    view = get_view("card_txn")
    schema = json.loads(view.source.schema_path.read_text())
    schema["fields"].append({"name": "country", "type": "string"})
    path = tmp_path / "wider.avsc"
    path.write_text(json.dumps(schema))
    source = Source(topic="wider", encoding="avro", schema=str(path), event_time_field="ts")

    with pytest.raises(GeneratorError, match="amount, card_id, country, merchant, ts"):
        TransactionStream(dataclasses.replace(view, source=source))
