"""A small Python client of the lookup endpoint::

    from freshet.serving import Client

    with Client("http://127.0.0.1:8000") as client:
        client.get("card_txn", "card_42")["features"]["txn_count_5m"]
        client.get_many("card_txn", ["card_1", "card_2"], features=["amount_sum_1h"])
        client.ingest("card_txn", [{"card_id": "card_42", "amount": 9.5, "merchant": "m_1",
                                    "ts": 1714564800000}], wait_ms=2000)["served"]
        # a view keyed by several fields: an object of key fields, or the values in key order
        client.get("card_merchant", {"card_id": "card_42", "merchant": "m_7"})
        client.get("card_merchant", ("card_42", "m_7"))
        client.get_many("card_merchant", [{"card_id": "card_42", "merchant": "m_7"}])
        # a feature service: one feature vector per row (key fields and request fields)
        client.get_service("fraud_v1", [{"card_id": "card_42", "merchant": "m_7", "amount": 9.5}])
        # version 1 of a view while a newer one is registered
        client.get("card_txn@1", "card_42")

Results are the endpoint's JSON (DESIGN.md "Interfaces"): dicts with ``view``, ``entity``,
``found``, ``as_of``, ``age_ms``, ``features`` and ``status`` (and ``key``, the key fields and
values, for a view keyed by several fields; ``entity`` is then their encoding). Errors raise
:class:`ServingError` carrying the HTTP status, the error code and the server's message.
:func:`to_pandas` makes a DataFrame of results, one row per entity (``pip install
'freshet[pandas]'``)::

    to_pandas(client.get_many("card_txn", ["card_1", "card_2"]))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx
import orjson

__all__ = ["PANDAS_HINT", "Client", "Entity", "KeyValue", "ServingError", "to_pandas"]

KeyValue = str | int
# An entity as lookups name it: its id, or an object of key fields (composite keys).
Entity = str | Mapping[str, KeyValue]

# The endpoint's batch limit (freshet.serving.app.MAX_BATCH); larger get_many calls are split.
_MAX_BATCH = 1_000


PANDAS_HINT = "pip install 'freshet[pandas]'"


def to_pandas(results: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> Any:
    """A ``pandas.DataFrame`` of lookup results (one, or a list from :meth:`Client.get_many`):
    one row per result with ``entity``, a column per key field of a view keyed by several
    fields, ``found``, ``as_of``, ``age_ms`` and one column per feature. pandas is optional:
    without it this raises ``ImportError`` saying what to install.
    """
    try:
        import pandas  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError as exc:
        raise ImportError(
            f"to_pandas() needs pandas, which freshet does not install by default: {PANDAS_HINT}"
        ) from exc
    rows = [results] if isinstance(results, Mapping) else list(results)
    records = [
        {
            "entity": r.get("entity"),
            **(r.get("key") or {}),
            "found": r.get("found"),
            "as_of": r.get("as_of"),
            "age_ms": r.get("age_ms"),
            **(r.get("features") or {}),
        }
        for r in rows
    ]
    return pandas.DataFrame.from_records(records)


class ServingError(RuntimeError):
    """The endpoint answered with an error status (or could not be reached: status 0)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class Client:
    """Synchronous client; ``transport`` lets tests pass an ``httpx`` transport."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float = 5.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(
            base_url=url.rstrip("/"), headers=headers, timeout=timeout, transport=transport
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def get(
        self,
        view: str,
        entity: Entity | Sequence[KeyValue],
        features: Sequence[str] | None = None,
        *,
        max_staleness_ms: int | None = None,
    ) -> dict[str, Any]:
        """One entity's lookup (``found`` is false for an unknown entity).

        ``entity`` is an id, or for a view keyed by several fields an object of its key
        fields (``{"card_id": "c1", "merchant": "m2"}``) or its key values in key order
        (``("c1", "m2")``). With ``max_staleness_ms``, windowed values more than that past
        their ``valid_until`` come back None with status ``stale``."""
        if isinstance(entity, Mapping):
            # The client does not know the view's key order: the batch route takes names.
            return self.get_many(view, [entity], features, max_staleness_ms=max_staleness_ms)[0]
        params: dict[str, Any] = {}
        if features:
            params["features"] = ",".join(features)
        if max_staleness_ms is not None:
            params["max_staleness_ms"] = max_staleness_ms
        values = [entity] if isinstance(entity, str) else [str(v) for v in entity]
        path = f"/v1/features/{quote(view, safe='')}/" + "/".join(quote(v, safe="") for v in values)
        result: dict[str, Any] = self._request("GET", path, params=params or None)
        return result

    def get_many(
        self,
        view: str,
        entities: Sequence[Entity],
        features: Sequence[str] | None = None,
        *,
        max_staleness_ms: int | None = None,
    ) -> list[dict[str, Any]]:
        """Lookups of ``entities`` (ids, or objects of key fields) in order; one request per
        1,000 entities (``max_staleness_ms`` as for :meth:`get`)."""
        results: list[dict[str, Any]] = []
        path = f"/v1/features/{quote(view, safe='')}"
        for start in range(0, len(entities), _MAX_BATCH):
            chunk = entities[start : start + _MAX_BATCH]
            body: dict[str, Any] = {
                "entities": [e if isinstance(e, str) else dict(e) for e in chunk]
            }
            if features is not None:
                body["features"] = list(features)
            if max_staleness_ms is not None:
                body["max_staleness_ms"] = max_staleness_ms
            results.extend(self._request("POST", path, content=orjson.dumps(body))["results"])
        return results

    def ingest(
        self, view: str, events: Sequence[Mapping[str, Any]], *, wait_ms: int | None = None
    ) -> dict[str, Any]:
        """Produce ``events`` to ``view``'s topic through the endpoint (``POST /v1/ingest``).

        With ``wait_ms`` the answer comes once every event's entity is served as of that
        event (``served`` true), or when ``wait_ms`` ran out (``served`` false, ``pending``
        naming the entities not yet there). A batch with an invalid event raises
        :class:`ServingError` 422 naming it, and nothing of the batch is produced."""
        body: dict[str, Any] = {"events": list(events)}
        if wait_ms is not None:
            body["wait_ms"] = wait_ms
        timeout = self._http.timeout.read or 5.0
        result: dict[str, Any] = self._request(
            "POST",
            f"/v1/ingest/{quote(view, safe='')}",
            content=orjson.dumps(body),
            timeout=timeout + (wait_ms or 0) / 1000,
        )
        return result

    def get_service(
        self,
        name: str,
        rows: Sequence[Mapping[str, Any]],
        *,
        max_staleness_ms: int | None = None,
    ) -> list[dict[str, Any]]:
        """Feature service ``name``'s result for each row (an object of the key fields of its
        views and its request fields), in order: ``features`` (``<view>__<feature>`` and the
        derived features), ``status`` and ``views`` (per view: ``version``, ``entity``,
        ``found``, ``as_of``, ``age_ms``). One request per 1,000 rows (``max_staleness_ms``
        as for :meth:`get`)."""
        results: list[dict[str, Any]] = []
        path = f"/v1/services/{quote(name, safe='')}"
        for start in range(0, len(rows), _MAX_BATCH):
            body: dict[str, Any] = {"rows": [dict(row) for row in rows[start : start + _MAX_BATCH]]}
            if max_staleness_ms is not None:
                body["max_staleness_ms"] = max_staleness_ms
            results.extend(self._request("POST", path, content=orjson.dumps(body))["results"])
        return results

    def services(self) -> list[dict[str, Any]]:
        """The registered feature services (as ``freshet views --services --json``)."""
        result: list[dict[str, Any]] = self._request("GET", "/v1/services")
        return result

    def views(self) -> list[dict[str, Any]]:
        """The registered views (as ``freshet views --json``)."""
        result: list[dict[str, Any]] = self._request("GET", "/v1/views")
        return result

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        if "content" in kwargs:
            kwargs["headers"] = {"content-type": "application/json"}
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ServingError(0, "unreachable", f"{self._http.base_url}: {exc}") from exc
        if response.status_code not in (200, 202):  # 202: ingested, not yet served
            try:
                error = orjson.loads(response.content)
                code, message = str(error["error"]), str(error["message"])
            except (orjson.JSONDecodeError, KeyError, TypeError):
                code, message = "http_error", response.text[:200]
            raise ServingError(response.status_code, code, message)
        return orjson.loads(response.content)
