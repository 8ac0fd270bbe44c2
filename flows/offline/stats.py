"""Feature statistics and drift over the offline log, computed with DuckDB.

    stats = view_stats(root, layout, TimeRange(lo_ms, hi_ms), compare=TimeRange(lo2, hi2))
    stats.to_json()["features"]["amount_mean_1h"]["drift"]  # {"psi": 0.31, "drifted": True}

**Rows.** The statistics describe the view's log rows (value changes, DESIGN "Rows") whose
``as_of`` lies in the range, ``start <= as_of < end`` (epoch milliseconds), each row once
(copies equal on :data:`freshet.sinks.parquet_log.DEDUPE_KEY` count once, as
:func:`freshet.sinks.parquet_log.read_log` shows them). A row is one observation of every
feature: an entity whose value changed ten times in the range counts ten times.

**Per feature**, by its type:

* ``int64`` / ``float64`` (*numeric*): rows, nulls, min, max, mean, population standard
  deviation, the quantiles :data:`QUANTILES` (linear interpolation between the two nearest
  ranks, as ``numpy.quantile``'s default) and a histogram of :data:`HISTOGRAM_BINS`
  equal-width bins over ``[min, max]`` (of both ranges when comparing, so the two line up):
  bin ``i`` holds ``lo + i*width <= x < lo + (i+1)*width``, the last one also ``x == max``.
* ``string``, ``list<…>`` (``last_k``) and ``top_k<…>`` (*categorical*): rows, nulls, the
  number of distinct values and the :data:`TOP_VALUES` most frequent ones with their counts
  (ties by value). A list feature is described by its elements (each element of each row's
  list, a ``top_k`` element by its value), and ``elements`` counts them.

**Drift** (with ``compare``): the Population Stability Index of the compared range against the
base range, ``PSI = sum_i (c_i - b_i) * ln(c_i / b_i)`` over bins, ``b_i`` and ``c_i`` the
shares of the base's and the compared range's observations in bin ``i`` (a share of 0 counts
as :data:`PSI_EPSILON`, so an empty bin gives a large but finite score). Bins:

* numeric: the base range's deciles (``quantile_disc`` at 0.1 … 0.9; repeated edges merged,
  so a feature with few distinct values gets fewer bins): ``x <= e1``, ``e1 < x <= e2``, …,
  ``x > e_k``;
* categorical: each of the base's :data:`TOP_VALUES` most frequent values, and "other";
* both: nulls are a bin of their own, so a change in the share of nulls is drift too.

A feature is flagged ``drifted`` when ``PSI > PSI_THRESHOLD`` (0.2, the usual rule of thumb:
below 0.1 no significant change, 0.1-0.2 moderate, above 0.2 significant). A range without
observations of the feature (all null) gives ``psi = None`` and no flag.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from freshet.offline.historical import connect_duckdb, log_rows_sql
from freshet.sinks.clock import TimeFormatError
from freshet.sinks.clock import now_ms as _now_ms
from freshet.sinks.clock import parse_time as _parse_time
from freshet.sinks.layout import ViewLayout

__all__ = [
    "HISTOGRAM_BINS",
    "PSI_EPSILON",
    "PSI_THRESHOLD",
    "QUANTILES",
    "TOP_VALUES",
    "FeatureStats",
    "StatsError",
    "TimeRange",
    "ViewStats",
    "entity_history",
    "parse_time",
    "psi",
    "view_stats",
]

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
HISTOGRAM_BINS = 20
TOP_VALUES = 10
PSI_THRESHOLD = 0.2
PSI_EPSILON = 1e-4
_DECILES = tuple(i / 10 for i in range(1, 10))
_NUMERIC = ("int64", "float64")
_ENTITY = "__freshet_entity"
_AS_OF = "__freshet_as_of"
_KEY = "__freshet_key"


class StatsError(ValueError):
    """A request the statistics cannot serve; the message names the bad value."""


@dataclass(frozen=True, slots=True)
class TimeRange:
    """``start_ms <= as_of < end_ms`` (epoch milliseconds)."""

    start_ms: int
    end_ms: int

    def __post_init__(self) -> None:
        if self.end_ms <= self.start_ms:
            raise StatsError(
                f"the range ends ({_iso(self.end_ms)}) before or when it starts "
                f"({_iso(self.start_ms)}); give --to after --from"
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "from_ms": self.start_ms,
            "to_ms": self.end_ms,
            "from": _iso(self.start_ms),
            "to": _iso(self.end_ms),
        }


def parse_time(text: str, *, now_ms: int | None = None) -> int:
    """Epoch milliseconds of ``text``, in the formats every freshet command takes
    (:func:`freshet.sinks.clock.parse_time`: ISO-8601 with an offset, a date, epoch
    milliseconds, ``now``, ``-2h`` / ``now-90m``); :class:`StatsError` otherwise."""
    try:
        return _parse_time(text, now_ms=_now_ms() if now_ms is None else now_ms)
    except TimeFormatError as exc:
        raise StatsError(str(exc)) from None


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True, slots=True)
class FeatureStats:
    """One feature's statistics over one range (a JSON-ready ``summary``), plus drift."""

    name: str
    type: str
    kind: str  # "numeric" | "categorical"
    base: dict[str, Any]
    compare: dict[str, Any] | None = None
    drift: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "kind": self.kind, "base": self.base}
        if self.compare is not None:
            out["compare"] = self.compare
            out["drift"] = self.drift
        return out


