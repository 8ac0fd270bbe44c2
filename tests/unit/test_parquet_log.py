"""freshet.sinks.parquet_log: immutable segments on disk, each row exactly once through the
reader."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from freshet.sinks.layout import FeatureColumn, ViewLayout
from freshet.sinks.parquet_log import (
    ParquetLogError,
    ParquetLogWriter,
    WriterState,
    read_log,
    segment_paths,
)
from freshet.sinks.rows import Row

LAYOUT = ViewLayout(
    name="card_txn",
    version=1,
    entity="card_id",
    features=(
        FeatureColumn("txn_count_5m", "int64"),
        FeatureColumn("amount_sum_1h", "float64"),
        FeatureColumn("merchant_last", "string"),
    ),
    ttl_seconds=0,
)
DAY1 = 1_714_521_600_000  # 2024-05-01T00:00:00Z
DAY2 = DAY1 + 86_400_000
NOW_MS = 1_714_600_000_000


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def row(i: int, *, as_of: int | None = None, entity: str | None = None) -> Row:
    return Row(
        view="card_txn",
        entity=entity if entity is not None else f"c{i % 7}",
        as_of=as_of if as_of is not None else DAY1 + 1000 * i,
        values=(i, i * 1.5, None if i % 5 == 0 else f"m{i}"),
        partition=i % 3,
        offset=i,
    )


def writer(root: Path, **kwargs: Any) -> ParquetLogWriter:
    kwargs.setdefault("wall_clock_ms", lambda: NOW_MS)
    return ParquetLogWriter(root, LAYOUT, **kwargs)


def as_rows(table: pa.Table) -> list[tuple[Any, ...]]:
    """The table's rows as (entity, as_of ms, values, partition, offset), sorted."""
    d = table.to_pydict()
    out = []
    for j in range(table.num_rows):
        as_of = int(d["as_of"][j].timestamp() * 1000)
        values = (d["txn_count_5m"][j], d["amount_sum_1h"][j], d["merchant_last"][j])
        out.append((d["entity"][j], as_of, values, d["partition"][j], d["offset"][j]))
    return sorted(out)


def expected(rows: list[Row]) -> list[tuple[Any, ...]]:
    return sorted((r.entity, r.as_of, r.values, r.partition, r.offset) for r in rows)


def test_committed_segment_has_the_documented_path_columns_and_types(tmp_path: Path) -> None:
    w = writer(tmp_path)
    rows = [row(i) for i in range(10)]

    w.write(rows)
    (path,) = w.roll()

    assert path == tmp_path / "card_txn" / "date=2024-05-01" / "w0-0000000000.parquet"
    table = pq.read_table(path)
    assert table.schema.names == [
        "entity",
        "as_of",
        "txn_count_5m",
        "amount_sum_1h",
        "merchant_last",
        "partition",
        "offset",
        "written_at",
    ]
    types = [f.type for f in table.schema]
    ts = pa.timestamp("ms", tz="UTC")
    assert types == [
        pa.string(),
        ts,
        pa.int64(),
        pa.float64(),
        pa.string(),
        pa.int32(),
        pa.int64(),
        ts,
    ]
    assert as_rows(table) == expected(rows)
    assert set(table["written_at"].cast(pa.int64()).to_pylist()) == {NOW_MS}
    assert table.schema.metadata[b"freshet.view.version"] == b"1"
    assert not list(path.parent.glob(".*"))  # no temporary file left behind


def test_segments_roll_by_rows_and_never_exceed_max_rows(tmp_path: Path) -> None:
    w = writer(tmp_path, max_rows=3)

    first = w.write([row(i) for i in range(7)])

    assert [pq.read_metadata(p).num_rows for p in first] == [3, 3]
    assert w.buffered == 1
    last = w.close()
    assert [pq.read_metadata(p).num_rows for p in last] == [1]
    assert as_rows(read_log(tmp_path, "card_txn")) == expected([row(i) for i in range(7)])


def test_segments_roll_by_age_of_the_oldest_buffered_row(tmp_path: Path) -> None:
    clock = FakeClock()
    w = writer(tmp_path, max_age_s=30, clock=clock)

    assert w.write([row(0)]) == []
    clock.now += 20
    assert w.write([row(1)]) == []  # the oldest row is 20 s old: not yet
    clock.now += 10
    (path,) = w.roll_if_due()

    assert pq.read_metadata(path).num_rows == 2
    assert w.buffered == 0
    assert w.roll_if_due() == []


