"""Point-in-time training sets: an as-of join of entity/timestamp rows against the offline log.

For each input row ``(entity, timestamp, labels…)`` and each requested view, the result holds
the values of the view's **latest log row of that entity with** ``as_of <= timestamp`` — what
Redis served at that event time — and never a value from the future:

* **Equal timestamps are included**: a row with ``as_of == timestamp`` is visible (``<=``), as
  the value changed *at* that instant (the row of an event is the value right after the event).
  Timestamps with sub-millisecond precision are floored to the millisecond first, so a log row
  at ``t`` ms is visible from ``t.000`` on and never at ``(t-1).999``.
* **Ties**: rows of one entity with the same ``as_of`` are ordered by source ``offset`` (then
  ``partition``), the order the Redis writer's newer-wins check uses, so the join returns the
  row Redis kept. Copies of a row (equal on :data:`freshet.sinks.parquet_log.DEDUPE_KEY`, left by
  crashes or replays) are the same row and are counted once, as
  :func:`freshet.sinks.parquet_log.read_log` does.
* **Nulls**: an entity absent from the log, a timestamp before the entity's first row, and a
  null entity or timestamp give nulls for that view's features.
* **TTL** (DESIGN "Online store": the reader reports ``expired``, with null values, when
  ``as_of + ttl < now``): a value whose row is older than the view's ``ttl_seconds`` at the
  timestamp (``as_of + ttl < timestamp``) is null, because the model would have been served
  ``expired`` then. ``ttl_seconds = 0`` never expires.
* **Order and columns**: the output has the input's rows in the input's order and all its
  columns unchanged (labels included), then one column per requested feature, named as the
  feature (``<view>__<feature>`` with ``full_names``), then optionally ``<view>__as_of``.

**Composite keys** (DESIGN "Entities"): a view keyed by several fields takes its entity from
one input column per key field, named as the field; the join matches the log's ``entity``
against the key values encoded as the sinks encode them
(:func:`freshet.sinks.layout.encode_entity`; a long field as its decimal digits, so ``"007"``
and ``7`` are the same key). A view keyed by one field takes ``entity_column``, or, when the
input has no such column, the column named as its key field. So views keyed differently can
be joined in one call when the input holds every column they need; a missing one is an
error naming it. A null in any key column gives nulls.

Timestamps may be epoch milliseconds (integers), Arrow timestamps (naive ones are UTC) or
dates, or strings holding either epoch milliseconds or ISO-8601 (``2024-05-01T12:00:00Z``,
``…+02:00``; no offset means UTC). Entities are compared as strings (an int entity ``42``
matches the log's ``"42"``, as the decoder stores int keys).

The join runs in DuckDB (``ASOF LEFT JOIN``) straight over the view's committed Parquet
segments (:func:`freshet.sinks.parquet_log.segment_paths`, temporary files excluded), so the log is
never turned into Python objects; segments whose date cannot hold a usable row (after the
latest timestamp, or expired before the earliest) are not read. :func:`historical_features`
returns an Arrow table; :func:`write_historical` streams the result to a Parquet or CSV file.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date as _date
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from freshet.dsl.definitions import FeatureView
from freshet.sinks.layout import KEY_SEPARATOR, ViewLayout
from freshet.sinks.parquet_log import DEDUPE_KEY, segment_paths

__all__ = [
    "HistoricalError",
    "ViewRequest",
    "connect_duckdb",
    "historical_features",
    "key_columns",
    "log_rows_sql",
    "parse_feature_specs",
    "read_entities",
    "write_historical",
]

_DAY_MS = 86_400_000
_SCALAR_SQL = {"int64": "BIGINT", "float64": "DOUBLE", "string": "VARCHAR"}
# Every feature value type as DuckDB reads the log (last_k lists, top_k lists of structs).
_SQL_TYPES = {
    **_SCALAR_SQL,
    **{f"list<{name}>": f"{sql}[]" for name, sql in _SCALAR_SQL.items()},
    **{
        f"top_k<{name}>": f'STRUCT("value" {sql}, "count" BIGINT)[]'
        for name, sql in _SCALAR_SQL.items()
    },
}
# Internal column names; an input column with one of these names is refused.
_ROW = "__freshet_row"
_ENTITY = "__freshet_entity"
_TS = "__freshet_ts"
_AS_OF = "__freshet_as_of"

# Rows of one entity are ordered by this key, newest last: as_of, then the source offset (what
# the Redis writer's newer-wins check compares), then the rest of the log's dedupe key. Rows
# equal on it are equal on DEDUPE_KEY: copies of one row, so any of them may be taken.
assert DEDUPE_KEY[:2] == ("entity", "as_of"), DEDUPE_KEY
_ORDER = ("as_of", "offset", *(c for c in DEDUPE_KEY[2:] if c != "offset"))
_ORDER_TYPES = {"as_of": "BIGINT", "offset": "BIGINT", "partition": "INTEGER"}
_ORDER_MAX = {"BIGINT": "9223372036854775807::BIGINT", "INTEGER": "2147483647::INTEGER"}
_KEY = "__freshet_key"


class HistoricalError(ValueError):
    """A request the as-of join cannot serve; the message names the bad value."""


@dataclass(frozen=True, slots=True)
class ViewRequest:
    """Features wanted from one view (by its layout: name, version, types, TTL)."""

    layout: ViewLayout
    features: tuple[str, ...]

    def __post_init__(self) -> None:
        known = self.layout.feature_names
        unknown = [f for f in self.features if f not in known]
        if unknown:
            raise HistoricalError(
                f"unknown feature(s) {', '.join(map(repr, unknown))} of view "
                f"{self.layout.name!r}; known: {', '.join(known)}"
            )
        if not self.features:
            raise HistoricalError(f"no features requested from view {self.layout.name!r}")


def parse_feature_specs(
    specs: str | Iterable[str], resolve: Callable[[str], FeatureView]
) -> tuple[ViewRequest, ...]:
    """``"card_txn:txn_count_5m,card_txn:amount_sum_1h,other:*"`` -> one request per view.

    ``view:*`` asks for all of a view's features. Views keep the order of first mention;
    ``resolve`` maps a view name to its definition (``freshet.dsl.registry.get_view``) and raises
    for unknown names.
    """
    items = [specs] if isinstance(specs, str) else list(specs)
    wanted: dict[str, list[str]] = {}
    layouts: dict[str, ViewLayout] = {}
    for item in items:
        for spec in (s.strip() for s in item.split(",")):
            if not spec:
                continue
            view_name, sep, feature = spec.partition(":")
            if not sep or not view_name or not feature:
                raise HistoricalError(
                    f"feature spec {spec!r} is not 'view:feature' (or 'view:*'), "
                    "e.g. 'card_txn:txn_count_5m'"
                )
            if view_name not in layouts:
                layouts[view_name] = resolve(view_name).layout()
                wanted[view_name] = []
            names = layouts[view_name].feature_names if feature == "*" else (feature,)
            for name in names:
                if name in wanted[view_name]:
                    if feature == "*":
                        continue
                    raise HistoricalError(f"feature {spec!r} is requested twice")
                wanted[view_name].append(name)
    if not wanted:
        raise HistoricalError("no features requested; give e.g. 'card_txn:txn_count_5m'")
    return tuple(ViewRequest(layouts[v], tuple(f)) for v, f in wanted.items())


def connect_duckdb(
    *, threads: int | None = None, memory_limit: str | None = None
) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection in UTC. ``threads`` defaults to all cores;
    ``memory_limit`` (e.g. ``"2GB"``) to 80 % of RAM, beyond which DuckDB spills to disk."""
    con = duckdb.connect(":memory:")
    if threads is not None:
        con.execute(f"SET threads = {int(threads)}")
    if memory_limit is not None:
        try:
            con.execute(f"SET memory_limit = {_literal(memory_limit)}")
        except duckdb.Error as exc:
            con.close()
            raise HistoricalError(
                f"memory limit {memory_limit!r} is not a size DuckDB knows, e.g. '2GB': {exc}"
            ) from exc
    with contextlib.suppress(duckdb.Error):  # without ICU, DuckDB knows no zone but UTC
        con.execute("SET TimeZone = 'UTC'")
    return con


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _floor_div(expr: str, by: int) -> str:
    # DuckDB's // truncates toward zero; a timestamp must be floored (never rounded up).
    return (
        f"(CASE WHEN ({expr}) >= 0 THEN ({expr}) // {by} ELSE -((-({expr}) - 1) // {by}) - 1 END)"
    )


