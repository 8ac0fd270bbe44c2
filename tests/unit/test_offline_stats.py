"""``freshet.offline.stats``: statistics and drift equal a brute-force computation over the rows.

The reference works on the Python rows written to the log (not on anything the code under test
reads): filter by the range, drop copies, then count, sort and bin by hand.
"""

from __future__ import annotations

import math
import random
import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from freshet.cli import cli
from freshet.offline.stats import (
    HISTOGRAM_BINS,
    PSI_THRESHOLD,
    QUANTILES,
    TOP_VALUES,
    StatsError,
    TimeRange,
    entity_history,
    parse_time,
    psi,
    view_stats,
)
from freshet.sinks.layout import FeatureColumn, ViewLayout
from freshet.sinks.parquet_log import log_dir, log_schema
from freshet.sinks.rows import Row

LAYOUT = ViewLayout(
    name="vs",
    version=1,
    entity="card_id",
    features=(
        FeatureColumn("n", "int64"),
        FeatureColumn("x", "float64"),
        FeatureColumn("s", "string"),
        FeatureColumn("recent", "list<float64>"),
        FeatureColumn("top", "top_k<string>"),
    ),
    ttl_seconds=0,
)
T0 = 1_717_000_000_000
HOUR = 3_600_000


def make_rows(seed: int, start: int, count: int, *, shift: float = 0.0) -> list[Row]:
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        n = None if rng.random() < 0.05 else rng.randrange(0, 12)
        x = None if rng.random() < 0.05 else rng.lognormvariate(3 + shift, 1)
        s = None if rng.random() < 0.1 else f"m{min(int(rng.expovariate(0.4)), 30):02d}"
        recent = [round(rng.uniform(0, 50), 2) for _ in range(rng.randrange(0, 4))]
        top = [{"value": f"t{rng.randrange(5)}", "count": rng.randrange(1, 9)}] if i % 3 else None
        entity = f"card_{rng.randrange(40):03d}"
        rows.append(Row(LAYOUT.name, entity, start + i * 1000, (n, x, s, recent, top), 0, i))
    return rows


def write(root: Path, rows: Sequence[Row], layout: ViewLayout = LAYOUT) -> None:
    """Segments as the log's writer lays them out (one per date and 700 rows), written here
    with pyarrow so the test does not depend on the writer."""
    schema = log_schema(layout)
    by_day: dict[str, list[Row]] = {}
    for r in rows:
        day = datetime.fromtimestamp(r.as_of / 1000, UTC).strftime("%Y-%m-%d")
        by_day.setdefault(day, []).append(r)
    for day, day_rows in by_day.items():
        folder = log_dir(root, layout.name) / f"date={day}"
        folder.mkdir(parents=True, exist_ok=True)
        for start in range(0, len(day_rows), 700):
            chunk = day_rows[start : start + 700]
            columns: dict[str, list[Any]] = {
                "entity": [r.entity for r in chunk],
                "as_of": [r.as_of for r in chunk],
                **{f.name: [r.values[i] for r in chunk] for i, f in enumerate(layout.features)},
                "partition": [r.partition for r in chunk],
                "offset": [r.offset for r in chunk],
                "written_at": [0] * len(chunk),
            }
            table = pa.Table.from_pydict(
                {n: pa.array(columns[n], schema.field(n).type) for n in schema.names},
                schema=schema,
            )
            pq.write_table(table, folder / f"w{uuid.uuid4().hex[:8]}-{0:010d}.parquet")


# -- the reference ------------------------------------------------------------------------------


def in_range(rows: Sequence[Row], lo: int, hi: int) -> list[Row]:
    seen: dict[tuple[Any, ...], Row] = {}
    for r in rows:
        if lo <= r.as_of < hi:
            seen.setdefault((r.entity, r.as_of, r.partition, r.offset), r)
    return list(seen.values())


def quantile(sorted_values: Sequence[float], q: float) -> float:
    pos = q * (len(sorted_values) - 1)
    low = math.floor(pos)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (pos - low)


def quantile_disc(sorted_values: Sequence[float], q: float) -> float:
    return sorted_values[max(math.ceil(q * len(sorted_values)) - 1, 0)]


def numeric_reference(values: Sequence[Any]) -> dict[str, Any]:
    present = sorted(float(v) for v in values if v is not None)
    mean = sum(present) / len(present)
    return {
        "rows": len(values),
        "nulls": len(values) - len(present),
        "min": present[0],
        "max": present[-1],
        "mean": mean,
        "stddev": math.sqrt(sum((v - mean) ** 2 for v in present) / len(present)),
        "quantiles": {str(q): quantile(present, q) for q in QUANTILES},
    }


