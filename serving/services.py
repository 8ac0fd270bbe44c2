"""``POST /v1/services/{name}``: a feature service's rows in, one feature vector per row out.

A request is ``{"rows": [{<key fields of every view>, <request fields>}, …]}`` (at most
``MAX_BATCH`` rows); the answer, in request order::

    {"service": "fraud_v1",
     "results": [{"features": {"card_txn__txn_count_5m": 3, …, "amount_vs_mean": 0.42},
                  "status": {"card_txn__txn_count_5m": "present", …},
                  "views": {"card_txn": {"version": 1, "entity": "c1", "found": true,
                                         "as_of": 1714…, "age_ms": 12}, …}}, …]}

Every view feature is named ``<view>__<feature>`` and has its view's status for the row
(``present``, ``not_found``, ``expired``, or ``stale`` for a windowed feature the flow should
have replaced by now; the body's optional ``"max_staleness_ms"`` nulls those, as for lookups);
a derived feature is computed by the service's
compiled expression (:meth:`freshet.dsl.services.ServicePlan.derive`, the code
``freshet historical --service`` runs too) and is ``present`` when every feature it reads is,
else the status of the first one that is not. All views' records of all rows are read with one
``MGET`` (:meth:`freshet.sinks.redis_store.AsyncRedisFeatureReader.get_views`).

This module parses and answers; the app (:mod:`freshet.serving.app`) routes, authorizes and
reads Redis.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from freshet.dsl.services import RequestValueError, ServicePlan
from freshet.serving.errors import HttpError, json_body, max_staleness
from freshet.serving.keys import EntityKeyError, composite_key, entity_problem
from freshet.sinks.layout import encode_entity
from freshet.sinks.redis_store import InvalidEntityError

__all__ = ["ServiceRows"]

# (as_of, values, stale): RedisFeatureReader.record_values
Record = tuple[int | None, list[Any] | None, bool]

# How a row's key fields become a view's entity id.
_PLAIN, _STRINGS, _TYPED = 0, 1, 2


class ServiceRows:
    """One service's request parsing and answer building (built once per app)."""

    def __init__(self, plan: ServicePlan, *, max_batch: int) -> None:
        self.plan = plan
        self._max_batch = max_batch
        self._views = plan.views
        self._refs = [view.ref for view in plan.views]
        self._request = plan.request
        self._fields = (*plan.keys, *(name for name, _ in plan.request))
        self._allowed = frozenset(self._fields)
        self._kinds = []
        for view in plan.views:
            types = view.layout.key_types or ("string",) * len(view.layout.keys)
            strings = all(t == "string" for t in types)
            if strings and not view.layout.is_composite:
                self._kinds.append(_PLAIN)
            else:
                self._kinds.append(_STRINGS if strings else _TYPED)
        # Per view: output columns, the positions of its features in a record, and the
        # null values and statuses of a row without one.
        self._shapes = []
        for view in plan.views:
            position = {name: i for i, name in enumerate(view.layout.feature_names)}
            self._shapes.append(
                (
                    view.name,
                    view.version,
                    view.columns,
                    tuple(position[f] for f in view.features),
                    dict.fromkeys(view.columns),
                    dict.fromkeys(view.columns, "not_found"),
                    dict.fromkeys(view.columns, "expired"),
                    dict.fromkeys(view.columns, "present"),
                    {
                        column: "stale" if view.layout.features[i].windowed else "present"
                        for column, i in zip(
                            view.columns, (position[f] for f in view.features), strict=True
                        )
                    },
                )
            )
        feature_columns = {c for v in plan.views for c in v.columns}
        self._derived_reads = [
            tuple(c for c in d.inputs if c in feature_columns) for d in plan.derived
        ]
        self._derived_names = [d.name for d in plan.derived]
        self._shape = f"service {plan.name!r} takes rows of {', '.join(plan.keys)} (keys)" + (
            f" and {', '.join(n for n, _ in plan.request)} (request)" if plan.request else ""
        )

    def parse(self, body: bytes) -> tuple[list[list[str]], list[dict[str, Any]], int | None]:
        """The entity ids per view (in row order), each row's request values and the
        ``max_staleness_ms`` of a request body; :class:`HttpError` 400/413/422 naming the bad
        row and field."""
        request = json_body(body)
        if (
            not isinstance(request, dict)
            or "rows" not in request
            or not set(request) <= {"rows", "max_staleness_ms"}
        ):
            raise HttpError(
                422, "invalid_request", 'body must be {"rows": [...]} (and "max_staleness_ms")'
            )
        limit = max_staleness(request.get("max_staleness_ms"), '"max_staleness_ms"')
        rows = request["rows"]
        if not isinstance(rows, list):
            raise HttpError(422, "invalid_request", f'"rows" must be a list; {self._shape}')
        if len(rows) > self._max_batch:
            raise HttpError(
                413,
                "too_large",
                f"{len(rows)} rows in one request; the maximum is {self._max_batch}",
            )
        fields, count = self._fields, len(self._fields)
        entities: list[list[str]] = [[] for _ in self._views]
        values: list[dict[str, Any]] = []
        for index, row in enumerate(rows):
            if not isinstance(row, dict):
                raise HttpError(
                    422, "invalid_request", f"rows[{index}] is {row!r}; rows are objects"
                )
            if len(row) != count or not all(f in row for f in fields):
                self._refuse_fields(index, row)
            for view, how, ids in zip(self._views, self._kinds, entities, strict=True):
                ids.append(self._entity(index, row, view.layout, how))
            given: dict[str, Any] = {}
            for name, kind in self._request:
                try:
                    given[name] = self.plan.request_value(name, kind, row[name])
                except RequestValueError as exc:
                    raise HttpError(422, "invalid_request", f"rows[{index}]: {exc}") from None
            values.append(given)
        return entities, values, limit

    def _refuse_fields(self, index: int, row: dict[str, Any]) -> None:
        missing = [f for f in self._fields if f not in row]
        unknown = [f for f in row if f not in self._allowed]
        problems = [f"no {', '.join(map(repr, missing))}"] if missing else []
        problems += [f"unknown {', '.join(map(repr, unknown))}"] if unknown else []
        raise HttpError(
            422, "invalid_request", f"rows[{index}]: {' and '.join(problems)}; {self._shape}"
        )

    @staticmethod
    def _entity(index: int, row: dict[str, Any], layout: Any, kind: int) -> str:
        if kind == _PLAIN:
            value = row[layout.keys[0]]
            if type(value) is str and entity_problem(value) is None:
                return value
        elif kind == _STRINGS:
            parts = [row[k] for k in layout.keys]
            if all(type(p) is str and entity_problem(p) is None for p in parts):
                return encode_entity(parts)
        # the slow path: a long key field, or a value to refuse with composite_key's message
        if kind == _PLAIN and type(value := row[layout.keys[0]]) is str:
            problem = entity_problem(value)
            raise HttpError(422, "invalid_request", f"rows[{index}]: {layout.keys[0]!r}: {problem}")
        try:
            return composite_key(layout, {k: row[k] for k in layout.keys})[0]
        except EntityKeyError as exc:
            raise HttpError(422, "invalid_request", f"rows[{index}]: {exc}") from None

    def keys(self, reader: Any, entities: Sequence[list[str]]) -> list[bytes]:
        """Every view's record keys of ``entities`` (:meth:`parse`), for one ``MGET``."""
        try:
            return [
                key
                for ref, ids in zip(self._refs, entities, strict=True)
                for key in reader.record_keys(ref, ids)
            ]
        except InvalidEntityError as exc:
            raise HttpError(422, "invalid_request", str(exc)) from None

    def records(
        self,
        reader: Any,
        raws: Sequence[bytes | None],
        now: int,
        max_staleness_ms: int | None = None,
    ) -> list[list[Record]]:
        """The ``MGET`` replies of :meth:`keys`, decoded per view."""
        rows = len(raws) // len(self._views)
        return [
            reader.record_values(ref, raws[i * rows : (i + 1) * rows], now, max_staleness_ms)
            for i, ref in enumerate(self._refs)
        ]

    def answer(
        self,
        request_values: Sequence[dict[str, Any]],
        entities: Sequence[list[str]],
        records: Sequence[list[Record]],
        now: int,
    ) -> dict[str, Any]:
        """The response body of one request: a result per row, in request order."""
        results = []
        derive = self.plan.derive if self._derived_names else None
        shapes = list(zip(self._shapes, entities, records, strict=True))
        for row, given in enumerate(request_values):
            features: dict[str, Any] = {}
            status: dict[str, str] = {}
            found: dict[str, Any] = {}
            for shape, ids, view_records in shapes:
                name, version, columns, indices, nulls, missing, expired, present, stale = shape
                as_of, values, is_stale = view_records[row]
                if values is None:
                    features.update(nulls)
                    status.update(missing if as_of is None else expired)
                else:
                    features.update(zip(columns, [values[i] for i in indices]))  # noqa: B905
                    status.update(stale if is_stale else present)
                found[name] = {
                    "version": version,
                    "entity": ids[row],
                    "found": as_of is not None,
                    "as_of": as_of,
                    "age_ms": None if as_of is None else now - as_of,
                }
            if derive is not None:
                derived = derive({**features, **given})
                for name, value, reads in zip(
                    self._derived_names, derived, self._derived_reads, strict=True
                ):
                    features[name] = value
                    status[name] = next(
                        (status[c] for c in reads if status[c] != "present"), "present"
                    )
            results.append({"features": features, "status": status, "views": found})
        return {"service": self.plan.name, "results": results}

    def counts(
        self, records: Sequence[list[Record]], now: int
    ) -> list[tuple[int, int, int, int, list[float]]]:
        """Per view: hits, misses, expired, stale and the found ones' ages in seconds
        (metrics)."""
        out = []
        for view_records in records:
            hits = misses = expired = stale = 0
            ages = []
            for as_of, values, is_stale in view_records:
                if as_of is None:
                    misses += 1
                elif values is None:
                    expired += 1
                else:
                    if is_stale:
                        stale += 1
                    else:
                        hits += 1
                    ages.append((now - as_of) / 1000)
            out.append((hits, misses, expired, stale, ages))
        return out