def _segment_day_ms(path: Path) -> int | None:
    match = re.fullmatch(r"date=(\d{4})-(\d{2})-(\d{2})", path.parent.name)
    if match is None:
        return None
    day = _date(int(match[1]), int(match[2]), int(match[3]))
    return (day - _date(1970, 1, 1)).days * _DAY_MS


def _segments(
    root: Path | str, layout: ViewLayout, lo_ms: int | None, hi_ms: int | None
) -> list[str]:
    """Committed segments of the view whose date may hold rows with ``lo <= as_of <= hi``."""
    out = []
    for path in segment_paths(root, layout.name, layout.version):
        day = _segment_day_ms(path)
        if day is not None and (
            (hi_ms is not None and day > hi_ms) or (lo_ms is not None and day + _DAY_MS <= lo_ms)
        ):
            continue
        out.append(str(path))
    return out


def _key_struct(as_of: str, *, rest_max: bool) -> str:
    """The order key as a DuckDB struct (compared field by field). ``rest_max``: the greatest
    key of time ``as_of`` (a probe that sees every row of that millisecond)."""
    fields = [f"'as_of': CAST({as_of} AS BIGINT)"]
    for column in _ORDER[1:]:
        sql_type = _ORDER_TYPES[column]
        value = _ORDER_MAX[sql_type] if rest_max else f"CAST({_quote(column)} AS {sql_type})"
        fields.append(f"'{column}': {value}")
    return "{" + ", ".join(fields) + "}"