@dataclass(frozen=True, slots=True)
class ViewStats:
    """A view's statistics over ``base`` (and ``compare``), feature by feature."""

    view: str
    version: int
    base: TimeRange
    base_rows: int
    base_entities: int
    compare: TimeRange | None = None
    compare_rows: int | None = None
    compare_entities: int | None = None
    features: tuple[FeatureStats, ...] = field(default=())

    @property
    def drifted(self) -> tuple[str, ...]:
        """The features flagged as drifted."""
        return tuple(f.name for f in self.features if f.drift and f.drift["drifted"])

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "view": self.view,
            "version": self.version,
            "psi_threshold": PSI_THRESHOLD,
            "base": {
                **self.base.to_json(),
                "rows": self.base_rows,
                "entities": self.base_entities,
            },
        }
        if self.compare is not None:
            out["compare"] = {
                **self.compare.to_json(),
                "rows": self.compare_rows,
                "entities": self.compare_entities,
            }
            out["drifted"] = list(self.drifted)
        out["features"] = {f.name: f.to_json() for f in self.features}
        return out


def psi(base: Sequence[int], compare: Sequence[int]) -> float | None:
    """The PSI of two histograms over the same bins (counts); None if either is empty."""
    total_b, total_c = sum(base), sum(compare)
    if total_b == 0 or total_c == 0:
        return None
    score = 0.0
    for b, c in zip(base, compare, strict=True):
        share_b = max(b / total_b, PSI_EPSILON)
        share_c = max(c / total_c, PSI_EPSILON)
        score += (share_c - share_b) * math.log(share_c / share_b)
    return score


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _rows_sql(
    con: duckdb.DuckDBPyConnection, root: Path | str, layout: ViewLayout, span: TimeRange
) -> str:
    """The range's log rows, each once (copies equal on the dedupe key dropped)."""
    inner = log_rows_sql(
        con,
        root,
        layout,
        layout.feature_names,
        min_as_of_ms=span.start_ms,
        max_as_of_ms=span.end_ms - 1,
    )
    return (
        f"SELECT * FROM ({inner}) QUALIFY row_number() OVER (PARTITION BY {_ENTITY}, {_AS_OF}, "
        '"partition", "offset") = 1'
    )


def _kind(value_type: str) -> str:
    return "numeric" if value_type in _NUMERIC else "categorical"


def _observations(feature: str, value_type: str, table: str) -> str:
    """A query of one column ``v``: the feature's observations in ``table`` (a list feature's
    elements, as text; a row with a null value gives one null)."""
    col = _quote(feature)
    if value_type in _NUMERIC:
        return f"SELECT CAST({col} AS DOUBLE) AS v FROM {table}"
    if value_type == "string":
        return f"SELECT {col} AS v FROM {table}"
    element = "e.value" if value_type.startswith("top_k") else "e"
    return (
        f"SELECT CAST({element} AS VARCHAR) AS v FROM "
        f"(SELECT unnest({col}) AS e FROM {table} WHERE {col} IS NOT NULL)"
    )


def _numeric(con: duckdb.DuckDBPyConnection, feature: str, table: str) -> dict[str, Any]:
    col = f"CAST({_quote(feature)} AS DOUBLE)"
    quantiles = ", ".join(str(q) for q in QUANTILES)
    row = con.execute(
        f"SELECT count(*), count({col}), min({col}), max({col}), avg({col}), "
        f"stddev_pop({col}), quantile_cont({col}, [{quantiles}]) FROM {table}"
    ).fetchone()
    assert row is not None
    rows, present, lo, hi, mean, std, qs = row
    return {
        "rows": rows,
        "nulls": rows - present,
        "min": lo,
        "max": hi,
        "mean": mean,
        "stddev": std,
        "quantiles": {
            str(q): v for q, v in zip(QUANTILES, qs or [None] * len(QUANTILES), strict=True)
        },
    }


