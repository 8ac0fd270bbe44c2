"""freshet.offline.historical for views keyed by several fields: the input's key columns are
encoded as the sinks encode them and joined as of each timestamp, equal to a brute-force as-of
lookup; views keyed differently join in one call; a missing key column is named."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import freshet.cli.historical
from freshet.cli import cli
from freshet.offline.historical import (
    HistoricalError,
    ViewRequest,
    historical_features,
    key_columns,
    read_entities,
)
from freshet.sinks.layout import FeatureColumn, ViewLayout, encode_entity
from freshet.sinks.parquet_log import ParquetLogWriter
from freshet.sinks.rows import Row

T0 = 1_714_521_600_000  # 2024-05-01T00:00:00Z
DAY = 86_400_000

CARD_MERCHANT = ViewLayout(
    "card_merchant",
    1,
    "card_id|merchant",
    (FeatureColumn("n", "int64"), FeatureColumn("s", "string")),
    ttl_seconds=0,
    key_fields=("card_id", "merchant"),
    key_types=("string", "string"),
)
USER_STORE = ViewLayout(
    "user_store",
    1,
    "user_id|card_id",
    (FeatureColumn("visits", "int64"),),
    ttl_seconds=3600,
    key_fields=("user_id", "card_id"),
    key_types=("int64", "string"),
)
CARD = ViewLayout("card", 1, "card_id", (FeatureColumn("amount", "float64"),), ttl_seconds=0)
LAYOUTS = (CARD_MERCHANT, USER_STORE, CARD)

CARDS = ["c1", "c|2", "c%3"]
MERCHANTS = ["m1", "m|%"]
USERS = [7, -3]


def _entity(layout: ViewLayout, row: dict[str, Any]) -> str | None:
    """The entity id of an input row, as the sinks encode it (long fields as decimal text)."""
    values = [row[k] for k in (layout.keys if layout.is_composite else ("card_id",))]
    if any(v is None for v in values):
        return None
    return encode_entity([str(int(v)) if isinstance(v, int) else v for v in values])


def brute_force(rows: Sequence[Row], layout: ViewLayout, entity: str | None, t: int) -> tuple:
    nulls = (None,) * len(layout.features)
    seen = [r for r in rows if r.view == layout.name and r.entity == entity and r.as_of <= t]
    if entity is None or not seen:
        return nulls
    best = max(seen, key=lambda r: (r.as_of, r.offset, r.partition))
    if layout.ttl_seconds and best.as_of + layout.ttl_seconds * 1000 < t:
        return nulls
    return best.values


def _random_log(seed: int) -> list[Row]:
    rng = random.Random(seed)
    rows = []
    for i in range(rng.randint(0, 60)):
        as_of = T0 + rng.choice([0, 1, 2]) * DAY + rng.choice([0, 1, 1000, 3_600_000])
        layout = rng.choice(LAYOUTS)
        card = rng.choice(CARDS)
        if layout is CARD_MERCHANT:
            entity = encode_entity((card, rng.choice(MERCHANTS)))
            values: tuple[Any, ...] = (i, rng.choice([None, "x", "ü"]))
        elif layout is USER_STORE:
            entity = encode_entity((str(rng.choice(USERS)), card))
            values = (i,)
        else:
            entity, values = card, (rng.choice([None, 0.5, -2.25]),)
        # offsets unique (rows equal on the dedupe key are copies of one row), order random
        offset = rng.randint(0, 5) * 1000 + i
        rows.append(Row(layout.name, entity, as_of, values, rng.randint(0, 1), offset))
    return rows


def _write(root: Path, rows: Sequence[Row]) -> None:
    for layout in LAYOUTS:
        writer = ParquetLogWriter(root, layout, max_rows=10_000, max_age_s=3600)
        writer.write([r for r in rows if r.view == layout.name])
        writer.close()


def _input(seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed + 1000)
    return [
        {
            "card_id": rng.choice([*CARDS, None, "other"]),
            "merchant": rng.choice([*MERCHANTS, None]),
            "user_id": rng.choice([*USERS, None, 99]),
            "timestamp": T0 + rng.choice([-1, 0, 1, 2, 1000, DAY, DAY + 3_600_001, 3 * DAY]),
            "label": i,
        }
        for i in range(rng.randint(0, 40))
    ]


@pytest.mark.parametrize("seed", range(12))
def test_composite_and_single_key_views_join_in_one_call_as_a_brute_force_as_of(
    tmp_path: Path, seed: int
) -> None:
    rows = _random_log(seed)
    _write(tmp_path, rows)
    inputs = _input(seed)
    table = pa.Table.from_pylist(
        inputs,
        schema=pa.schema(
            [
                ("card_id", pa.string()),
                ("merchant", pa.string()),
                ("user_id", pa.int64()),
                ("timestamp", pa.int64()),
                ("label", pa.int64()),
            ]
        ),
    )
    requests = [
        ViewRequest(CARD_MERCHANT, ("n", "s")),
        ViewRequest(USER_STORE, ("visits",)),
        ViewRequest(CARD, ("amount",)),  # no "entity" column: its key field's column
    ]
    out = historical_features(tmp_path, table, requests)
    assert out.column_names == [*table.column_names, "n", "s", "visits", "amount"]
    got = list(zip(*(out[c].to_pylist() for c in ("n", "s", "visits", "amount")), strict=True))
    expected = [
        brute_force(rows, CARD_MERCHANT, _entity(CARD_MERCHANT, r), r["timestamp"])
        + brute_force(rows, USER_STORE, _entity(USER_STORE, r), r["timestamp"])
        + brute_force(rows, CARD, _entity(CARD, r), r["timestamp"])
        for r in inputs
    ]
    assert got == expected
    assert out["label"].to_pylist() == [r["label"] for r in inputs]


def test_long_key_fields_match_integers_digit_strings_and_floats(tmp_path: Path) -> None:
    _write(tmp_path, [Row("user_store", "7|c1", T0, (5,), 0, 1)])
    request = [ViewRequest(USER_STORE, ("visits",))]
    for column in (pa.array([7, 7]), pa.array(["007", "7"]), pa.array([7.0, 7.0])):
        table = pa.table({"user_id": column, "card_id": ["c1", "c2"], "timestamp": [T0, T0]})
        out = historical_features(tmp_path, table, request)
        assert out["visits"].to_pylist() == [5, None], column.type
    bad = pa.table({"user_id": ["7", "u7"], "card_id": ["c1", "c1"], "timestamp": [T0, T0]})
    with pytest.raises(HistoricalError, match="row 1: key 'u7' in column 'user_id'"):
        historical_features(tmp_path, bad, request)


def test_a_missing_key_column_is_named(tmp_path: Path) -> None:
    table = pa.table({"card_id": ["c1"], "entity": ["c1|m1"], "timestamp": [T0]})
    with pytest.raises(
        HistoricalError,
        match=r"view 'card_merchant' is keyed by card_id, merchant: the entities input has no "
        r"column 'merchant'; its columns: card_id, entity, timestamp",
    ):
        historical_features(tmp_path, table, [ViewRequest(CARD_MERCHANT, ("n",))])
    only_ts = pa.table({"timestamp": [T0]})
    with pytest.raises(HistoricalError, match=r"no column 'entity' \(nor 'card_id'"):
        historical_features(tmp_path, only_ts, [ViewRequest(CARD, ("amount",))])


def test_the_entity_column_still_serves_one_field_views_beside_composite_ones(
    tmp_path: Path,
) -> None:
    _write(
        tmp_path,
        [
            Row("card", "e1", T0, (1.5,), 0, 1),
            Row("card", "c1", T0, (9.0,), 0, 2),
            Row("card_merchant", "c1|m1", T0, (3, "x"), 0, 1),
        ],
    )
    table = pa.table(
        {"entity": ["e1"], "card_id": ["c1"], "merchant": ["m1"], "timestamp": [T0 + 5]}
    )
    requests = [ViewRequest(CARD, ("amount",)), ViewRequest(CARD_MERCHANT, ("n",))]
    out = historical_features(tmp_path, table, requests)
    assert (out["amount"].to_pylist(), out["n"].to_pylist()) == ([1.5], [3])


def test_csv_key_columns_are_read_as_text(tmp_path: Path) -> None:
    path = tmp_path / "entities.csv"
    path.write_text("card_id,merchant,timestamp\n007,0042,1714521600000\n")
    requests = [ViewRequest(CARD_MERCHANT, ("n",)), ViewRequest(USER_STORE, ("visits",))]
    assert key_columns(requests) == ["card_id", "merchant", "user_id"]
    table = read_entities(path, key_columns=key_columns(requests))
    assert table["card_id"].to_pylist() == ["007"]
    assert table["merchant"].to_pylist() == ["0042"]


class _View:
    def __init__(self, layout: ViewLayout) -> None:
        self._layout = layout

    def layout(self) -> ViewLayout:
        return self._layout


def test_freshet_historical_joins_a_composite_view_from_a_csv_of_key_columns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "offline"
    _write(root, [Row("card_merchant", encode_entity(("007", "m|1")), T0, (4, "y"), 0, 1)])
    path = tmp_path / "entities.csv"
    pacsv.write_csv(
        pa.table({"card_id": ["007", "7"], "merchant": ["m|1", "m|1"], "timestamp": [T0, T0]}),
        path,
    )
    by_name = {layout.name: _View(layout) for layout in LAYOUTS}
    monkeypatch.setattr(freshet.cli.historical, "get_view", by_name.__getitem__)
    out = tmp_path / "train.parquet"
    result = CliRunner().invoke(
        cli,
        [
            "historical",
            "--entities",
            str(path),
            "--features",
            "card_merchant:*",
            "--out",
            str(out),
            "--offline-dir",
            str(root),
        ],
    )
    assert result.exit_code == 0, result.output
    written = pq.read_table(out)
    assert written["card_id"].to_pylist() == ["007", "7"]
    assert written["n"].to_pylist() == [4, None]


def test_freshet_historical_help_mentions_key_columns() -> None:
    output = " ".join(CliRunner().invoke(cli, ["historical", "--help"]).output.split())
    assert "one column per key field" in output