def log_rows_sql(
    con: duckdb.DuckDBPyConnection,
    root: Path | str,
    layout: ViewLayout,
    features: Sequence[str],
    *,
    min_as_of_ms: int | None = None,
    max_as_of_ms: int | None = None,
    latest_per_entity: bool = False,
) -> str:
    """A SQL query over the view's committed log segments with columns ``__freshet_entity``
    (VARCHAR), ``__freshet_as_of`` (epoch ms BIGINT), ``offset`` (BIGINT), ``partition``
    (INTEGER), ``__freshet_key`` (the order key: a struct of as_of, offset, partition) and
    ``features``, typed as the layout says (a feature no segment holds yet reads as null).

    Copies of a row all appear; with ``latest_per_entity`` only each entity's newest row by
    the order key does. ``min_as_of_ms``/``max_as_of_ms`` bound ``as_of`` (inclusive).
    """
    paths = _segments(root, layout, min_as_of_ms, max_as_of_ms)
    types = {f.name: _SQL_TYPES[f.type] for f in layout.features}
    if not paths:
        typed = ", ".join(f"NULL::{types[f]} AS {_quote(f)}" for f in features)
        return (
            f"SELECT NULL::VARCHAR AS {_ENTITY}, NULL::BIGINT AS {_AS_OF}, "
            f'NULL::BIGINT AS "offset", NULL::INTEGER AS "partition", '
            f"{_key_struct('NULL', rest_max=True)} AS {_KEY}"
            + (f", {typed}" if typed else "")
            + " WHERE false"
        )
    source = (
        f"read_parquet([{', '.join(map(_literal, paths))}], "
        "union_by_name = true, hive_partitioning = false)"
    )
    present = {row[0] for row in con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()}
    cols = [
        f"CAST({_quote(f)} AS {types[f]}) AS {_quote(f)}"
        if f in present
        else f"NULL::{types[f]} AS {_quote(f)}"
        for f in features
    ]
    where = []
    if min_as_of_ms is not None:
        where.append(f"epoch_ms(as_of) >= {int(min_as_of_ms)}")
    if max_as_of_ms is not None:
        where.append(f"epoch_ms(as_of) <= {int(max_as_of_ms)}")
    key = _key_struct("epoch_ms(as_of)", rest_max=False)
    return (
        f"SELECT CAST(entity AS VARCHAR) AS {_ENTITY}, epoch_ms(as_of) AS {_AS_OF}, "
        f'CAST("offset" AS BIGINT) AS "offset", CAST("partition" AS INTEGER) AS "partition", '
        f"{key} AS {_KEY}"
        + "".join(f", {c}" for c in cols)
        + f" FROM {source}"
        + (f" WHERE {' AND '.join(where)}" if where else "")
        + (
            f" QUALIFY row_number() OVER (PARTITION BY entity ORDER BY {key} DESC) = 1"
            if latest_per_entity
            else ""
        )
    )


