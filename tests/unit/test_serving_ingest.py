"""Ingest without Kafka: events validated by the flow's rules, encoded as the flow's decoder reads
them, keyed by entity; write scopes of API keys."""

from __future__ import annotations

from typing import Any

import pytest

from freshet.decode.decoder import decoder_for
from freshet.decode.messages import RawMessage
from freshet.dsl.registry import get_view
from freshet.serving.auth import ApiKeys, Forbidden
from freshet.serving.errors import HttpError
from freshet.serving.ingest import ViewCodec

T0 = 1_714_564_800_000


def _event(i: int, **changes: Any) -> dict[str, Any]:
    return {"card_id": f"card_{i}", "amount": 10.5 + i, "merchant": "m_1", "ts": T0 + i, **changes}


@pytest.mark.parametrize("view", ["card_txn", "card_txn_json"])
def test_accepted_events_decode_to_themselves_with_the_flows_decoder(view: str) -> None:
    feature_view = get_view(view)
    events = [_event(0), _event(1, amount=7), _event(2, ts="2024-05-01T12:00:00.250Z")]
    prepared = ViewCodec(feature_view).prepare(events)
    assert [p.key for p in prepared] == [b"card_0", b"card_1", b"card_2"]
    messages = [RawMessage(p.key, p.value, "t", 0, i) for i, p in enumerate(prepared)]
    decoded = decoder_for(feature_view).decode(messages)
    assert not decoded.dead
    got = [
        (e[0], e[1], dict(zip(feature_view.input_fields, e[2], strict=True)))
        for e in decoded.events
    ]
    assert [(g[0], g[1]) for g in got] == [("card_0", T0), ("card_1", T0 + 1), ("card_2", T0 + 250)]
    assert got[1][2]["amount"] == 7.0


def test_a_batch_is_refused_whole_naming_each_bad_event_its_field_and_reason() -> None:
    codec = ViewCodec(get_view("card_txn"))
    events = [_event(0), _event(1, amount="12,50"), "nope", _event(3, ts=1_714_564_800),
              _event(4, colour="red"), _event(5, card_id="")]  # fmt: skip
    with pytest.raises(HttpError) as info:
        codec.prepare(events)
    message = info.value.message
    assert info.value.status == 422
    assert message.startswith("5 invalid event(s) of 6, nothing was produced")
    assert "events[1]: field 'amount' must be a number, got str '12,50' (wrong_type)" in message
    assert "events[2]: is str, not a JSON object" in message
    assert "events[3]: event time field 'ts'" in message
    assert "(epoch seconds? send milliseconds) (invalid_value)" in message
    assert "events[4]: field 'colour' is not in the schema" in message
    assert "events[5]: entity field 'card_id' is an empty string (invalid_value)" in message
    assert "events[0]" not in message


def test_write_scopes_are_granted_per_view_and_plain_grants_stay_read_only() -> None:
    keys = ApiKeys.parse("k_old:card_txn;k_w:card_txn=w;k_rw:card_txn=rw,other;k_all:*=rw")
    keys.check(b"k_old", "card_txn")
    with pytest.raises(Forbidden, match="may not write view 'card_txn'"):
        keys.check(b"k_old", "card_txn", write=True)
    keys.check(b"k_w", "card_txn", write=True)
    with pytest.raises(Forbidden, match="may not read view 'card_txn'"):
        keys.check(b"k_w", "card_txn")
    keys.check(b"k_rw", "card_txn", write=True)
    keys.check(b"k_rw", "other")
    with pytest.raises(Forbidden, match="may not write view 'other'"):
        keys.check(b"k_rw", "other", write=True)
    keys.check(b"k_all", "anything", write=True)
    with pytest.raises(ValueError, match="entry 1 grants 'x' on 'card_txn'"):
        ApiKeys.parse("k:card_txn=x")