def histogram_reference(values: Sequence[Any], lo: float, width: float, bins: int) -> list[int]:
    counts = [0] * bins
    for v in values:
        if v is not None:
            counts[min(math.floor((float(v) - lo) / width), bins - 1)] += 1
    return counts


def elements(value_type: str, values: Sequence[Any]) -> list[str | None]:
    if value_type == "string":
        return list(values)
    out: list[str | None] = []
    for v in values:
        if v is None:
            continue
        for e in v:
            e = e["value"] if isinstance(e, dict) else e
            out.append(str(e) if not isinstance(e, float) else repr(e))
    return out


def top_reference(observed: Sequence[str | None]) -> list[dict[str, Any]]:
    counts = Counter(v for v in observed if v is not None)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_VALUES]
    return [{"value": v, "count": c} for v, c in ranked]


def psi_reference(base: Sequence[float], compare: Sequence[float]) -> float:
    b_total, c_total = sum(base), sum(compare)
    score = 0.0
    for b, c in zip(base, compare, strict=True):
        pb, pc = max(b / b_total, 1e-4), max(c / c_total, 1e-4)
        score += (pc - pb) * math.log(pc / pb)
    return score


# -- tests --------------------------------------------------------------------------------------


def test_statistics_of_every_feature_type_equal_a_brute_force_computation(tmp_path: Path) -> None:
    rows = make_rows(1, T0, 3000)
    write(tmp_path, rows)
    write(tmp_path, rows[100:400])  # copies (a replay): counted once
    lo, hi = T0 + 200_000, T0 + 2_500_000
    got = view_stats(tmp_path, LAYOUT, TimeRange(lo, hi)).to_json()
    ref_rows = in_range(rows, lo, hi)
    assert got["base"]["rows"] == len(ref_rows) == 2300
    assert got["base"]["entities"] == len({r.entity for r in ref_rows})
    features = got["features"]
    for index, column in enumerate(LAYOUT.features):
        values = [r.values[index] for r in ref_rows]
        stats = features[column.name]["base"]
        if column.type in ("int64", "float64"):
            expected = numeric_reference(values)
            for key in ("rows", "nulls", "min", "max"):
                assert stats[key] == expected[key], (column.name, key)
            assert stats["mean"] == pytest.approx(expected["mean"], rel=1e-12)
            assert stats["stddev"] == pytest.approx(expected["stddev"], rel=1e-9)
            for q, value in expected["quantiles"].items():
                assert stats["quantiles"][q] == pytest.approx(value, rel=1e-12), (column.name, q)
            hist = stats["histogram"]
            assert len(hist["counts"]) == HISTOGRAM_BINS
            assert hist["counts"] == histogram_reference(
                values, hist["lo"], hist["width"], HISTOGRAM_BINS
            )
            assert sum(hist["counts"]) == expected["rows"] - expected["nulls"]
        else:
            observed = elements(column.type, values)
            assert stats["rows"] == len(values)
            assert stats["nulls"] == sum(v is None for v in values)
            assert stats["distinct"] == len({v for v in observed if v is not None})
            assert stats["top"] == top_reference(observed), column.name
            if column.type != "string":
                assert stats["elements"] == len(observed)


def test_a_shifted_range_is_flagged_and_an_unshifted_one_is_not(tmp_path: Path) -> None:
    base = make_rows(1, T0, 2000)
    same = make_rows(2, T0 + HOUR, 2000)
    shifted = make_rows(3, T0 + 2 * HOUR, 2000, shift=1.5)
    write(tmp_path, base + same + shifted)
    base_range = TimeRange(T0, T0 + HOUR)
    calm = view_stats(tmp_path, LAYOUT, base_range, compare=TimeRange(T0 + HOUR, T0 + 2 * HOUR))
    drift = view_stats(
        tmp_path, LAYOUT, base_range, compare=TimeRange(T0 + 2 * HOUR, T0 + 3 * HOUR)
    )
    assert calm.drifted == ()
    assert drift.drifted == ("x",)
    x = drift.to_json()["features"]["x"]["drift"]
    assert x["psi"] > PSI_THRESHOLD
    # The score is the PSI of the reported bins, and the bins are the base's deciles.
    assert x["psi"] == pytest.approx(psi_reference(x["base_counts"], x["compare_counts"]))
    present = sorted(r.values[1] for r in base if r.values[1] is not None)
    edges = sorted({quantile_disc(present, q / 10) for q in range(1, 10)})
    compare_values = [r.values[1] for r in shifted]
    expected = [0] * (len(edges) + 2)
    for v in compare_values:
        if v is None:
            expected[-1] += 1
        else:
            expected[next((i for i, e in enumerate(edges) if v <= e), len(edges))] += 1
    assert x["compare_counts"] == expected