def _timestamp_sql(column: str, arrow_type: pa.DataType) -> str:
    """SQL turning the input timestamp column into epoch milliseconds (BIGINT, floored)."""
    col = f"q.{_quote(column)}"
    if pa.types.is_integer(arrow_type):
        return f"CAST({col} AS BIGINT)"
    if pa.types.is_timestamp(arrow_type):
        unit = arrow_type.unit
        if unit in ("s", "ms"):
            return f"epoch_ms({col})"
        if unit == "us":
            return _floor_div(f"epoch_us({col})", 1000)
        return _floor_div(f"epoch_ns({col})", 1_000_000)
    if pa.types.is_date(arrow_type):
        return f"epoch_ms(CAST({col} AS TIMESTAMP))"
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        text = f"trim({col})"
        return (
            f"(CASE WHEN regexp_full_match({text}, '[+-]?[0-9]+') THEN TRY_CAST({text} AS BIGINT) "
            f"ELSE {_floor_div(f'epoch_us(TRY_CAST({text} AS TIMESTAMPTZ))', 1000)} END)"
        )
    raise HistoricalError(
        f"timestamp column {column!r} has type {arrow_type}; use epoch milliseconds (integers), "
        "timestamps, dates or ISO-8601 strings"
    )


@dataclass(frozen=True, slots=True)
class _Plan:
    sql: str
    input_table: pa.Table


def key_columns(requests: Sequence[ViewRequest]) -> list[str]:
    """The input columns the composite views among ``requests`` take their keys from."""
    names: list[str] = []
    for request in requests:
        if request.layout.is_composite:
            names += [k for k in request.layout.keys if k not in names]
    return names


def _entity_sql(
    layout: ViewLayout, columns: Sequence[str], entity_column: str
) -> tuple[str, list[str]]:
    """SQL of the view's entity id from an input row (aliased ``q``), and the long key columns
    it casts to integers (checked by the caller). Raises HistoricalError for a missing column."""
    if not layout.is_composite:
        if entity_column in columns:
            return f"CAST(q.{_quote(entity_column)} AS VARCHAR)", []
        if layout.keys[0] in columns:
            return f"CAST(q.{_quote(layout.keys[0])} AS VARCHAR)", []
        raise HistoricalError(
            f"the entities input has no column {entity_column!r} (nor {layout.keys[0]!r}, the "
            f"key field of view {layout.name!r}); its columns: {', '.join(columns) or '(none)'}"
        )
    missing = [k for k in layout.keys if k not in columns]
    if missing:
        raise HistoricalError(
            f"view {layout.name!r} is keyed by {', '.join(layout.keys)}: the entities input "
            f"has no column {', '.join(map(repr, missing))}; its columns: "
            f"{', '.join(columns) or '(none)'}"
        )
    parts = []
    longs = []
    for i, key in enumerate(layout.keys):
        col = f"q.{_quote(key)}"
        if i < len(layout.key_types) and layout.key_types[i] == "int64":
            parts.append(f"CAST(TRY_CAST({col} AS BIGINT) AS VARCHAR)")
            longs.append(key)
        else:
            # encode_entity's escaping: '%' first, then the separator
            parts.append(f"replace(replace(CAST({col} AS VARCHAR), '%', '%25'), '|', '%7C')")
    # ``||`` is null when any part is: a null key value gives nulls, as a null entity does
    return f" || '{KEY_SEPARATOR}' || ".join(parts), longs


def _output_names(
    requests: Sequence[ViewRequest],
    input_names: Sequence[str],
    *,
    full_names: bool,
    with_as_of: bool,
) -> list[list[str]]:
    views = [r.layout.name for r in requests]
    if len(set(views)) != len(views):
        raise HistoricalError(f"view(s) requested twice: {', '.join(views)}")
    names = [[f"{r.layout.name}__{f}" if full_names else f for f in r.features] for r in requests]
    seen: dict[str, str] = dict.fromkeys(input_names, "an input column")
    for request, view_names in zip(requests, names, strict=True):
        extra = [f"{request.layout.name}__as_of"] if with_as_of else []
        for name in view_names + extra:
            if name in seen:
                hint = "" if full_names else "; use full names (<view>__<feature>)"
                raise HistoricalError(
                    f"output column {name!r} of view {request.layout.name!r} clashes with "
                    f"{seen[name]}{hint}"
                )
            seen[name] = f"view {request.layout.name!r}"
    return names