def _histogram(
    con: duckdb.DuckDBPyConnection, feature: str, table: str, lo: float, hi: float
) -> dict[str, Any]:
    """Counts of :data:`HISTOGRAM_BINS` equal-width bins over ``[lo, hi]`` (one bin when
    ``lo == hi``)."""
    bins = HISTOGRAM_BINS if hi > lo else 1
    width = (hi - lo) / bins if hi > lo else 1.0
    col = f"CAST({_quote(feature)} AS DOUBLE)"
    counts = [0] * bins
    for index, count in con.execute(
        f"SELECT least(CAST(floor(({col} - ?) / ?) AS BIGINT), ?) AS b, count(*) FROM {table} "
        f"WHERE {col} IS NOT NULL GROUP BY b",
        [lo, width, bins - 1],
    ).fetchall():
        counts[int(index)] += count
    return {"lo": lo, "width": width, "edges": [lo + i * width for i in range(bins + 1)],
            "counts": counts}  # fmt: skip


def _categorical(
    con: duckdb.DuckDBPyConnection, feature: str, value_type: str, table: str
) -> dict[str, Any]:
    col = _quote(feature)
    rows, present = con.execute(f"SELECT count(*), count({col}) FROM {table}").fetchone() or (0, 0)
    obs = _observations(feature, value_type, table)
    elements, distinct = con.execute(
        f"SELECT count(v), count(DISTINCT v) FROM ({obs})"
    ).fetchone() or (0, 0)
    top = con.execute(
        f"SELECT v, count(*) AS c FROM ({obs}) WHERE v IS NOT NULL GROUP BY v "
        f"ORDER BY c DESC, v LIMIT {TOP_VALUES}"
    ).fetchall()
    out: dict[str, Any] = {"rows": rows, "nulls": rows - present, "distinct": distinct}
    if value_type != "string":
        out["elements"] = elements
    out["top"] = [{"value": v, "count": c} for v, c in top]
    return out


def _numeric_bins(
    con: duckdb.DuckDBPyConnection, feature: str, base: str, tables: Sequence[str]
) -> tuple[list[float], list[list[int]]]:
    """The base's decile edges, and each table's counts in those bins (nulls last)."""
    col = f"CAST({_quote(feature)} AS DOUBLE)"
    deciles = ", ".join(str(q) for q in _DECILES)
    found = con.execute(f"SELECT quantile_disc({col}, [{deciles}]) FROM {base}").fetchone()
    edges = sorted({float(e) for e in (found[0] if found and found[0] else [])})
    cases = " ".join(f"WHEN {col} <= ? THEN {i}" for i in range(len(edges)))
    bin_sql = f"CASE WHEN {col} IS NULL THEN {len(edges) + 1} {cases} ELSE {len(edges)} END"
    counts = []
    for table in tables:
        hist = [0] * (len(edges) + 2)
        for index, count in con.execute(
            f"SELECT {bin_sql} AS b, count(*) FROM {table} GROUP BY b", edges
        ).fetchall():
            hist[int(index)] += count
        counts.append(hist)
    return edges, counts


def _categorical_bins(
    con: duckdb.DuckDBPyConnection,
    feature: str,
    value_type: str,
    base_top: Sequence[str],
    tables: Sequence[str],
) -> list[list[int]]:
    """Each table's counts of the base's top values, then "other", then nulls."""
    index = {v: i for i, v in enumerate(base_top)}
    counts = []
    for table in tables:
        hist = [0] * (len(base_top) + 2)
        obs = _observations(feature, value_type, table)
        for value, count in con.execute(f"SELECT v, count(*) FROM ({obs}) GROUP BY v").fetchall():
            slot = len(base_top) + 1 if value is None else index.get(value, len(base_top))
            hist[slot] += count
        counts.append(hist)
    return counts


