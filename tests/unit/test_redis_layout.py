"""The Redis key layout and record codec: injection-safe keys, lossless records, cluster slots."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot

from freshet.sinks.layout import FeatureColumn, ViewLayout
from freshet.sinks.redis_store import (
    InvalidEntityError,
    RedisFeatureReader,
    RedisFeatureWriter,
    UnknownFeatureError,
    UnknownLayoutError,
    decode_record,
    encode_record,
    record_key,
)
from freshet.sinks.rows import Row

LAYOUT = ViewLayout(
    name="card_txn",
    version=3,
    entity="card_id",
    features=(FeatureColumn("n", "int64"), FeatureColumn("x", "float64")),
    ttl_seconds=0,
)
OTHER = ViewLayout(name="card", version=3, entity="card_id", features=(), ttl_seconds=0)

# Any text, plus the lone surrogates surrogateescape makes of non-UTF-8 bytes.
entities = st.lists(
    st.one_of(st.characters(codec="utf-8"), st.integers(0xDC80, 0xDCFF).map(chr)), max_size=40
).map("".join)


def test_key_names_view_version_and_hash_tags_the_entity() -> None:
    assert record_key(LAYOUT, "card_42") == b"fs:card_txn:3:{card_42}"


@given(a=entities, b=entities)
def test_distinct_entities_never_share_a_key(a: str, b: str) -> None:
    if a != b:
        assert record_key(LAYOUT, a) != record_key(LAYOUT, b)


@given(a=entities, b=entities)
def test_an_entity_cannot_reach_another_views_key(a: str, b: str) -> None:
    # "card" is a prefix of "card_txn": an entity like "_txn:3:{x" must not alias.
    assert record_key(LAYOUT, a) != record_key(OTHER, b)


@given(entity=entities.filter(lambda e: e and not e.startswith("}")))
def test_all_views_of_an_entity_share_a_cluster_slot(entity: str) -> None:
    assert key_slot(record_key(LAYOUT, entity)) == key_slot(record_key(OTHER, entity))


def test_non_utf8_entity_bytes_map_back_to_the_same_key_bytes() -> None:
    raw = b"\xff\x00card"
    entity = raw.decode("utf-8", "surrogateescape")
    assert record_key(LAYOUT, entity) == b"fs:card_txn:3:{" + raw + b"}"


def test_entities_with_lone_surrogates_that_stand_for_no_bytes_are_rejected() -> None:
    with pytest.raises(InvalidEntityError, match="entity '\\\\ud800x'"):
        record_key(LAYOUT, "\ud800x")


values_strategy = st.lists(
    st.one_of(
        st.none(),
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(),
    ),
    max_size=12,
)


@given(
    as_of=st.integers(min_value=-(2**63), max_value=2**63 - 1),
    offset=st.integers(min_value=-(2**63), max_value=2**63 - 1),
    values=values_strategy,
)
def test_records_round_trip(as_of: int, offset: int, values: list[Any]) -> None:
    assert decode_record(encode_record(as_of, offset, values)) == (as_of, offset, values)


@pytest.mark.parametrize("name", ["", "a:b", "a{b", "a}b", "line\nbreak"])
def test_view_names_unusable_in_keys_are_rejected(name: str) -> None:
    layout = ViewLayout(name=name, version=1, entity="id", features=(), ttl_seconds=0)
    with pytest.raises(ValueError, match="cannot be used in a Redis key"):
        RedisFeatureWriter(None, {name: layout})


def test_layout_registered_under_another_name_is_rejected() -> None:
    with pytest.raises(ValueError, match="registered as 'x' is named 'card_txn'"):
        RedisFeatureReader(None, {"x": LAYOUT})


def test_writer_rejects_rows_of_unknown_views_naming_the_known_ones() -> None:
    writer = RedisFeatureWriter(None, {"card_txn": LAYOUT})
    with pytest.raises(UnknownLayoutError, match="unknown view 'nope'; known: card_txn"):
        writer.write([Row("nope", "e", 1, (1, 2.0), 0, 0)])


def test_writer_rejects_rows_whose_width_differs_from_the_layout() -> None:
    writer = RedisFeatureWriter(None, {"card_txn": LAYOUT})
    with pytest.raises(ValueError, match="has 1 values; the layout has 2 features"):
        writer.write([Row("card_txn", "e", 1, (1,), 0, 0)])


def test_reader_rejects_unknown_features_naming_the_known_ones() -> None:
    reader = RedisFeatureReader(None, {"card_txn": LAYOUT})
    with pytest.raises(UnknownFeatureError, match="'y' of view 'card_txn'; known: n, x"):
        reader.get("card_txn", "e", ["x", "y"])


class _DownThenUp:
    """A client whose first ``failures`` pipelines fail to connect, then answer like Redis."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.sent: list[tuple[Any, ...]] = []

    def script_load(self, script: bytes) -> str:
        return "sha"

    def pipeline(self, transaction: bool = True) -> _DownThenUp:
        return self

    def execute_command(self, *args: Any) -> None:
        self.sent.append(args)

    def execute(self, raise_on_error: bool = True) -> list[int]:
        if self.failures:
            self.failures -= 1
            self.sent.clear()
            raise redis.exceptions.ConnectionError("connection refused")
        return [args[2] for args in self.sent]  # EVALSHA sha numkeys …: every row wins


def test_writer_backs_off_exponentially_up_to_the_cap_and_resends_the_whole_batch() -> None:
    client = _DownThenUp(failures=6)
    sleeps: list[float] = []
    retried: list[BaseException] = []
    writer = RedisFeatureWriter(
        client,
        {"card_txn": LAYOUT},
        backoff_initial_s=0.1,
        backoff_max_s=0.5,
        sleep=sleeps.append,
        on_retry=retried.append,
    )
    rows = [Row("card_txn", f"e{i}", 1, (i, 1.0), 0, i) for i in range(3)]
    assert writer.write(rows) == 3
    assert sleeps == [0.1, 0.2, 0.4, 0.5, 0.5, 0.5]
    assert len(retried) == 6  # one per re-sent batch (the freshet_redis_write_retries metric)
    assert all(isinstance(exc, redis.exceptions.ConnectionError) for exc in retried)
    assert len(client.sent) == 1  # one script call carried all three rows


def test_writer_gives_up_only_when_told_to() -> None:
    writer = RedisFeatureWriter(
        _DownThenUp(failures=10**6),
        {"card_txn": LAYOUT},
        give_up_after_s=0.0,
        sleep=lambda _: None,
    )
    with pytest.raises(redis.exceptions.ConnectionError):
        writer.write([Row("card_txn", "e", 1, (1, 1.0), 0, 0)])


def test_writer_splits_big_batches_into_bounded_script_calls() -> None:
    client = _DownThenUp(failures=0)
    writer = RedisFeatureWriter(client, {"card_txn": LAYOUT}, max_rows_per_call=2)
    rows = [Row("card_txn", f"e{i}", 1, (i, 1.0), 0, i) for i in range(5)]
    assert writer.write(rows) == 5
    assert [args[2] for args in client.sent] == [2, 2, 1]  # EVALSHA sha numkeys …