def _plan(
    con: duckdb.DuckDBPyConnection,
    root: Path | str,
    entities: pa.Table,
    requests: Sequence[ViewRequest],
    *,
    entity_column: str,
    timestamp_column: str,
    full_names: bool,
    with_as_of: bool,
) -> _Plan:
    if not requests:
        raise HistoricalError("no features requested")
    if timestamp_column not in entities.column_names:
        raise HistoricalError(
            f"the entities input has no column {timestamp_column!r}; its columns: "
            f"{', '.join(entities.column_names) or '(none)'}"
        )
    # One entity column per distinct key expression (views keyed alike share one).
    entity_cols: dict[str, str] = {}
    long_keys: list[str] = []
    view_entity: list[str] = []
    for request in requests:
        expr, longs = _entity_sql(request.layout, entities.column_names, entity_column)
        if expr not in entity_cols:
            entity_cols[expr] = _ENTITY if not entity_cols else f"{_ENTITY}_{len(entity_cols)}"
        view_entity.append(entity_cols[expr])
        long_keys += [k for k in longs if k not in long_keys]
    internal = [c for c in entities.column_names if c.startswith("__freshet_")]
    if internal:
        raise HistoricalError(f"input column name(s) {internal} are reserved (prefix __freshet_)")
    names = _output_names(
        requests, entities.column_names, full_names=full_names, with_as_of=with_as_of
    )
    table = entities.append_column(_ROW, pa.array(range(entities.num_rows), pa.int64()))
    con.register("__freshet_input", table)
    ts_sql = _timestamp_sql(timestamp_column, entities.schema.field(timestamp_column).type)
    # The probe key is the greatest order key of the timestamp's millisecond, so every row
    # with as_of <= timestamp is visible (a null timestamp must give a null key: a struct
    # holding a null would compare as greater than every row).
    probe_key = _key_struct(_TS, rest_max=True)
    entity_select = "".join(f"{expr} AS {col}, " for expr, col in entity_cols.items())
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE __freshet_q AS SELECT *, CASE WHEN {_TS} IS NULL "
        f"THEN NULL ELSE {probe_key} END AS {_KEY} FROM (SELECT q.*, "
        f"{entity_select}{ts_sql} AS {_TS} "
        f"FROM __freshet_input AS q)"
    )
    for key in long_keys:
        col = _quote(key)
        bad = con.execute(
            f"SELECT {_ROW}, CAST({col} AS VARCHAR) FROM __freshet_q WHERE {col} IS NOT NULL "
            f"AND TRY_CAST({col} AS BIGINT) IS NULL ORDER BY {_ROW} LIMIT 1"
        ).fetchall()
        if bad:
            raise HistoricalError(
                f"row {bad[0][0]}: key {bad[0][1]!r} in column {key!r} is not an integer "
                "(a long key field)"
            )
    bad = con.execute(
        f"SELECT {_ROW}, CAST({_quote(timestamp_column)} AS VARCHAR) FROM __freshet_q "
        f"WHERE {_quote(timestamp_column)} IS NOT NULL AND {_TS} IS NULL ORDER BY {_ROW} LIMIT 1"
    ).fetchall()
    if bad:
        raise HistoricalError(
            f"row {bad[0][0]}: timestamp {bad[0][1]!r} in column {timestamp_column!r} is neither "
            "epoch milliseconds nor an ISO-8601 time"
        )
    # (fetchall: DuckDB 2 refuses new work while a result is not fetched to its end)
    lo, hi = con.execute(f"SELECT min({_TS}), max({_TS}) FROM __freshet_q").fetchall()[0]

    ctes = ["q AS (SELECT * FROM __freshet_q)"]
    joins = []
    selects = [f"q.* EXCLUDE ({_ROW}, {', '.join(entity_cols.values())}, {_TS}, {_KEY})"]
    for i, (request, view_names, entity) in enumerate(
        zip(requests, names, view_entity, strict=True)
    ):
        layout = request.layout
        ttl_ms = layout.ttl_seconds * 1000
        alias = f"v{i}"
        # Rows expired before the earliest timestamp can only ever give nulls: skip them.
        min_as_of = lo - ttl_ms if (lo is not None and ttl_ms) else None
        max_as_of = hi if hi is not None else None
        if lo is None:  # no usable timestamp at all: every value is null
            min_as_of, max_as_of = 1, 0
        ctes.append(
            f"{alias} AS ("
            + log_rows_sql(
                con,
                root,
                layout,
                request.features,
                min_as_of_ms=min_as_of,
                max_as_of_ms=max_as_of,
            )
            + ")"
        )
        joins.append(
            f"ASOF LEFT JOIN {alias} ON q.{entity} = {alias}.{_ENTITY} "
            f"AND q.{_KEY} >= {alias}.{_KEY}"
        )
        expired = f"{alias}.{_AS_OF} + {ttl_ms} < q.{_TS}" if ttl_ms else None
        for feature, name in zip(request.features, view_names, strict=True):
            value = f"{alias}.{_quote(feature)}"
            if expired is not None:
                value = f"CASE WHEN {expired} THEN NULL ELSE {value} END"
            selects.append(f"{value} AS {_quote(name)}")
        if with_as_of:
            as_of = f"CAST(make_timestamp({alias}.{_AS_OF} * 1000) AS TIMESTAMPTZ)"
            if expired is not None:
                as_of = f"CASE WHEN {expired} THEN NULL ELSE {as_of} END"
            selects.append(f"{as_of} AS {_quote(layout.name + '__as_of')}")
    sql = (
        f"WITH {', '.join(ctes)} SELECT {', '.join(selects)} FROM q "
        + " ".join(joins)
        + f" ORDER BY q.{_ROW}"
    )
    return _Plan(sql=sql, input_table=table)