def test_background_commits_are_on_disk_once_the_snapshot_returns(tmp_path: Path) -> None:
    w = writer(tmp_path, max_rows=3, background=True)

    w.write([row(i) for i in range(7)])  # two commits started, one row buffered
    assert w.buffered == 7  # nothing counts as committed until its commit has finished
    state = w.snapshot()

    assert w.buffered == 0
    assert state == WriterState(3)
    assert w.segments_committed == 3
    assert [pq.read_metadata(p).num_rows for p in segment_paths(tmp_path, "card_txn")] == [3, 3, 1]
    assert as_rows(read_log(tmp_path, "card_txn")) == expected([row(i) for i in range(7)])


def test_a_failed_background_commit_is_raised_by_the_next_call_and_every_later_one(
    tmp_path: Path,
) -> None:
    w = writer(tmp_path, background=True)
    w.write([Row("card_txn", "c", DAY1, ("not a count", 1.0, "m"), 0, 0)])
    w.roll()  # the commit fails on the writer's thread

    with pytest.raises(ParquetLogError, match="txn_count_5m"):
        w.snapshot()
    with pytest.raises(ParquetLogError, match="txn_count_5m"):
        w.write([row(1)])
    assert segment_paths(tmp_path, "card_txn") == []


def test_row_groups_are_written_while_rows_arrive_and_the_commit_only_finishes_them(
    tmp_path: Path,
) -> None:
    """``row_group_rows``: the open segment's .tmp file grows by sorted row groups before any
    commit; the snapshot adds the rest and renames; max_rows still bounds a segment."""
    clock = FakeClock()
    w = writer(
        tmp_path, max_rows=10, background=True, row_group_rows=3, row_group_age_s=5, clock=clock
    )
    rows = [row(i, entity=f"card-{(7 * i) % 5}") for i in range(14)]

    w.write(rows[:4])  # 4 >= 3: one row group of 4 rows handed to the open segment
    w.write(rows[4:5])  # 1 row: not due yet
    clock.now += 5
    w.roll_if_due()  # the oldest unwritten row is 5 s old: a row group of 1
    w._executor.submit(lambda: None).result()  # the writer's thread has written them
    assert len(list(tmp_path.glob("card_txn/date=*/.w0-0000000000.parquet.tmp"))) == 1
    assert segment_paths(tmp_path, "card_txn") == []  # nothing visible before the commit
    assert w.buffered == 5

    w.write(rows[5:14])  # the segment fills at 10 rows and is committed; 4 rows left
    state = w.snapshot()

    assert state == WriterState(2)
    first, second = segment_paths(tmp_path, "card_txn")
    assert [pq.read_metadata(p).num_rows for p in (first, second)] == [10, 4]
    groups = pq.ParquetFile(first)
    sizes = [groups.metadata.row_group(i).num_rows for i in range(groups.num_row_groups)]
    assert sizes == [4, 1, 5]  # the last group: what the commit wrote
    for i in range(groups.num_row_groups):
        group = groups.read_row_group(i)
        keys = list(zip(group["entity"].to_pylist(), group["offset"].to_pylist(), strict=True))
        assert keys == sorted(keys)
    assert not list(tmp_path.glob("card_txn/date=*/.*.tmp"))
    assert as_rows(read_log(tmp_path, "card_txn")) == expected(rows)


def test_a_failed_row_group_is_raised_and_its_segment_is_not_committed(tmp_path: Path) -> None:
    w = writer(tmp_path, background=True, row_group_rows=1)
    w.write([row(0)])
    w.write([Row("card_txn", "c", DAY1, ("not a count", 1.0, "m"), 0, 1)])
    w._executor.submit(lambda: None).result()

    with pytest.raises(ParquetLogError, match="txn_count_5m"):
        w.write([row(2)])
    with pytest.raises(ParquetLogError, match="txn_count_5m"):
        w.snapshot()
    assert segment_paths(tmp_path, "card_txn") == []
    writer(tmp_path)  # the next writer with that id (the flow's restart) removes the .tmp
    assert not list(tmp_path.glob("card_txn/date=*/.*.tmp"))


