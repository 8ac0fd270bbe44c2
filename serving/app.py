"""The lookup endpoint: a plain ASGI app serving feature values from Redis.

Paths (DESIGN.md, "Interfaces")::

    GET  /v1/features/{view}/{entity}[?features=a,b]   one entity -> Lookup
    GET  /v1/features/{view}/{k1}/{k2}[/{k3}[/{k4}]]   a view keyed by several fields: one
                               segment per key field, in key order (404 naming them if not)
    POST /v1/features/{view}   {"entities": [...], "features": [...]?}
                               -> {"view": ..., "results": [Lookup, ...]} in request order
    POST /v1/ingest/{view}     {"events": [...], "wait_ms": N?} -> 200 served / 202 pending
                               (freshet.serving.ingest; needs a write-scoped key with auth)
    POST /v1/services/{name}   {"rows": [{key fields, request fields}, ...]} -> a feature
                               service's features per row (freshet.serving.services)
    GET  /v1/views   GET /v1/services   GET /healthz   GET /readyz   GET /metrics
    GET  /openapi.json

``{view}`` may be ``VIEW@N`` (``%40`` for ``@``): that registered version, served beside the
newest one (each version has its own Redis key space), so a new version can be checked over
the endpoint while the old one serves.

A Lookup is ``{"view", "entity", "found", "as_of", "age_ms", "features": {name: value},
"status": {name: "present" | "not_found" | "expired"}}``; a composite view's Lookup also has
``"key": {field: value}`` (``entity`` is then the encoded id, ``c1|m2``), and its batch
entities are objects of key fields (or encoded ids): :mod:`freshet.serving.keys`. Batches
hold at most ``MAX_BATCH`` (1,000) entities (413 beyond, and for bodies over 1 MiB). Each
request makes one Redis round trip (one ``MGET``).

Why a plain ASGI callable and not Starlette: the same handler answers more requests per second
bare than through Starlette's routing, request and response objects, and the app needs six
fixed routes, so the router is a path split. ``freshet serve`` runs it on uvicorn (least CPU
per lookup) or, with ``--server granian``, on granian (more lookups/s at high concurrency when
a core is spare). Figures and how to reproduce them: ``tests/bench/README.md``.

Errors are :class:`freshet.serving.errors.HttpError` (and ``freshet.serving.auth.AuthError``) turned
into JSON; anything else is logged with its traceback and answered 500 "internal error", never
with the traceback.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any
from urllib.parse import parse_qs, unquote, unquote_to_bytes

import orjson
import redis.exceptions

from freshet.dsl.registry import (
    Registry,
    RegistryError,
    all_services,
    all_views,
    parse_view_ref,
    views_json,
)
from freshet.dsl.services import ServicePlan
from freshet.serving.auth import ApiKeys, AuthError, presented_key
from freshet.serving.cache import CachedRedis, CacheSettings
from freshet.serving.console import Console, console_for, ui_enabled
from freshet.serving.errors import HttpError, json_object, max_staleness
from freshet.serving.ingest import Ingestor
from freshet.serving.keys import EntityKeyError, KeyValue, composite_key, entity_problem, key_shape
from freshet.serving.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from freshet.serving.metrics import ServingMetrics
from freshet.serving.openapi import build_openapi
from freshet.serving.redis_link import RedisLink
from freshet.serving.services import ServiceRows
from freshet.sinks.layout import MAX_KEY_FIELDS, ViewLayout
from freshet.sinks.redis_store import (
    DEFAULT_STALE_GRACE_MS,
    AsyncRedisFeatureReader,
    InvalidEntityError,
    Lookup,
    UnknownFeatureError,
    connect_async,
    is_cluster_url,
)
from freshet.sinks.settings import Settings

__all__ = [
    "MAX_BATCH",
    "MAX_BODY_BYTES",
    "FeatureApp",
    "app_from_env",
    "create_app",
    "entity_problem",
]

log = logging.getLogger(__name__)

MAX_BATCH = 1_000
MAX_BODY_BYTES = 1 << 20
RETRY_AFTER_S = 1

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Headers = tuple[tuple[bytes, bytes], ...]

_JSON = b"application/json"
_ROUTE_ONE = "/v1/features/{view}/{entity}"
_ROUTE_BATCH = "/v1/features/{view}"
_ROUTE_INGEST = "/v1/ingest/{view}"
_ROUTE_SERVICE = "/v1/services/{name}"
_UNAVAILABLE_HEADERS: Headers = ((b"retry-after", str(RETRY_AFTER_S).encode()),)
# Redis unreachable: a cluster client raises RedisClusterException (not a RedisError) when no
# node answers its slot-map request.
_STORE_ERRORS = (redis.exceptions.RedisError, redis.exceptions.RedisClusterException)


class FeatureApp:
    """The ASGI application. Build it with :func:`create_app` (or directly, in tests)."""

    def __init__(
        self,
        *,
        layouts: Mapping[str, ViewLayout],
        views_doc: list[dict[str, Any]],
        redis_client: Any,
        api_keys: ApiKeys,
        max_batch: int = MAX_BATCH,
        multiprocess_dir: str | None = None,
        ingest: Ingestor | None = None,
        services: Sequence[ServicePlan] = (),
        services_doc: list[dict[str, Any]] | None = None,
        console: Console | None = None,
        stale_grace_ms: int = DEFAULT_STALE_GRACE_MS,
    ) -> None:
        # Each view also by NAME@VERSION (``layouts`` may hold older versions that way), and
        # the view versions the services read.
        self._views = sorted(name for name in layouts if "@" not in name)
        all_layouts = dict(layouts)
        for layout in layouts.values():
            all_layouts.setdefault(f"{layout.name}@{layout.version}", layout)
        for plan in services:
            for view in plan.views:
                all_layouts.setdefault(view.ref, view.layout)
        self._layouts = all_layouts
        self._services = {plan.name: ServiceRows(plan, max_batch=max_batch) for plan in services}
        self._ingest = ingest  # POST /v1/ingest/{view}; None: the route answers 404
        # Views keyed by several fields: only their lookups take the composite-key path.
        self._composite = frozenset(name for name, lay in all_layouts.items() if lay.is_composite)
        self._redis = redis_client
        self._reader = AsyncRedisFeatureReader(
            redis_client, all_layouts, stale_grace_ms=stale_grace_ms
        )
        self._keys = api_keys
        self._max_batch = max_batch
        self.metrics = ServingMetrics(all_layouts, multiprocess_dir=multiprocess_dir)
        bind_metrics = getattr(redis_client, "bind_metrics", None)  # the cache's metrics
        if bind_metrics is not None:
            bind_metrics(self.metrics)
        self._console = console  # /ui (freshet.serving.console); None: off
        if console is not None:
            console.bind_metrics(self.metrics)
        self._views_body = orjson.dumps(views_doc)
        self._services_body = orjson.dumps(
            services_doc if services_doc is not None else [p.to_json() for p in services]
        )
        self._openapi_body = orjson.dumps(
            build_openapi(
                {name: layouts[name] for name in self._views},
                max_batch=max_batch,
                auth=api_keys.enabled,
                version=_version(),
                ingest=ingest is not None,
                services=services,
            )
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        flusher: asyncio.Task[None] | None = None
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                # Counts kept between flushes reach Prometheus even while a worker is idle.
                flusher = asyncio.create_task(self._flush_metrics_forever())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if flusher is not None:
                    flusher.cancel()
                self.metrics.flush()
                # redis.asyncio clients close with aclose() (close() is deprecated there).
                close = getattr(self._redis, "aclose", None) or getattr(self._redis, "close", None)
                if close is not None:
                    await close()
                if self._ingest is not None:
                    await asyncio.to_thread(self._ingest.close)  # flushes the producer
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _flush_metrics_forever(self, interval_s: float = 1.0) -> None:
        while True:
            await asyncio.sleep(interval_s)
            self.metrics.flush()

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        route, view, entity = _match(raw_path)
        try:
            status, body, content_type, headers = await self._handle(
                route, view, entity, scope, receive
            )
        except HttpError as exc:
            status, content_type, headers = exc.status, _JSON, exc.headers
            body = _error_body(exc.code, exc.message)
        except AuthError as exc:
            status, content_type = exc.status, _JSON
            headers = ((b"www-authenticate", b"Bearer"),) if exc.status == 401 else ()
            body = _error_body("unauthorized" if exc.status == 401 else "forbidden", str(exc))
        except _STORE_ERRORS as exc:
            log.warning("Redis unavailable for %s: %s", route, exc)
            status, content_type, headers = 503, _JSON, _UNAVAILABLE_HEADERS
            body = _error_body("unavailable", "the online store (Redis) is unavailable; retry")
        except Exception:
            log.exception("internal error answering %s %s", scope.get("method"), route)
            status, content_type, headers = 500, _JSON, ()
            body = _error_body("internal", "internal error; see the server log")
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", content_type),
                    (b"content-length", str(len(body)).encode()),
                    *headers,
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
        self.metrics.request(
            route, self.metrics.view_label(view), status, time.perf_counter() - started
        )

    async def _handle(
        self,
        route: str,
        view: str | None,
        entity: str | tuple[str, ...] | None,
        scope: Scope,
        receive: Receive,
    ) -> tuple[int, bytes, bytes, Headers]:
        method: str = scope["method"]
        if view is not None and view not in self._layouts and route != _ROUTE_SERVICE:
            view = self._canonical(view)
        if route == _ROUTE_ONE and view is not None and entity is not None:
            _allow(method, "GET")
            self._authorize(scope, view)
            features, limit = _query_params(scope.get("query_string", b""))
            if type(entity) is str and view not in self._composite:
                lookups = await self._lookup(view, [entity], features, None, limit)
            else:
                one, key = self._path_key(view, entity)
                lookups = await self._lookup(view, [one], features, [key], limit)
            return 200, _dumps(lookups[0]), _JSON, ()
        if route == _ROUTE_BATCH and view is not None:
            _allow(method, "POST")
            self._authorize(scope, view)
            raw, features, limit = self._batch_request(await _read_body(scope, receive))
            entities, keys = self._batch_entities(view, raw)
            lookups = await self._lookup(view, entities, features, keys, limit)
            return 200, _dumps({"view": view, "results": lookups}), _JSON, ()
        if route == _ROUTE_INGEST and view is not None:
            _allow(method, "POST")
            return await self._ingest_events(view, scope, receive)
        if route == _ROUTE_SERVICE and view is not None:
            _allow(method, "POST")
            return await self._service(view, scope, receive)
        if route == "/v1/views":
            _allow(method, "GET")
            self._keys.check(presented_key(scope["headers"]), None)
            return 200, self._views_body, _JSON, ()
        if route == "/v1/services":
            _allow(method, "GET")
            self._keys.check(presented_key(scope["headers"]), None)
            return 200, self._services_body, _JSON, ()
        if route == "/healthz":
            _allow(method, "GET")
            return 200, b'{"status":"ok"}', _JSON, ()
        if route == "/readyz":
            _allow(method, "GET")
            try:
                async with asyncio.timeout(1.0):
                    await self._redis.ping()
            except (*_STORE_ERRORS, TimeoutError) as exc:
                raise HttpError(
                    503, "unavailable", f"Redis does not answer: {exc}", _UNAVAILABLE_HEADERS
                ) from exc
            return 200, b'{"status":"ready"}', _JSON, ()
        if route == "/metrics":
            _allow(method, "GET")
            return 200, self.metrics.exposition(), METRICS_CONTENT_TYPE.encode(), ()
        if route == "/openapi.json":
            _allow(method, "GET")
            return 200, self._openapi_body, _JSON, ()
        path = _path_text(scope)
        if self._console is not None and (path == "/ui" or path.startswith("/ui/")):
            return await self._console.handle(path, scope)
        raise HttpError(404, "not_found", f"no such path {path!r}; see /openapi.json")

    def _canonical(self, view: str) -> str:
        """``card_txn@v1`` (or ``card_txn@01``) as the endpoint knows it: ``card_txn@1``."""
        if "@" not in view:
            return view
        try:
            name, version = parse_view_ref(view)
        except RegistryError:
            return view
        return view if version is None else f"{name}@{version}"

    async def _service(
        self, name: str, scope: Scope, receive: Receive
    ) -> tuple[int, bytes, bytes, Headers]:
        """401, then 404 for an unknown service, then 403 unless the key reads every view."""
        presented = presented_key(scope["headers"]) if self._keys.enabled else None
        self._keys.check(presented, None)
        rows = self._services.get(name)
        if rows is None:
            raise HttpError(
                404,
                "unknown_service",
                f"unknown service {name!r}; known: {', '.join(self._services) or '(none)'}",
            )
        for view in rows.plan.views:
            self._keys.check(presented, view.name)
        entities, request_values, limit = rows.parse(await _read_body(scope, receive))
        if not request_values:
            return 200, _dumps(rows.answer([], entities, [[] for _ in entities], 0)), _JSON, ()
        raws = await self._reader.mget(rows.keys(self._reader, entities))  # one round trip
        now = self._reader.now_ms()
        records = rows.records(self._reader, raws, now, limit)
        for view, (hits, misses, expired, stale, ages) in zip(
            rows.plan.views, rows.counts(records, now), strict=True
        ):
            self.metrics.lookups_done(view.name, hits, misses, expired, ages, stale)
        return 200, _dumps(rows.answer(request_values, entities, records, now)), _JSON, ()

    async def _ingest_events(
        self, view: str, scope: Scope, receive: Receive
    ) -> tuple[int, bytes, bytes, Headers]:
        """401, then 404 for a view the endpoint cannot ingest, then 403 without write scope."""
        started = time.perf_counter()
        presented = presented_key(scope["headers"])
        self._keys.check(presented, None)
        if self._ingest is None or not self._ingest.knows(view):
            known = "none: ingest is not configured" if self._ingest is None else None
            raise HttpError(
                404,
                "unknown_view",
                f"unknown view {view!r} for ingest; known: "
                f"{known or ', '.join(sorted(self._layouts))}",
            )
        self._keys.check(presented, view, write=True)
        body = await _read_body(scope, receive)
        status, answer = await self._ingest.ingest(view, body, self._reader, started=started)
        return status, orjson.dumps(answer), _JSON, ()

    def _authorize(self, scope: Scope, view: str) -> None:
        """401 for a missing/invalid key, then 404 for an unknown view, then 403 for scope."""
        if not self._keys.enabled:
            if view not in self._layouts:
                raise _unknown_view(view, self._views)
            return
        presented = presented_key(scope["headers"])
        self._keys.check(presented, None)
        if view not in self._layouts:
            raise _unknown_view(view, self._views)
        self._keys.check(presented, self._layouts[view].name)  # scopes name views, not versions

    def _path_key(
        self, view: str, segments: str | tuple[str, ...]
    ) -> tuple[str, dict[str, KeyValue]]:
        """The entity and key of a composite view's path; 404 when the number of segments is
        not the number of key fields (also for a one-field view given several)."""
        layout = self._layouts[view]
        if isinstance(segments, str):
            segments = (segments,)
        if len(segments) != len(layout.keys):
            template = "/".join("{" + k + "}" for k in layout.keys)
            raise HttpError(
                404,
                "not_found",
                f"{len(segments)} key segment(s) in the path; {key_shape(layout)}: "
                f"GET /v1/features/{view}/{template}",
            )
        try:
            return composite_key(layout, segments)
        except EntityKeyError as exc:
            raise HttpError(422, "invalid_request", str(exc)) from None

    def _batch_entities(
        self, view: str, entities: list[Any]
    ) -> tuple[list[str], list[dict[str, KeyValue]] | None]:
        """A batch's entity ids, and for a composite view each one's key object (422 naming
        the entity and the field for a bad one). A one-field view takes strings, as always,
        and objects of its one key field."""
        composite = view in self._composite
        if not composite and all(type(e) is str for e in entities):
            return entities, None
        layout = self._layouts[view]
        ids: list[str] = []
        keys: list[dict[str, KeyValue]] = []
        for index, entity in enumerate(entities):
            if not composite and type(entity) is str:
                ids.append(entity)
                continue
            if not isinstance(entity, dict) and not (composite and isinstance(entity, str)):
                shape = "objects of key fields" if composite else "strings"
                raise HttpError(
                    422,
                    "invalid_request",
                    f"entities[{index}] is {entity!r}; entities are {shape} ({key_shape(layout)})",
                )
            try:
                one, key = composite_key(layout, entity)
            except EntityKeyError as exc:
                raise HttpError(422, "invalid_request", f"entities[{index}]: {exc}") from None
            ids.append(one)
            keys.append(key)
        return ids, keys if composite else None

    def _batch_request(self, body: bytes) -> tuple[list[Any], list[str] | None, int | None]:
        request = json_object(body, ("entities", "features", "max_staleness_ms"))
        entities = request.get("entities")
        if not isinstance(entities, list):
            raise HttpError(
                422,
                "invalid_request",
                '"entities" must be a list of strings (or of objects of key fields)',
            )
        if len(entities) > self._max_batch:
            raise HttpError(
                413,
                "too_large",
                f"{len(entities)} entities in one request; the maximum is {self._max_batch}",
            )
        features = request.get("features")
        if features is not None and (
            not isinstance(features, list)
            or not features
            or not all(isinstance(f, str) for f in features)
        ):
            raise HttpError(
                422, "invalid_request", '"features" must be a non-empty list of feature names'
            )
        limit = max_staleness(request.get("max_staleness_ms"), '"max_staleness_ms"')
        return entities, features, limit

    async def _lookup(
        self,
        view: str,
        entities: Sequence[str],
        features: Sequence[str] | None,
        keys: Sequence[dict[str, KeyValue]] | None = None,
        max_staleness_ms: int | None = None,
    ) -> list[Lookup]:
        """Look ``entities`` up; ``keys`` (a composite view's, whose values are checked
        already) are added to the lookups as ``key``; windowed values more than
        ``max_staleness_ms`` past their ``valid_until`` come back null and ``stale``."""
        if keys is None:
            for entity in entities:
                problem = entity_problem(entity)
                if problem is not None:
                    raise HttpError(422, "invalid_request", problem)
        try:
            lookups = await self._reader.get_many(
                view, entities, features, max_staleness_ms=max_staleness_ms
            )
        except UnknownFeatureError as exc:
            raise HttpError(422, "unknown_features", str(exc)) from None
        except InvalidEntityError as exc:
            raise HttpError(422, "invalid_request", str(exc)) from None
        self._count(view, lookups)
        if keys is not None:
            for lookup, key in zip(lookups, keys, strict=True):
                lookup["key"] = key
        return lookups

    def _count(self, view: str, lookups: Sequence[Lookup]) -> None:
        hits = misses = expired = stale = 0
        ages: list[float] = []
        names = list(lookups[0]["features"]) if lookups else []
        for lookup in lookups:
            if not lookup["found"]:
                misses += 1
            elif lookup["features"] and lookup["status"][names[0]] == "expired":
                expired += 1
            else:
                if "stale" in lookup["status"].values():
                    stale += 1
                else:
                    hits += 1
                ages.append((lookup["age_ms"] or 0) / 1000)
        self.metrics.lookups_done(view, hits, misses, expired, ages, stale)


_FIXED_ROUTES = frozenset(
    {"/v1/views", "/v1/services", "/healthz", "/readyz", "/metrics", "/openapi.json"}
)


def _match(raw_path: bytes) -> tuple[str, str | None, str | tuple[str, ...] | None]:
    """``(route, view, entity)`` of a raw (still percent-encoded) path; route ``-`` if none.
    ``entity`` is a tuple of the key segments when the path has several (a composite key).

    Splitting the raw path keeps an entity's ``%2F`` inside the entity; the entity's bytes
    are decoded with ``surrogateescape``, so any byte sequence reaches Redis unchanged.
    """
    parts = raw_path.split(b"/")
    if (
        4 <= len(parts) <= _MAX_PARTS
        and parts[0] == b""
        and parts[1] == b"v1"
        and parts[2] == b"features"
    ):
        view = unquote(parts[3].decode("latin-1"))
        if len(parts) == 4:
            return _ROUTE_BATCH, view, None
        if len(parts) == 5:
            return _ROUTE_ONE, view, unquote_to_bytes(parts[4]).decode("utf-8", "surrogateescape")
        return _ROUTE_ONE, view, tuple(_segment(p) for p in parts[4:])
    if len(parts) == 4 and parts[0] == b"" and parts[1] == b"v1" and parts[2] == b"ingest":
        return _ROUTE_INGEST, unquote(parts[3].decode("latin-1")), None
    if len(parts) == 4 and parts[0] == b"" and parts[1] == b"v1" and parts[2] == b"services":
        return _ROUTE_SERVICE, unquote(parts[3].decode("latin-1")), None
    path = raw_path.decode("latin-1")
    return (path if path in _FIXED_ROUTES else "-"), None, None


_MAX_PARTS = 4 + MAX_KEY_FIELDS  # "", "v1", "features", view, key segments


def _segment(raw: bytes) -> str:
    return unquote_to_bytes(raw).decode("utf-8", "surrogateescape")


def _path_text(scope: Scope) -> str:
    return str(scope.get("path", ""))


def _allow(method: str, allowed: str) -> None:
    if method != allowed:
        raise HttpError(
            405,
            "method_not_allowed",
            f"{method} is not allowed here; use {allowed}",
            ((b"allow", allowed.encode()),),
        )


def _unknown_view(view: str, names: Sequence[str]) -> HttpError:
    return HttpError(
        404,
        "unknown_view",
        f"unknown view {view!r}; known: {', '.join(names)}",
    )


def _query_params(query_string: bytes) -> tuple[list[str] | None, int | None]:
    """``?features=a,b`` and ``?max_staleness_ms=N`` of a single lookup."""
    if not query_string:
        return None, None
    query = parse_qs(query_string.decode("latin-1"), keep_blank_values=True)
    limits = query.get("max_staleness_ms")
    if limits is not None and len(limits) != 1:
        raise HttpError(422, "invalid_request", "?max_staleness_ms= given more than once")
    limit = max_staleness(limits[0], "?max_staleness_ms=") if limits else None
    values = query.get("features")
    if values is None:
        return None, limit
    names = [name for value in values for name in value.split(",") if name]
    if not names:
        raise HttpError(422, "invalid_request", "?features= must name at least one feature")
    return names, limit


async def _read_body(scope: Scope, receive: Receive) -> bytes:
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > MAX_BODY_BYTES:
            raise HttpError(413, "too_large", f"request body over {MAX_BODY_BYTES} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise HttpError(400, "bad_request", "client disconnected before sending the body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise HttpError(413, "too_large", f"request body over {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _dumps(payload: Any) -> bytes:
    try:
        return orjson.dumps(payload)
    except orjson.JSONEncodeError:
        # An entity sent as non-UTF-8 bytes (%FF in a path) cannot be echoed as JSON text:
        # echo it with U+FFFD for the bad bytes; the lookup itself used the exact bytes.
        return orjson.dumps(_printable(payload))


def _printable(payload: Any) -> Any:
    if isinstance(payload, dict):
        shown = {k: _printable(v) for k, v in payload.items()}
        entity = shown.get("entity")
        if isinstance(entity, str) and "features" in shown:
            shown["entity"] = entity.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        return shown
    if isinstance(payload, list):
        return [_printable(v) for v in payload]
    return payload


def _error_body(code: str, message: str) -> bytes:
    return orjson.dumps({"error": code, "message": message})


def _version() -> str:
    try:
        return version("freshet")
    except PackageNotFoundError:
        return "0"


def create_app(
    settings: Settings | None = None,
    *,
    api_keys: ApiKeys | None = None,
    multiprocess_dir: str | None = None,
    cache: CacheSettings | None = None,
    registry: Registry | None = None,
    ui: bool | None = None,
) -> FeatureApp:
    """The endpoint for the registered views and services (of ``registry``; default: the
    process's, from ``FRESHET_VIEWS``), the Redis and Kafka of ``settings``, ``api_keys``
    and the hot-entity ``cache`` (default: all read from the environment; the cache is off
    unless ``FRESHET_CACHE=on``) and the console at ``/ui`` (``ui``; default: on unless
    ``FRESHET_UI=off``)."""
    settings = settings or Settings.from_env()
    cache = cache if cache is not None else CacheSettings.from_env()
    versions = all_views() if registry is None else registry.all()
    views = {view.name: view for view in versions}
    layouts = {name: view.layout() for name, view in views.items()}
    # Every version also by NAME@VERSION: GET /v1/features/card_txn@1/... while v2 serves.
    layouts.update({f"{v.name}@{v.version}": v.layout() for v in versions})
    views_doc = views_json() if registry is None else [v.to_json() for v in versions]
    services = all_services() if registry is None else registry.services()
    api_keys = api_keys if api_keys is not None else ApiKeys.from_env()
    return FeatureApp(
        layouts=layouts,
        views_doc=views_doc,
        services=services,
        redis_client=_redis_client(settings.redis_url, cache),
        api_keys=api_keys,
        multiprocess_dir=multiprocess_dir,
        ingest=_ingestor(settings, views),
        console=console_for(settings.offline_dir, layouts, views_doc, services, api_keys)
        if (ui_enabled() if ui is None else ui)
        else None,
        stale_grace_ms=settings.stale_grace_ms,
    )


def _ingestor(settings: Settings, views: Mapping[str, Any]) -> Ingestor:
    """Ingest for the views, producing with the flow's Kafka client factory."""
    from freshet.stream import kafka_clients

    config = {
        **settings.kafka_client_config(),
        "enable.idempotence": True,
        "linger.ms": 2,
        "message.timeout.ms": int(settings.kafka_timeout_s * 1000),
    }
    return Ingestor(
        views,
        make_producer=lambda: kafka_clients.producer(config),
        timeout_s=settings.kafka_timeout_s,
    )


def _redis_client(url: str, cache: CacheSettings | None = None) -> Any:
    """The pipelined :class:`RedisLink` for one server (behind :class:`CachedRedis` when the
    cache is on); ``redis.asyncio.RedisCluster`` for ``?cluster=true`` (its ``mget_nonatomic``
    sends one ``MGET`` per slot, pipelined per node: one round trip per node holding any of
    the keys)."""
    if is_cluster_url(url):
        if cache is not None and cache.enabled:
            raise ValueError(
                "FRESHET_CACHE=on needs a single Redis server; it does not track Redis Cluster "
                "(drop ?cluster=true or set FRESHET_CACHE=off)"
            )
        return connect_async(url)
    if cache is not None and cache.enabled:
        return CachedRedis(url, settings=cache)
    return RedisLink(url)


def app_from_env() -> FeatureApp:
    """The app ``freshet serve`` runs (a uvicorn factory): settings from the environment."""
    return create_app(
        Settings.from_env(), multiprocess_dir=os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    )