def historical_features(
    root: Path | str,
    entities: pa.Table,
    requests: Sequence[ViewRequest],
    *,
    entity_column: str = "entity",
    timestamp_column: str = "timestamp",
    full_names: bool = False,
    with_as_of: bool = False,
    threads: int | None = None,
    memory_limit: str | None = None,
) -> pa.Table:
    """The point-in-time join of ``entities`` with the logs under ``root``; see the module
    docstring. ``with_as_of`` adds ``<view>__as_of`` (the matched row's time, UTC)."""
    con = connect_duckdb(threads=threads, memory_limit=memory_limit)
    try:
        plan = _plan(
            con,
            root,
            entities,
            requests,
            entity_column=entity_column,
            timestamp_column=timestamp_column,
            full_names=full_names,
            with_as_of=with_as_of,
        )
        result = con.sql(plan.sql).arrow()
        table: pa.Table = result.read_all() if isinstance(result, pa.RecordBatchReader) else result
        return table
    finally:
        con.close()


def read_entities(
    path: Path | str,
    *,
    entity_column: str = "entity",
    timestamp_column: str = "timestamp",
    key_columns: Sequence[str] = (),
) -> pa.Table:
    """The entity/timestamp rows of a ``.parquet`` or ``.csv`` file.

    In CSV the entity, timestamp and ``key_columns`` (the key fields of composite views:
    :func:`key_columns`) are read as text (``007`` stays ``"007"``; the timestamp is parsed as
    epoch ms or ISO-8601 by the join); label columns are inferred.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            return pq.read_table(path)
        if suffix == ".csv":
            return pacsv.read_csv(
                path,
                convert_options=pacsv.ConvertOptions(
                    column_types={
                        entity_column: pa.string(),
                        timestamp_column: pa.string(),
                        **dict.fromkeys(key_columns, pa.string()),
                    }
                ),
            )
    except (OSError, pa.ArrowInvalid) as exc:
        raise HistoricalError(f"cannot read entities from {str(path)!r}: {exc}") from exc
    raise HistoricalError(f"entities file {str(path)!r} must end in .parquet or .csv")


def write_historical(
    root: Path | str,
    entities: pa.Table,
    requests: Sequence[ViewRequest],
    out: Path | str,
    *,
    entity_column: str = "entity",
    timestamp_column: str = "timestamp",
    full_names: bool = False,
    with_as_of: bool = False,
    threads: int | None = None,
    memory_limit: str | None = None,
) -> int:
    """Write the join to ``out`` (``.parquet``, zstd, or ``.csv`` with a header) through a
    temporary file renamed when complete; returns the number of rows written."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix in (".parquet", ".pq"):
        options = "FORMAT parquet, COMPRESSION zstd"
    elif suffix == ".csv":
        options = "FORMAT csv, HEADER true"
    else:
        raise HistoricalError(f"output file {str(out)!r} must end in .parquet or .csv")
    tmp = out.with_name(f".{out.name}.tmp")
    con = connect_duckdb(threads=threads, memory_limit=memory_limit)
    try:
        plan = _plan(
            con,
            root,
            entities,
            requests,
            entity_column=entity_column,
            timestamp_column=timestamp_column,
            full_names=full_names,
            with_as_of=with_as_of,
        )
        con.execute(f"COPY ({plan.sql}) TO {_literal(str(tmp))} ({options})")
        os.replace(tmp, out)
    except duckdb.IOException as exc:
        raise HistoricalError(f"cannot write {str(out)!r}: {exc}") from exc
    finally:
        con.close()
        tmp.unlink(missing_ok=True)
    rows: int = plan.input_table.num_rows
    return rows
