"""The lookup endpoint: a plain ASGI app serving feature values from Redis.

Paths (DESIGN.md, "Interfaces")::

    GET  /v1/features/{view}/{entity}[?features=a,b]   one entity -> Lookup
    POST /v1/features/{view}   {"entities": [...], "features": [...]?}
                               -> {"view": ..., "results": [Lookup, ...]} in request order
    GET  /v1/views   GET /healthz   GET /readyz   GET /metrics   GET /openapi.json

A Lookup is ``{"view", "entity", "found", "as_of", "age_ms", "features": {name: value},
"status": {name: "present" | "not_found" | "expired"}}``. Batches hold at most
``MAX_BATCH`` (1,000) entities (413 beyond, and for bodies over 1 MiB). Each request makes one
Redis round trip (one ``MGET``).

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

from freshet.dsl.registry import all_views, views_json
from freshet.serving.auth import ApiKeys, AuthError, presented_key
from freshet.serving.errors import HttpError
from freshet.serving.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from freshet.serving.metrics import ServingMetrics
from freshet.serving.openapi import build_openapi
from freshet.serving.redis_link import RedisLink
from freshet.sinks.layout import ENTITY_FORBIDDEN_CHARS, MAX_ENTITY_LENGTH, ViewLayout
from freshet.sinks.redis_store import (
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
_forbidden_char = ENTITY_FORBIDDEN_CHARS.search
RETRY_AFTER_S = 1

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Headers = tuple[tuple[bytes, bytes], ...]

_JSON = b"application/json"
_ROUTE_ONE = "/v1/features/{view}/{entity}"
_ROUTE_BATCH = "/v1/features/{view}"
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
    ) -> None:
        self._layouts = dict(layouts)
        self._redis = redis_client
        self._reader = AsyncRedisFeatureReader(redis_client, layouts)
        self._keys = api_keys
        self._max_batch = max_batch
        self.metrics = ServingMetrics(layouts, multiprocess_dir=multiprocess_dir)
        self._views_body = orjson.dumps(views_doc)
        self._openapi_body = orjson.dumps(
            build_openapi(layouts, max_batch=max_batch, auth=api_keys.enabled, version=_version())
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
        self, route: str, view: str | None, entity: str | None, scope: Scope, receive: Receive
    ) -> tuple[int, bytes, bytes, Headers]:
        method: str = scope["method"]
        if route == _ROUTE_ONE and view is not None and entity is not None:
            _allow(method, "GET")
            self._authorize(scope, view)
            features = _query_features(scope.get("query_string", b""))
            lookups = await self._lookup(view, [entity], features)
            return 200, _dumps(lookups[0]), _JSON, ()
        if route == _ROUTE_BATCH and view is not None:
            _allow(method, "POST")
            self._authorize(scope, view)
            entities, features = self._batch_request(await _read_body(scope, receive))
            lookups = await self._lookup(view, entities, features)
            return 200, _dumps({"view": view, "results": lookups}), _JSON, ()
        if route == "/v1/views":
            _allow(method, "GET")
            self._keys.check(presented_key(scope["headers"]), None)
            return 200, self._views_body, _JSON, ()
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
        raise HttpError(404, "not_found", f"no such path {path!r}; see /openapi.json")

    def _authorize(self, scope: Scope, view: str) -> None:
        """401 for a missing/invalid key, then 404 for an unknown view, then 403 for scope."""
        if not self._keys.enabled:
            if view not in self._layouts:
                raise _unknown_view(view, self._layouts)
            return
        presented = presented_key(scope["headers"])
        self._keys.check(presented, None)
        if view not in self._layouts:
            raise _unknown_view(view, self._layouts)
        self._keys.check(presented, view)

    def _batch_request(self, body: bytes) -> tuple[list[str], list[str] | None]:
        try:
            request = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise HttpError(400, "bad_request", f"request body is not valid JSON: {exc}") from None
        if not isinstance(request, dict):
            raise HttpError(422, "invalid_request", 'body must be {"entities": [...]}')
        unknown_fields = set(request) - {"entities", "features"}
        if unknown_fields:
            raise HttpError(
                422,
                "invalid_request",
                f"unknown field(s) {', '.join(sorted(map(repr, unknown_fields)))}; "
                "allowed: entities, features",
            )
        entities = request.get("entities")
        if not isinstance(entities, list):
            raise HttpError(422, "invalid_request", '"entities" must be a list of strings')
        if len(entities) > self._max_batch:
            raise HttpError(
                413,
                "too_large",
                f"{len(entities)} entities in one request; the maximum is {self._max_batch}",
            )
        for index, entity in enumerate(entities):
            if not isinstance(entity, str):
                raise HttpError(
                    422,
                    "invalid_request",
                    f"entities[{index}] is {entity!r}; entities are strings",
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
        return entities, features

    async def _lookup(
        self, view: str, entities: Sequence[str], features: Sequence[str] | None
    ) -> list[Lookup]:
        for entity in entities:
            problem = entity_problem(entity)
            if problem is not None:
                raise HttpError(422, "invalid_request", problem)
        try:
            lookups = await self._reader.get_many(view, entities, features)
        except UnknownFeatureError as exc:
            raise HttpError(422, "unknown_features", str(exc)) from None
        except InvalidEntityError as exc:
            raise HttpError(422, "invalid_request", str(exc)) from None
        hits = misses = expired = 0
        ages: list[float] = []
        names = list(lookups[0]["features"]) if lookups else []
        for lookup in lookups:
            if not lookup["found"]:
                misses += 1
            elif lookup["features"] and lookup["status"][names[0]] == "expired":
                expired += 1
            else:
                hits += 1
                ages.append((lookup["age_ms"] or 0) / 1000)
        self.metrics.lookups_done(view, hits, misses, expired, ages)
        return lookups


def entity_problem(entity: str) -> str | None:
    """Why ``entity`` is not an id freshet can store or serve, or None if it is one.

    The lookup endpoint answers such ids with a 422 carrying this message, and ``freshet get``
    refuses them with it: one rule, in one place (``freshet.sinks.layout`` holds its limits).
    """
    if not entity:
        return "entity ids are non-empty strings"
    if len(entity) > MAX_ENTITY_LENGTH:
        return f"entity of {len(entity)} characters; the maximum is {MAX_ENTITY_LENGTH}"
    if _forbidden_char(entity):
        # Control characters and bytes that are not UTF-8 (lone surrogates here) can never be
        # stored: the decoders dead-letter such ids.
        return (
            "entity ids are UTF-8 text without control characters; "
            f"got {entity.encode('utf-8', 'surrogateescape')!r}"[:200]
        )
    return None


_FIXED_ROUTES = frozenset({"/v1/views", "/healthz", "/readyz", "/metrics", "/openapi.json"})


def _match(raw_path: bytes) -> tuple[str, str | None, str | None]:
    """``(route, view, entity)`` of a raw (still percent-encoded) path; route ``-`` if none.

    Splitting the raw path keeps an entity's ``%2F`` inside the entity; the entity's bytes
    are decoded with ``surrogateescape``, so any byte sequence reaches Redis unchanged.
    """
    parts = raw_path.split(b"/")
    if len(parts) in (4, 5) and parts[0] == b"" and parts[1] == b"v1" and parts[2] == b"features":
        view = unquote(parts[3].decode("latin-1"))
        if len(parts) == 4:
            return _ROUTE_BATCH, view, None
        return _ROUTE_ONE, view, unquote_to_bytes(parts[4]).decode("utf-8", "surrogateescape")
    path = raw_path.decode("latin-1")
    return (path if path in _FIXED_ROUTES else "-"), None, None


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


def _unknown_view(view: str, layouts: Mapping[str, ViewLayout]) -> HttpError:
    return HttpError(
        404, "unknown_view", f"unknown view {view!r}; known: {', '.join(sorted(layouts))}"
    )


def _query_features(query_string: bytes) -> list[str] | None:
    if not query_string:
        return None
    values = parse_qs(query_string.decode("latin-1"), keep_blank_values=True).get("features")
    if values is None:
        return None
    names = [name for value in values for name in value.split(",") if name]
    if not names:
        raise HttpError(422, "invalid_request", "?features= must name at least one feature")
    return names


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
) -> FeatureApp:
    """The endpoint for the registered views, the Redis of ``settings`` and ``api_keys``
    (default: both read from the environment)."""
    settings = settings or Settings.from_env()
    layouts = {view.name: view.layout() for view in all_views()}
    return FeatureApp(
        layouts=layouts,
        views_doc=views_json(),
        redis_client=_redis_client(settings.redis_url),
        api_keys=api_keys if api_keys is not None else ApiKeys.from_env(),
        multiprocess_dir=multiprocess_dir,
    )


def _redis_client(url: str) -> Any:
    """The pipelined :class:`RedisLink` for one server; ``redis.asyncio.RedisCluster`` for
    ``?cluster=true`` (its ``mget_nonatomic`` sends one ``MGET`` per slot, pipelined per node:
    one round trip per node holding any of the keys)."""
    return connect_async(url) if is_cluster_url(url) else RedisLink(url)


def app_from_env() -> FeatureApp:
    """The app ``freshet serve`` runs (a uvicorn factory): settings from the environment."""
    return create_app(
        Settings.from_env(), multiprocess_dir=os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    )