def test_rows_go_to_the_utc_date_of_their_as_of(tmp_path: Path) -> None:
    w = writer(tmp_path)
    late_day1 = row(1, as_of=DAY2 - 1)
    early_day2 = row(2, as_of=DAY2)

    paths = w.write([early_day2, late_day1]) + w.roll()

    assert [p.relative_to(tmp_path).as_posix() for p in paths] == [
        "card_txn/date=2024-05-01/w0-0000000000.parquet",
        "card_txn/date=2024-05-02/w0-0000000000.parquet",
    ]
    day2 = read_log(tmp_path, "card_txn", filter=pc.field("date") == "2024-05-02")
    assert as_rows(day2) == expected([early_day2])


def test_a_crashed_writer_resumed_from_its_snapshot_leaves_each_row_once(tmp_path: Path) -> None:
    rows = [row(i) for i in range(40)]
    w = writer(tmp_path, max_rows=4)
    w.write(rows[:10])
    state = w.snapshot()  # rows[:10] durable; the input would resume at rows[10]
    for start in range(10, 23, 2):  # small segments past the snapshot, as age rolls make
        w.write(rows[start : min(start + 2, 23)])
        w.roll()
    w.write(rows[23:25])  # buffered, lost with the process
    tmp = segment_paths(tmp_path, "card_txn")[-1].with_name(".w0-0000000099.parquet.tmp")
    tmp.write_bytes(b"half a segment")  # the crash hits in the middle of a commit
    del w

    resumed = writer(tmp_path, max_rows=50, resume_state=state)  # bigger segments now
    for start in range(10, 40, 7):  # the replay batches differently
        resumed.write(rows[start : start + 7])
    resumed.close()

    assert as_rows(read_log(tmp_path, "card_txn", dedupe=False)) == expected(rows)
    assert not tmp.exists()


def test_restart_without_resume_state_never_overwrites_and_reader_dedupes(tmp_path: Path) -> None:
    rows = [row(i) for i in range(12)]
    first = writer(tmp_path)
    first.write(rows[:8])
    first.close()

    again = writer(tmp_path)  # e.g. a restart without recovery re-reads the topic
    again.write(rows)
    (path,) = again.close()

    assert path.name == "w0-0000000001.parquet"
    assert read_log(tmp_path, "card_txn", dedupe=False).num_rows == 20
    assert as_rows(read_log(tmp_path, "card_txn")) == expected(rows)


def test_writers_with_different_ids_do_not_touch_each_others_segments(tmp_path: Path) -> None:
    a = writer(tmp_path, writer_id="part-0")
    a.write([row(1)])
    a.close()
    b = writer(tmp_path, writer_id="part-1", resume_state=WriterState(0))
    b.write([row(2)])
    b.close()

    assert [p.name for p in segment_paths(tmp_path, "card_txn")] == [
        "part-0-0000000000.parquet",
        "part-1-0000000000.parquet",
    ]


def test_reader_selects_columns_filters_and_sorts(tmp_path: Path) -> None:
    w = writer(tmp_path, max_rows=5)
    rows = [row(i) for i in range(20)]
    w.write(list(reversed(rows)))
    w.close()
    cutoff = pa.scalar(DAY1 + 10_000, pa.timestamp("ms", tz="UTC"))

    table = read_log(
        tmp_path,
        "card_txn",
        columns=["entity", "as_of", "txn_count_5m"],
        filter=pc.field("as_of") < cutoff,
        sort=True,
    )

    assert table.schema.names == ["entity", "as_of", "txn_count_5m"]
    keys = list(zip(table["entity"].to_pylist(), table["as_of"].to_pylist(), strict=True))
    assert keys == sorted(keys)
    assert sorted(table["txn_count_5m"].to_pylist()) == list(range(10))


def test_reader_names_unknown_columns(tmp_path: Path) -> None:
    w = writer(tmp_path)
    w.write([row(1)])
    w.close()

    with pytest.raises(ParquetLogError, match="'amount'"):
        read_log(tmp_path, "card_txn", columns=["amount"])


def test_empty_log_reads_as_an_empty_table_with_the_views_schema(tmp_path: Path) -> None:
    table = read_log(tmp_path, "card_txn", layout=LAYOUT)

    assert table.num_rows == 0
    assert "merchant_last" in table.schema.names


