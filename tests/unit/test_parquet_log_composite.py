"""freshet.sinks.parquet_log for views keyed by several fields: one column per key field,
decoded from ``entity`` when written, read back as written; one-field views unchanged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from freshet.sinks.layout import FeatureColumn, ViewLayout, encode_entity
from freshet.sinks.parquet_log import (
    ParquetLogError,
    ParquetLogWriter,
    log_schema,
    read_log,
    segment_paths,
)
from freshet.sinks.rows import Row

DAY1 = 1_714_521_600_000  # 2024-05-01T00:00:00Z
FEATURES = (FeatureColumn("txn_count_5m", "int64"), FeatureColumn("amount_sum_1h", "float64"))
CARD_MERCHANT = ViewLayout(
    name="card_merchant",
    version=1,
    entity="card_id|merchant",
    features=FEATURES,
    ttl_seconds=0,
    key_fields=("card_id", "merchant"),
    key_types=("string", "string"),
)
USER_STORE = ViewLayout(
    name="user_store",
    version=1,
    entity="user_id|store_id|channel",
    features=FEATURES,
    ttl_seconds=0,
    key_fields=("user_id", "store_id", "channel"),
    key_types=("int64", "string", "string"),
)


def _row(layout: ViewLayout, parts: tuple[str, ...], i: int) -> Row:
    return Row(layout.name, encode_entity(parts), DAY1 + 1000 * i, (i, 1.5 * i), 0, i)


def _write(root: Path, layout: ViewLayout, rows: list[Row], **kwargs: Any) -> list[Path]:
    writer = ParquetLogWriter(root, layout, max_rows=10_000, max_age_s=3600, **kwargs)
    writer.write(rows)
    return writer.close()


@pytest.mark.parametrize("background", [False, True])
def test_composite_views_log_one_column_per_key_field_decoded_from_the_entity(
    tmp_path: Path, background: bool
) -> None:
    keys = [("c1", "m2"), ("c|1", "m%7C"), ("c%1", "|"), ("é€", "a/b:{c}")]
    rows = [_row(CARD_MERCHANT, k, i) for i, k in enumerate(keys)]
    paths = _write(tmp_path, CARD_MERCHANT, rows, background=background)
    table = pq.read_table(paths[0])
    assert table.column_names[:3] == ["entity", "card_id", "merchant"]
    assert table.schema.field("card_id").type == pa.string()
    got = sorted(
        zip(
            table["entity"].to_pylist(),
            table["card_id"].to_pylist(),
            table["merchant"].to_pylist(),
            strict=True,
        )
    )
    assert got == sorted((encode_entity(k), *k) for k in keys)


def test_long_key_fields_are_int64_columns_and_the_reader_returns_them(tmp_path: Path) -> None:
    keys = [("42", "s1", "web"), ("-7", "s|2", "app"), ("9007199254740993", "s3", "%")]
    rows = [_row(USER_STORE, k, i) for i, k in enumerate(keys)]
    _write(tmp_path, USER_STORE, rows)
    file_schema = pq.read_schema(segment_paths(tmp_path, "user_store")[0])
    assert file_schema.field("user_id").type == pa.int64()
    assert file_schema.field("store_id").type == pa.string()
    for layout in (USER_STORE, None):
        table = read_log(tmp_path, "user_store", sort=True, layout=layout)
        assert table.column_names[:4] == ["entity", "user_id", "store_id", "channel"]
        got = sorted(
            zip(*(table[c].to_pylist() for c in ("user_id", "store_id", "channel")), strict=True)
        )
        assert got == sorted((int(u), s, c) for u, s, c in keys)
    only = read_log(tmp_path, "user_store", columns=["user_id"])
    assert sorted(only["user_id"].to_pylist()) == [-7, 42, 9007199254740993]


def test_an_empty_composite_log_read_with_its_layout_has_the_key_columns(tmp_path: Path) -> None:
    table = read_log(tmp_path, "user_store", layout=USER_STORE)
    assert table.num_rows == 0
    assert table.column_names[:4] == ["entity", "user_id", "store_id", "channel"]


@pytest.mark.parametrize("key_fields", [(), ("card_id",)])
def test_one_field_views_keep_the_schema_they_had(key_fields: tuple[str, ...]) -> None:
    layout = ViewLayout(
        "card_txn", 1, "card_id", FEATURES, 0, key_fields=key_fields, key_types=("string",)
    )
    assert log_schema(layout).names == [
        "entity",
        "as_of",
        "txn_count_5m",
        "amount_sum_1h",
        "partition",
        "offset",
        "written_at",
    ]


@pytest.mark.parametrize(
    ("field", "taken"),
    [
        ("txn_count_5m", "a feature of the view"),
        ("as_of", "a column of the log"),
        ("entity", "a column of the log"),
        ("offset", "a column of the log"),
        ("date", "a column of the log"),
    ],
)
def test_a_key_field_named_as_a_feature_or_a_log_column_is_refused(
    tmp_path: Path, field: str, taken: str
) -> None:
    layout = ViewLayout("clash", 1, f"card_id|{field}", FEATURES, 0, key_fields=("card_id", field))
    with pytest.raises(ParquetLogError, match=f"key field '{field}' of view 'clash'.*{taken}"):
        ParquetLogWriter(tmp_path, layout)
    with pytest.raises(ParquetLogError, match="rename the key field"):
        log_schema(layout)


def test_an_entity_that_is_not_a_key_of_the_views_fields_is_refused_by_name(
    tmp_path: Path,
) -> None:
    writer = ParquetLogWriter(tmp_path, CARD_MERCHANT, max_rows=10_000)
    writer.write([Row("card_merchant", "c1|m2|x", DAY1, (1, 1.0), 0, 1)])
    with pytest.raises(ParquetLogError, match=r"entity 'c1\|m2\|x' .* not a key of 2 fields"):
        writer.flush()
    long_writer = ParquetLogWriter(tmp_path, USER_STORE, max_rows=10_000)
    long_writer.write([Row("user_store", "u1|s|c", DAY1, (1, 1.0), 0, 1)])
    with pytest.raises(ParquetLogError, match="'user_id' of view 'user_store' is a long"):
        long_writer.flush()