def view_stats(
    root: Path | str,
    layout: ViewLayout,
    base: TimeRange,
    *,
    compare: TimeRange | None = None,
    features: Sequence[str] | None = None,
    threads: int | None = None,
    con: duckdb.DuckDBPyConnection | None = None,
) -> ViewStats:
    """Statistics of ``layout``'s features (or ``features``) over the log rows in ``base``,
    and with ``compare`` those of that range too and each feature's drift from ``base``."""
    names = list(features) if features is not None else list(layout.feature_names)
    types = {f.name: f.type for f in layout.features}
    unknown = [n for n in names if n not in types]
    if unknown:
        raise StatsError(
            f"unknown feature(s) {', '.join(map(repr, unknown))} of view {layout.name!r}; "
            f"known: {', '.join(layout.feature_names)}"
        )
    own = con is None
    db = connect_duckdb(threads=threads) if con is None else con
    try:
        tables = ["__freshet_base"]
        db.execute(
            f"CREATE OR REPLACE TEMP TABLE __freshet_base AS {_rows_sql(db, root, layout, base)}"
        )
        if compare is not None:
            tables.append("__freshet_compare")
            db.execute(
                "CREATE OR REPLACE TEMP TABLE __freshet_compare AS "
                f"{_rows_sql(db, root, layout, compare)}"
            )
        sizes = [
            db.execute(f"SELECT count(*), count(DISTINCT {_ENTITY}) FROM {t}").fetchone() or (0, 0)
            for t in tables
        ]
        stats = tuple(_feature(db, name, types[name], tables) for name in names)
    finally:
        if own:
            db.close()
    return ViewStats(
        view=layout.name,
        version=layout.version,
        base=base,
        base_rows=sizes[0][0],
        base_entities=sizes[0][1],
        compare=compare,
        compare_rows=sizes[1][0] if compare is not None else None,
        compare_entities=sizes[1][1] if compare is not None else None,
        features=stats,
    )


def _feature(
    con: duckdb.DuckDBPyConnection, name: str, value_type: str, tables: Sequence[str]
) -> FeatureStats:
    kind = _kind(value_type)
    if kind == "numeric":
        summaries = [_numeric(con, name, t) for t in tables]
        bounds = [(s["min"], s["max"]) for s in summaries if s["min"] is not None]
        if bounds:
            lo, hi = min(b[0] for b in bounds), max(b[1] for b in bounds)
            for summary, table in zip(summaries, tables, strict=True):
                summary["histogram"] = _histogram(con, name, table, lo, hi)
    else:
        summaries = [_categorical(con, name, value_type, t) for t in tables]
    if len(tables) == 1:
        return FeatureStats(name, value_type, kind, summaries[0])
    if kind == "numeric":
        edges, counts = _numeric_bins(con, name, tables[0], tables)
        labels = [f"<= {e:g}" for e in edges] + ([f"> {edges[-1]:g}"] if edges else ["all"])
    else:
        top = [t["value"] for t in summaries[0]["top"]]
        counts = _categorical_bins(con, name, value_type, top, tables)
        labels = [*top, "(other)"]
    labels.append("(null)")
    score = psi(counts[0], counts[1])
    drift = {
        "psi": score,
        "drifted": score is not None and score > PSI_THRESHOLD,
        "bins": labels,
        "base_counts": counts[0],
        "compare_counts": counts[1],
    }
    return FeatureStats(name, value_type, kind, summaries[0], summaries[1], drift)


def entity_history(
    root: Path | str,
    layout: ViewLayout,
    entity: str,
    span: TimeRange,
    *,
    features: Sequence[str] | None = None,
    con: duckdb.DuckDBPyConnection | None = None,
) -> dict[str, Any]:
    """The log rows of one entity (its encoded id) in ``span``, oldest first (copies once):
    ``{"as_of": [ms, …], "features": {name: [value, …]}}``."""
    names = list(features) if features is not None else list(layout.feature_names)
    unknown = [n for n in names if n not in layout.feature_names]
    if unknown:
        raise StatsError(
            f"unknown feature(s) {', '.join(map(repr, unknown))} of view {layout.name!r}; "
            f"known: {', '.join(layout.feature_names)}"
        )
    own = con is None
    db = connect_duckdb(threads=1) if con is None else con
    try:
        cols = "".join(f", {_quote(n)}" for n in names)
        rows = db.execute(
            f"SELECT {_AS_OF}{cols} FROM ({_rows_sql(db, root, layout, span)}) "
            f"WHERE {_ENTITY} = ? ORDER BY {_KEY}",
            [entity],
        ).fetchall()
    finally:
        if own:
            db.close()
    return {
        "as_of": [r[0] for r in rows],
        "features": {n: [_plain(r[i + 1]) for r in rows] for i, n in enumerate(names)},
    }


def _plain(value: Any) -> Any:
    """A log value as JSON shows it: top_k structs as ``[value, count]`` pairs."""
    if isinstance(value, list):
        return [[v["value"], v["count"]] if isinstance(v, dict) else v for v in value]
    return value