def test_older_segments_lacking_a_new_feature_read_as_nulls_with_the_layout(tmp_path: Path) -> None:
    w = writer(tmp_path)
    w.write([row(1)])
    w.close()
    v2 = ViewLayout(
        name="card_txn",
        version=2,
        entity="card_id",
        features=(*LAYOUT.features, FeatureColumn("amount_max_24h", "float64")),
        ttl_seconds=0,
    )

    table = read_log(tmp_path, "card_txn", layout=v2)

    assert table["amount_max_24h"].to_pylist() == [None]


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ((1.5, 1.0, "m"), ["'txn_count_5m'", "int64"]),
        ((1, "x", "m"), ["'amount_sum_1h'", "float64"]),
        ((1, 1.0), ["2 values", "merchant_last"]),
    ],
)
def test_rows_that_do_not_fit_the_layout_are_refused_naming_the_feature(
    tmp_path: Path, values: tuple[Any, ...], words: list[str]
) -> None:
    w = writer(tmp_path)
    w.write([Row("card_txn", "c", DAY1, values, 0, 0)])

    with pytest.raises(ParquetLogError) as info:
        w.roll()
    for word in words:
        assert word in str(info.value)
    assert w.buffered == 1  # kept, not dropped: the caller decides what to do


def test_rows_of_another_view_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ParquetLogError, match="'user_txn'"):
        writer(tmp_path).write([Row("user_txn", "u", DAY1, (1, 1.0, "m"), 0, 0)])


@pytest.mark.parametrize(
    "kwargs", [{"max_rows": 0}, {"max_age_s": 0}, {"writer_id": ".hidden"}, {"writer_id": "a/b"}]
)
def test_bad_writer_settings_are_refused(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ParquetLogError, match=str(next(iter(kwargs)))):
        writer(tmp_path, **kwargs)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    n=st.integers(min_value=1, max_value=60),
    batch=st.integers(min_value=1, max_value=9),
    max_rows=st.integers(min_value=1, max_value=12),
    epoch=st.integers(min_value=1, max_value=4),
    crash_at=st.integers(min_value=0, max_value=80),
    replay_batch=st.integers(min_value=1, max_value=9),
    age_rolls=st.booleans(),
    replay_max_rows=st.integers(min_value=1, max_value=100),
    background=st.sampled_from([None, 1, 2, 5]),  # None: synchronous; else row group rows
)
def test_any_crash_point_and_batching_leaves_each_row_exactly_once(
    tmp_path_factory: pytest.TempPathFactory,
    n: int,
    batch: int,
    max_rows: int,
    epoch: int,
    crash_at: int,
    replay_batch: int,
    age_rolls: bool,
    replay_max_rows: int,
    background: int | None,
) -> None:
    """Bytewax recovery, simulated: snapshot every ``epoch`` batches, crash, resume, replay."""
    root = tmp_path_factory.mktemp("log")
    rows = [row(i, as_of=DAY1 + 40_000_000 * i) for i in range(n)]  # spans several dates
    if background is None:
        w = writer(root, max_rows=max_rows)
    else:
        w = writer(root, max_rows=max_rows, background=True, row_group_rows=background)
    state, resume_at, pos, batches = None, 0, 0, 0
    while pos < n and pos < crash_at:
        w.write(rows[pos : pos + batch])
        pos += batch
        batches += 1
        if age_rolls:
            w.roll()
        if batches % epoch == 0:
            state, resume_at = w.snapshot(), min(pos, n)
    if pos >= n and crash_at > n:  # no crash: a clean end of input
        state, resume_at = w.snapshot(), n
    if w._executor is not None:
        # The crash: commits not started never happen; the one running ends first (a SIGKILL
        # in the middle of one leaves a .tmp file, which the resumed writer removes).
        w._executor.shutdown(wait=True, cancel_futures=True)

    resumed = writer(root, max_rows=replay_max_rows, resume_state=state)
    for start in range(resume_at, n, replay_batch):
        resumed.write(rows[start : start + replay_batch])
    resumed.close()

    # Segments committed before the first snapshot cannot be told from an earlier run's: only
    # the reader's dedupe removes them. After a snapshot, the files alone are exactly once.
    assert as_rows(read_log(root, "card_txn", dedupe=state is None)) == expected(rows)