def test_psi_of_identical_histograms_is_zero_and_empty_ones_have_no_score() -> None:
    assert psi([5, 10, 0], [10, 20, 0]) == 0.0
    assert psi([0, 0], [1, 2]) is None
    assert psi([1, 0], [0, 1]) == pytest.approx(2 * (1 - 1e-4) * math.log(1 / 1e-4))


def test_entity_history_lists_each_row_of_the_entity_in_the_range_once(tmp_path: Path) -> None:
    rows = make_rows(4, T0, 1500)
    write(tmp_path, rows)
    write(tmp_path, rows[:50])
    lo, hi = T0 + 100_000, T0 + 900_000
    history = entity_history(tmp_path, LAYOUT, "card_007", TimeRange(lo, hi))
    expected = sorted(
        (r for r in in_range(rows, lo, hi) if r.entity == "card_007"), key=lambda r: r.as_of
    )
    assert history["as_of"] == [r.as_of for r in expected]
    assert history["features"]["x"] == [r.values[1] for r in expected]
    assert history["features"]["s"] == [r.values[2] for r in expected]


def test_empty_ranges_and_bad_requests() -> None:
    with pytest.raises(StatsError, match="before or when it starts"):
        TimeRange(T0, T0)
    with pytest.raises(StatsError, match="'yesterday' is not a time"):
        parse_time("yesterday")
    with pytest.raises(StatsError, match="no UTC offset"):
        parse_time("2024-05-01T00:00:00")
    assert parse_time("2024-05-01T00:00:00Z") == parse_time("2024-05-01") == 1_714_521_600_000
    assert parse_time("now-2h", now_ms=T0) == T0 - 2 * HOUR
    with pytest.raises(StatsError, match="unknown feature"):
        view_stats("/nonexistent", LAYOUT, TimeRange(T0, T0 + 1), features=["nope"])


def test_an_empty_log_gives_zero_rows_and_no_drift_score(tmp_path: Path) -> None:
    got = view_stats(tmp_path, LAYOUT, TimeRange(T0, T0 + 1), compare=TimeRange(T0, T0 + 2))
    doc = got.to_json()
    assert doc["base"]["rows"] == 0
    assert doc["features"]["x"]["drift"]["psi"] is None
    assert got.drifted == ()


def test_the_stats_command_prints_json_and_gates_on_drift(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from freshet.dsl.registry import get_view

    layout = get_view("card_txn").layout()
    rows = [
        Row(
            "card_txn",
            f"c{i % 7}",
            T0 + i * 1000,
            (i % 5, float(i % 50), float(i), 10.0 * (i >= 500), f"m{i % 3}", 1),
            0,
            i,
        )
        for i in range(1000)
    ]
    write(tmp_path, rows, layout)
    runner = CliRunner()
    args = ["stats", "card_txn", "--offline-dir", str(tmp_path), "--from", str(T0),
            "--to", str(T0 + 500_000)]  # fmt: skip
    result = runner.invoke(cli, [*args, "--json"])
    assert result.exit_code == 0, result.output
    doc = orjson.loads(result.output)
    assert doc["base"]["rows"] == 500
    assert doc["features"]["amount_max_24h"]["base"]["max"] == 0.0
    compare = ["--compare-from", str(T0 + 500_000), "--compare-to", str(T0 + 1_000_000)]
    gated = runner.invoke(cli, [*args, *compare, "--fail-on-drift"])
    assert gated.exit_code == 4, gated.output
    assert "DRIFT" in gated.output
    calm = runner.invoke(cli, [*args, *compare[:1], str(T0), compare[2], str(T0 + 500_000),
                               "--fail-on-drift"])  # fmt: skip
    assert calm.exit_code == 0, calm.output
    missing = runner.invoke(cli, [*args, "--compare-from", str(T0)])
    assert missing.exit_code == 2
    assert "both --compare-from and --compare-to" in missing.output
