"""Training sets of a feature service: the endpoint's columns, point in time.

``freshet historical --service fraud_v1 --entities rows.csv --out train.parquet`` takes rows
holding every key field of the service's views, ``timestamp`` and the request fields (labels
and other columns are kept), and returns them with exactly the feature columns
``POST /v1/services/fraud_v1`` answers: ``<view>__<feature>`` for each view feature, joined per
view as of each row's timestamp by :func:`freshet.offline.historical.historical_features`
(composite keys, TTL and ties as there), then the derived features, computed row by row by the
service's compiled expressions (:meth:`freshet.dsl.services.ServicePlan.derive`, the very
functions the endpoint calls). A value the endpoint would serve as ``not_found`` or
``expired`` is null here, so derived features see the same inputs on both paths.

Request fields are read as their declared types (an integer column of a ``float64`` field
becomes floats; a CSV's ``string`` fields are read as text); a value of another type is an
error naming its row.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from freshet.dsl.services import RequestValueError, ServicePlan
from freshet.offline.historical import (
    HistoricalError,
    ViewRequest,
    historical_features,
    read_entities,
)

__all__ = [
    "read_service_rows",
    "service_historical",
    "service_requests",
    "write_service_historical",
]

# Service rows name each view's key by its key fields, never by an ``entity`` column; a name
# no input can have (``__freshet_`` columns are refused by the join) keeps the join from
# looking for one.
_NO_ENTITY_COLUMN = "__freshet_service_entity"
_ARROW_TYPES = {
    "int64": pa.int64(),
    "float64": pa.float64(),
    "string": pa.string(),
    "bool": pa.bool_(),
}


def service_requests(plan: ServicePlan) -> tuple[ViewRequest, ...]:
    """One as-of join request per view version the service reads."""
    return tuple(ViewRequest(view.layout, view.features) for view in plan.views)


def read_service_rows(
    path: Path | str, plan: ServicePlan, *, timestamp_column: str = "timestamp"
) -> pa.Table:
    """The rows of a ``.parquet`` or ``.csv`` file; in CSV the key fields and ``string``
    request fields are read as text (``007`` stays ``"007"``)."""
    text = [*plan.keys, *(name for name, kind in plan.request if kind == "string")]
    return read_entities(
        path,
        entity_column=_NO_ENTITY_COLUMN,
        timestamp_column=timestamp_column,
        key_columns=text,
    )


def service_historical(
    root: Path | str,
    rows: pa.Table,
    plan: ServicePlan,
    *,
    timestamp_column: str = "timestamp",
    with_as_of: bool = False,
    threads: int | None = None,
    memory_limit: str | None = None,
) -> pa.Table:
    """``rows`` with the service's columns as of each row's timestamp (see the module
    docstring); ``with_as_of`` adds ``<view>__as_of`` per view."""
    request_names = [name for name, _ in plan.request]
    missing = [c for c in (*plan.keys, *request_names) if c not in rows.column_names]
    if missing:
        raise HistoricalError(
            f"service {plan.name!r} needs column(s) {', '.join(map(repr, missing))} (key "
            f"fields {', '.join(plan.keys)}; request fields "
            f"{', '.join(request_names) or '(none)'}); the input's columns: "
            f"{', '.join(rows.column_names) or '(none)'}"
        )
    clash = [d.name for d in plan.derived if d.name in rows.column_names]
    if clash:
        raise HistoricalError(
            f"input column(s) {', '.join(map(repr, clash))} clash with derived features of "
            f"service {plan.name!r}; rename them"
        )
    table = historical_features(
        root,
        rows,
        service_requests(plan),
        entity_column=_NO_ENTITY_COLUMN,
        timestamp_column=timestamp_column,
        full_names=True,
        with_as_of=with_as_of,
        threads=threads,
        memory_limit=memory_limit,
    )
    if not plan.derived:
        return table
    values = {c: table.column(c).to_pylist() for d in plan.derived for c in d.inputs}
    for name, kind in plan.request:
        if name in values:
            column = values[name]
            try:
                values[name] = [plan.request_value(name, kind, v) for v in column]
            except RequestValueError as exc:
                bad = next(i for i, v in enumerate(column) if _refused(plan, name, kind, v))
                raise HistoricalError(f"row {bad}: {exc}") from None
    names = list(values)
    derived: list[list[object]] = [[] for _ in plan.derived]
    for row in zip(*values.values(), strict=True) if names else [()] * table.num_rows:
        for out, value in zip(
            derived, plan.derive(dict(zip(names, row, strict=True))), strict=True
        ):
            out.append(value)
    for feature, column in zip(plan.derived, derived, strict=True):
        table = table.append_column(
            pa.field(feature.name, _ARROW_TYPES[feature.type]),
            pa.array(column, _ARROW_TYPES[feature.type]),
        )
    return table


def _refused(plan: ServicePlan, name: str, kind: str, value: object) -> bool:
    try:
        plan.request_value(name, kind, value)  # type: ignore[arg-type]
    except RequestValueError:
        return True
    return False


def write_service_historical(
    root: Path | str,
    rows: pa.Table,
    plan: ServicePlan,
    out: Path | str,
    *,
    timestamp_column: str = "timestamp",
    with_as_of: bool = False,
    threads: int | None = None,
    memory_limit: str | None = None,
) -> int:
    """Write :func:`service_historical` to ``out`` (``.parquet``, zstd, or ``.csv`` with a
    header) through a temporary file renamed when complete; returns the number of rows."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".parquet", ".pq", ".csv"):
        raise HistoricalError(f"output file {str(out)!r} must end in .parquet or .csv")
    table = service_historical(
        root,
        rows,
        plan,
        timestamp_column=timestamp_column,
        with_as_of=with_as_of,
        threads=threads,
        memory_limit=memory_limit,
    )
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        if suffix == ".csv":
            pacsv.write_csv(table, tmp)
        else:
            pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, out)
    except OSError as exc:
        raise HistoricalError(f"cannot write {str(out)!r}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    written: int = table.num_rows
    return written
