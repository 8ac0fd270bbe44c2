"""freshet.offline.historical: the point-in-time join equals a brute-force as-of lookup, never leaks
the future, keeps input rows/labels/order, and `freshet historical` writes Parquet or CSV."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from freshet.cli import cli
from freshet.dsl.registry import get_view
from freshet.dsl.views import CARD_TXN
from freshet.offline.historical import (
    HistoricalError,
    ViewRequest,
    historical_features,
    parse_feature_specs,
    read_entities,
    write_historical,
)
from freshet.sinks.layout import FeatureColumn, ViewLayout
from freshet.sinks.parquet_log import ParquetLogWriter, log_dir
from freshet.sinks.rows import Row

DAY = 86_400_000
T0 = 1_714_521_600_000  # 2024-05-01T00:00:00Z

A = ViewLayout(
    name="va",
    version=1,
    entity="card_id",
    features=(FeatureColumn("n", "int64"), FeatureColumn("x", "float64")),
    ttl_seconds=0,
)
B = ViewLayout(
    name="vb",
    version=1,
    entity="card_id",
    features=(FeatureColumn("s", "string"), FeatureColumn("m", "int64")),
    ttl_seconds=0,
)


def write_log(root: Path, layout: ViewLayout, rows: Sequence[Row], **kwargs: Any) -> None:
    writer = ParquetLogWriter(root, layout, max_rows=10_000, max_age_s=3600, **kwargs)
    writer.write(list(rows))
    writer.close()


def row(
    layout: ViewLayout, entity: str, as_of: int, values: tuple[Any, ...], offset: int, part: int = 0
) -> Row:
    return Row(layout.name, entity, as_of, values, part, offset)


def brute_force(
    rows: Sequence[Row], layout: ViewLayout, entity: str | None, t: int | None
) -> tuple[Any, ...]:
    """The latest row with as_of <= t by (as_of, offset, partition); nulls if none/expired."""
    nulls = (None,) * len(layout.features)
    if entity is None or t is None:
        return nulls
    seen = [r for r in rows if r.entity == entity and r.as_of <= t]
    if not seen:
        return nulls
    best = max(seen, key=lambda r: (r.as_of, r.offset, r.partition))
    if layout.ttl_seconds and best.as_of + layout.ttl_seconds * 1000 < t:
        return nulls
    return best.values


def entities_table(pairs: Sequence[tuple[str | None, int | None]], **labels: list[Any]) -> pa.Table:
    return pa.table(
        {
            "entity": pa.array([e for e, _ in pairs], pa.string()),
            "timestamp": pa.array([t for _, t in pairs], pa.int64()),
            **labels,
        }
    )


def values_of(table: pa.Table, names: Sequence[str]) -> list[tuple[Any, ...]]:
    columns = [table[n].to_pylist() for n in names]
    return list(zip(*columns, strict=True))


# ---------------------------------------------------------------------------------------------
# Property: equal to a brute-force as-of over random logs (ties, copies, several days, TTL)

ENTITIES = ["c0", "c1", "c2", "c3"]
# as_of values cluster on a few instants per day over 3 days, so ties and exact-equal probes
# are common and the date-directory pruning is exercised.
INSTANTS = st.builds(
    lambda day, ms: T0 + day * DAY + ms,
    st.integers(0, 2),
    st.sampled_from([0, 1, 2, 500, 1000, DAY - 1]),
)


@st.composite
def log_rows(draw: st.DrawFn, layout: ViewLayout) -> list[Row]:
    n = draw(st.integers(0, 30))
    out = []
    for i in range(n):
        if layout is A:
            values: tuple[Any, ...] = (i, draw(st.sampled_from([None, 0.5, -2.25, 1e300])))
        else:
            values = (draw(st.sampled_from([None, "", "m1", "ü"])), i)
        out.append(
            row(
                layout,
                draw(st.sampled_from(ENTITIES)),
                draw(INSTANTS),
                values,
                offset=draw(st.integers(0, 5)),
                part=draw(st.integers(0, 1)),
            )
        )
    # Rows equal on (entity, as_of, offset, partition) are the same row (determinism): keep
    # one version of each key, then write some of them twice, as a replay would.
    unique = list({(r.entity, r.as_of, r.offset, r.partition): r for r in out}.values())
    copies = draw(st.lists(st.sampled_from(unique), max_size=5)) if unique else []
    return unique + copies


PROBES = st.lists(
    st.tuples(
        st.one_of(st.none(), st.sampled_from([*ENTITIES, "unknown"])),
        st.one_of(
            st.none(), INSTANTS, INSTANTS.map(lambda t: t - 1), INSTANTS.map(lambda t: t + 1)
        ),
    ),
    min_size=1,
    max_size=40,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows_a=log_rows(A),
    rows_b=log_rows(B),
    probes=PROBES,
    ttl_a=st.sampled_from([0, 1, 2, 86_400]),
)
def test_join_equals_brute_force_as_of(
    rows_a: list[Row], rows_b: list[Row], probes: list[tuple[str | None, int | None]], ttl_a: int
) -> None:
    layout_a = replace(A, ttl_seconds=ttl_a)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        # Copies go to a second writer id: a restarted writer without recovery state.
        write_log(root, layout_a, rows_a[: len(rows_a) // 2])
        write_log(root, layout_a, rows_a[len(rows_a) // 2 :], writer_id="w1")
        write_log(root, B, rows_b)
        entities = entities_table(probes, label=list(range(len(probes))))

        out = historical_features(
            root,
            entities,
            [ViewRequest(layout_a, ("n", "x")), ViewRequest(B, ("s", "m"))],
            threads=1,
        )

    assert out["label"].to_pylist() == list(range(len(probes)))
    assert out["entity"].to_pylist() == [e for e, _ in probes]
    assert values_of(out, ["n", "x"]) == [brute_force(rows_a, layout_a, e, t) for e, t in probes]
    assert values_of(out, ["s", "m"]) == [brute_force(rows_b, B, e, t) for e, t in probes]


# ---------------------------------------------------------------------------------------------
# Boundaries


@pytest.fixture
def boundary_log(tmp_path: Path) -> Path:
    write_log(
        tmp_path,
        A,
        [
            row(A, "c1", T0 + 1000, (1, 1.0), offset=10),
            row(A, "c1", T0 + 2000, (2, 2.0), offset=11),
            # same as_of, later offset: what Redis kept (newer-wins by (as_of, offset))
            row(A, "c1", T0 + 2000, (3, 3.0), offset=12),
        ],
    )
    return tmp_path


def test_a_row_is_visible_at_exactly_its_as_of_and_not_a_millisecond_before(
    boundary_log: Path,
) -> None:
    probes = [("c1", T0 + 999), ("c1", T0 + 1000), ("c1", T0 + 1999), ("c1", T0 + 2000)]

    out = historical_features(boundary_log, entities_table(probes), [ViewRequest(A, ("n",))])

    assert out["n"].to_pylist() == [None, 1, 1, 3]


def test_sub_millisecond_timestamps_are_floored_never_rounded_into_the_future(
    boundary_log: Path,
) -> None:
    us = [(T0 + 1000) * 1000 - 1, (T0 + 1000) * 1000, (T0 + 1000) * 1000 + 999]
    entities = pa.table(
        {"entity": ["c1"] * 3, "timestamp": pa.array(us, pa.timestamp("us", tz="UTC"))}
    )

    out = historical_features(boundary_log, entities, [ViewRequest(A, ("n",))])

    assert out["n"].to_pylist() == [None, 1, 1]


def test_timestamps_as_iso_strings_epoch_strings_and_naive_timestamps_agree(
    boundary_log: Path,
) -> None:
    iso = ["2024-05-01T00:00:00.999Z", "2024-05-01T02:00:01+02:00", "2024-05-01 00:00:02"]
    strings = pa.table({"entity": ["c1"] * 4, "timestamp": [*iso, str(T0 + 2000)]})
    naive = pa.table(
        {
            "entity": ["c1"] * 2,
            "timestamp": pa.array([(T0 + 999) * 1000, (T0 + 1000) * 1000], pa.timestamp("us")),
        }
    )

    from_strings = historical_features(boundary_log, strings, [ViewRequest(A, ("n",))])
    from_naive = historical_features(boundary_log, naive, [ViewRequest(A, ("n",))])

    assert from_strings["n"].to_pylist() == [None, 1, 3, 3]
    assert from_strings["timestamp"].to_pylist() == [*iso, str(T0 + 2000)]  # kept as given
    assert from_naive["n"].to_pylist() == [None, 1]


def test_unknown_entities_early_timestamps_and_nulls_give_null_features(
    boundary_log: Path,
) -> None:
    probes = [("nobody", T0 + 5000), ("c1", T0), (None, T0 + 5000), ("c1", None)]

    out = historical_features(
        boundary_log, entities_table(probes), [ViewRequest(A, ("n", "x"))], with_as_of=True
    )

    assert values_of(out, ["n", "x", "va__as_of"]) == [(None, None, None)] * 4


def test_a_value_older_than_the_ttl_at_the_timestamp_is_null(tmp_path: Path) -> None:
    layout = replace(A, ttl_seconds=10)
    write_log(tmp_path, layout, [row(layout, "c1", T0, (1, 1.0), offset=1)])
    probes = [("c1", T0 + 10_000), ("c1", T0 + 10_001)]

    out = historical_features(tmp_path, entities_table(probes), [ViewRequest(layout, ("n",))])

    assert out["n"].to_pylist() == [1, None]  # expired once as_of + ttl < timestamp


def test_with_as_of_reports_the_matched_rows_time(boundary_log: Path) -> None:
    out = historical_features(
        boundary_log,
        entities_table([("c1", T0 + 1500)]),
        [ViewRequest(A, ("n",))],
        with_as_of=True,
    )

    as_of = out["va__as_of"]
    assert as_of.type.tz == "UTC"
    assert as_of.cast(pa.timestamp("ms", tz="UTC")).cast(pa.int64()).to_pylist() == [T0 + 1000]


def test_int_entities_match_the_logs_string_entities(tmp_path: Path) -> None:
    write_log(tmp_path, A, [row(A, "42", T0, (7, 0.5), offset=1)])
    entities = pa.table({"entity": pa.array([42, 43], pa.int64()), "timestamp": [T0, T0]})

    out = historical_features(tmp_path, entities, [ViewRequest(A, ("n",))])

    assert out["n"].to_pylist() == [7, None]
    assert out["entity"].to_pylist() == [42, 43]


def test_an_empty_log_gives_typed_null_columns(tmp_path: Path) -> None:
    out = historical_features(tmp_path, entities_table([("c1", T0)]), [ViewRequest(B, ("s", "m"))])

    assert out.schema.field("s").type == pa.string()
    assert out.schema.field("m").type == pa.int64()
    assert values_of(out, ["s", "m"]) == [(None, None)]


def test_a_feature_added_to_the_view_after_the_segments_were_written_reads_as_null(
    tmp_path: Path,
) -> None:
    write_log(tmp_path, A, [row(A, "c1", T0, (1, 1.0), offset=1)])
    wider = replace(A, features=(*A.features, FeatureColumn("late", "string")))

    out = historical_features(
        tmp_path, entities_table([("c1", T0)]), [ViewRequest(wider, ("late", "n"))]
    )

    assert values_of(out, ["late", "n"]) == [(None, 1)]


def test_each_view_version_is_joined_against_its_own_log(tmp_path: Path) -> None:
    v2 = replace(A, version=2)
    write_log(tmp_path, A, [row(A, "c1", T0, (1, 1.0), offset=1)])
    write_log(tmp_path, v2, [row(v2, "c1", T0, (2, 2.0), offset=1)])
    probes = entities_table([("c1", T0)])

    old = historical_features(tmp_path, probes, [ViewRequest(A, ("n",))])
    new = historical_features(tmp_path, probes, [ViewRequest(v2, ("n",))])

    assert (old["n"].to_pylist(), new["n"].to_pylist()) == ([1], [2])
    assert log_dir(tmp_path, "va", 1) != log_dir(tmp_path, "va", 2)
    assert log_dir(tmp_path, "va", 2).is_dir()


# ---------------------------------------------------------------------------------------------
# Requests and errors


def test_feature_specs_group_by_view_and_expand_star() -> None:
    requests = parse_feature_specs(
        ["card_txn:txn_count_5m,card_txn_json:*", "card_txn:merchant_last"], get_view
    )

    assert [(r.layout.name, r.features) for r in requests] == [
        ("card_txn", ("txn_count_5m", "merchant_last")),
        ("card_txn_json", CARD_TXN.layout().feature_names),
    ]


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("card_txn:nope", ["'nope'", "card_txn", "txn_count_5m"]),
        ("card_txn", ["'card_txn'", "view:feature"]),
        ("card_txn:merchant_last,card_txn:merchant_last", ["twice"]),
        ("", ["no features"]),
    ],
)
def test_bad_feature_specs_are_refused_naming_the_problem(spec: str, words: list[str]) -> None:
    with pytest.raises(HistoricalError) as caught:
        parse_feature_specs(spec, get_view)

    assert all(w in str(caught.value) for w in words), str(caught.value)


def test_same_feature_names_from_two_views_need_full_names(tmp_path: Path) -> None:
    a2 = replace(A, name="va2")
    probes = entities_table([("c1", T0)])
    requests = [ViewRequest(A, ("n",)), ViewRequest(a2, ("n",))]

    with pytest.raises(HistoricalError, match="full names"):
        historical_features(tmp_path, probes, requests)
    out = historical_features(tmp_path, probes, requests, full_names=True)

    assert out.column_names == ["entity", "timestamp", "va__n", "va2__n"]


def test_a_label_column_named_like_a_feature_is_refused(tmp_path: Path) -> None:
    probes = entities_table([("c1", T0)], n=[1])

    with pytest.raises(HistoricalError, match=r"'n'.*input column"):
        historical_features(tmp_path, probes, [ViewRequest(A, ("n",))])


def test_an_unparseable_timestamp_is_refused_naming_row_and_value(tmp_path: Path) -> None:
    probes = pa.table({"entity": ["c1", "c1"], "timestamp": ["2024-05-01T00:00:00Z", "soon"]})

    with pytest.raises(HistoricalError, match="row 1: timestamp 'soon'"):
        historical_features(tmp_path, probes, [ViewRequest(A, ("n",))])


def test_a_missing_column_is_refused_listing_the_columns(tmp_path: Path) -> None:
    probes = pa.table({"card": ["c1"], "timestamp": [T0]})

    with pytest.raises(HistoricalError, match=r"no column 'entity'.*card, timestamp"):
        historical_features(tmp_path, probes, [ViewRequest(A, ("n",))])


# ---------------------------------------------------------------------------------------------
# Files and the CLI


def test_csv_entities_keep_leading_zeros_and_parse_both_timestamp_forms(tmp_path: Path) -> None:
    path = tmp_path / "entities.csv"
    path.write_text(f"entity,timestamp,label\n007,{T0},1\n007,2024-05-01T00:00:01Z,0\n")
    write_log(tmp_path / "log", A, [row(A, "007", T0 + 500, (5, 0.5), offset=1)])

    entities = read_entities(path)
    out = historical_features(tmp_path / "log", entities, [ViewRequest(A, ("n",))])

    assert out.to_pydict() == {
        "entity": ["007", "007"],
        "timestamp": [str(T0), "2024-05-01T00:00:01Z"],
        "label": [1, 0],
        "n": [None, 5],
    }


def test_a_memory_limit_duckdb_cannot_read_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(HistoricalError, match="'lots'"):
        historical_features(
            tmp_path, entities_table([("c1", T0)]), [ViewRequest(A, ("n",))], memory_limit="lots"
        )


def test_write_historical_leaves_no_partial_file_when_it_fails(tmp_path: Path) -> None:
    out = tmp_path / "out.parquet"
    probes = pa.table({"entity": ["c1"], "timestamp": ["never"]})

    with pytest.raises(HistoricalError):
        write_historical(tmp_path, probes, [ViewRequest(A, ("n",))], out)

    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_cli_writes_the_training_set_in_the_format_of_the_out_extension(
    tmp_path: Path, suffix: str
) -> None:
    layout = CARD_TXN.layout()
    log = tmp_path / "offline"
    values = (3, 30.0, 10.0, 20.0, "m2", 2)
    write_log(log, layout, [Row("card_txn", "card_1", T0, values, 0, 5)])
    entities = tmp_path / "entities.parquet"
    pq.write_table(
        pa.table(
            {
                "entity": ["card_1", "card_1", "card_9"],
                "timestamp": [T0 - 1, T0, T0],
                "y": [0, 1, 0],
            }
        ),
        entities,
    )
    out = tmp_path / f"train{suffix}"

    result = CliRunner().invoke(
        cli,
        [
            "historical",
            "--entities", str(entities),
            "--features", "card_txn:txn_count_5m,card_txn:merchant_last",
            "--out", str(out),
            "--offline-dir", str(log),
            "--threads", "1",
            "--memory-limit", "256MB",
        ],
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    assert "wrote 3 rows" in result.output
    # In the CSV a null is an empty field (an empty string would be quoted: "").
    nulls = pacsv.ConvertOptions(strings_can_be_null=True, quoted_strings_can_be_null=False)
    table = (
        pq.read_table(out) if suffix == ".parquet" else pacsv.read_csv(out, convert_options=nulls)
    )
    assert table.to_pydict() == {
        "entity": ["card_1", "card_1", "card_9"],
        "timestamp": [T0 - 1, T0, T0],
        "y": [0, 1, 0],
        "txn_count_5m": [None, 3, None],
        "merchant_last": [None, "m2", None],
    }


def test_cli_unknown_view_is_a_usage_error_naming_the_known_views(tmp_path: Path) -> None:
    entities = tmp_path / "e.csv"
    entities.write_text("entity,timestamp\nc,1\n")

    result = CliRunner().invoke(
        cli,
        [
            "historical",
            "--entities",
            str(entities),
            "--features",
            "nope:x",
            "--out",
            str(tmp_path / "o.csv"),
        ],
    )

    assert result.exit_code == 2
    assert "unknown view 'nope'" in result.output
    assert "card_txn" in result.output
