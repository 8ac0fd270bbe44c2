"""The web console at ``/ui``: catalog, entity explorer, statistics and drift, pipeline health.

Pages (plain HTML, one hand-written script and style sheet shipped in the package, charts drawn
as inline SVG; nothing is fetched from the internet)::

    GET /ui                          -> 302 /ui/catalog
    GET /ui/catalog                  views and services, with a search box
    GET /ui/explore                  an entity's values (GET /v1/features/...) and history
    GET /ui/stats                    statistics and drift of a view over time ranges
    GET /ui/health                   pipeline health per view
    GET /ui/static/{console.js,console.css}

Their data comes from JSON, read with the same API keys as the rest of the endpoint (the
pages themselves hold no data and need no key; the script asks for one on a 401 and sends it
as ``Authorization: Bearer``)::

    GET /ui/api/catalog                              any valid key (as GET /v1/views)
    GET /ui/api/history/{view}?entity=&from=&to=     read scope on the view
    GET /ui/api/stats/{view}?from=&to=[&compare_from=&compare_to=]   read scope on the view
    GET /ui/api/health                               any valid key

``entity`` is the encoded id (``c1|m2`` for a composite key), or one query parameter per key
field. Times are ISO-8601 with an offset, dates, epoch ms, ``now`` or ``now-1h``
(:func:`freshet.sinks.clock.parse_time`, as every command takes them).

History and statistics run DuckDB over the offline log (``FRESHET_OFFLINE_DIR``) on a worker
thread, one query at a time with one DuckDB thread, so a console user never takes more than
one core from the lookups. ``FRESHET_UI=off`` (or ``freshet serve --no-ui``) turns the console
off: ``/ui`` then answers 404 like any unknown path.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import orjson

from freshet.serving.auth import ApiKeys, presented_key
from freshet.serving.errors import HttpError
from freshet.serving.health import HealthSources, Sample, parse_exposition
from freshet.serving.keys import EntityKeyError, composite_key
from freshet.sinks.layout import ViewLayout
from freshet.sinks.parquet_log import log_dir
from freshet.sinks.redis_store import record_key

__all__ = ["Console", "ConsoleSettings", "console_for", "ui_enabled"]

Headers = tuple[tuple[bytes, bytes], ...]
Answer = tuple[int, bytes, bytes, Headers]

_JSON = b"application/json"
_HTML = b"text/html; charset=utf-8"
_PAGES = ("catalog", "explore", "stats", "health")
_STATIC = {
    "console.js": b"text/javascript; charset=utf-8",
    "console.css": b"text/css; charset=utf-8",
}
# The pages load only the package's own files: no CDN, no inline script.
_PAGE_HEADERS: Headers = (
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        b"connect-src 'self'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"cache-control", b"no-cache"),
)
_OFF = ("0", "off", "false", "no")


def ui_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """``FRESHET_UI``: on unless ``0``/``off``/``false``/``no``."""
    env = os.environ if environ is None else environ
    return env.get("FRESHET_UI", "on").strip().lower() not in _OFF


@dataclass(frozen=True, slots=True)
class ConsoleSettings:
    """Where the console reads from: the offline log and the health sources."""

    offline_dir: Path
    health: HealthSources

    @classmethod
    def from_env(
        cls, offline_dir: Path, environ: Mapping[str, str] | None = None
    ) -> ConsoleSettings:
        env = os.environ if environ is None else environ
        return cls(offline_dir=offline_dir, health=HealthSources.from_env(env))


def console_for(
    offline_dir: Path,
    layouts: Mapping[str, ViewLayout],
    views_doc: Sequence[dict[str, Any]],
    services: Sequence[Any],
    api_keys: ApiKeys,
    environ: Mapping[str, str] | None = None,
) -> Console:
    """The console of an endpoint serving ``layouts`` and ``services`` (``ServicePlan``s),
    its health sources read from ``environ`` (default: the process's)."""
    return Console(
        settings=ConsoleSettings.from_env(offline_dir, environ),
        layouts=layouts,
        views_doc=views_doc,
        services_doc=[plan.to_json() for plan in services],
        api_keys=api_keys,
    )


class Console:
    """Answers every path under ``/ui`` (see the module docstring)."""

    def __init__(
        self,
        *,
        settings: ConsoleSettings,
        layouts: Mapping[str, ViewLayout],
        views_doc: Sequence[dict[str, Any]],
        services_doc: Sequence[dict[str, Any]],
        api_keys: ApiKeys,
    ) -> None:
        self._settings = settings
        self._keys = api_keys
        # The newest version of each view by name, every version by NAME@N.
        self._layouts = dict(layouts)
        self._names = sorted(name for name in layouts if "@" not in name)
        self._topics: dict[str, str] = {}
        extended = []
        for doc in views_doc:
            layout = self._layouts.get(f"{doc['name']}@{doc['version']}") or self._layouts.get(
                doc["name"]
            )
            extra: dict[str, Any] = {}
            if layout is not None:
                extra = {
                    "redis_key": record_key(layout, "<entity>").decode("utf-8", "replace"),
                    "offline_log": str(
                        log_dir(settings.offline_dir, layout.name, layout.version)
                        / "date=YYYY-MM-DD"
                    ),
                }
            topic = (doc.get("source") or {}).get("topic")
            if topic:
                self._topics.setdefault(topic, doc["name"])
            extended.append({**doc, **extra})
        self._catalog = orjson.dumps({"views": extended, "services": list(services_doc)})
        self._endpoint_metrics: Any = None
        self._db_lock = asyncio.Lock()
        self._static = {
            name: files("freshet.serving").joinpath("console_static", name).read_bytes()
            for name in (*_STATIC, "page.html")
        }

    def bind_metrics(self, metrics: Any) -> None:
        """The endpoint's :class:`~freshet.serving.metrics.ServingMetrics` (stale serves)."""
        self._endpoint_metrics = metrics

    async def handle(self, path: str, scope: dict[str, Any]) -> Answer:
        """The answer to a GET of ``path`` (which starts with ``/ui``)."""
        method = scope["method"]
        if method not in ("GET", "HEAD"):
            raise HttpError(
                405, "method_not_allowed", f"{method} is not allowed here; use GET",
                ((b"allow", b"GET"),),
            )  # fmt: skip
        parts = [p for p in path.split("/") if p][1:]  # after "ui"
        if not parts:
            return 302, b"", b"text/plain", ((b"location", b"/ui/catalog"),)
        if len(parts) == 1 and parts[0] in _PAGES:
            return 200, self._page(parts[0]), _HTML, _PAGE_HEADERS
        if len(parts) == 2 and parts[0] == "static" and parts[1] in _STATIC:
            return 200, self._static[parts[1]], _STATIC[parts[1]], _PAGE_HEADERS
        if parts[0] == "api":
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            return await self._api(parts[1:], query, scope)
        raise HttpError(
            404, "not_found", f"no such page {path!r}; pages: {', '.join(_PAGES)} under /ui/"
        )

    def _page(self, page: str) -> bytes:
        return self._static["page.html"].replace(b"{{page}}", page.encode())

    async def _api(self, parts: list[str], query: dict[str, list[str]], scope: Any) -> Answer:
        presented = presented_key(scope["headers"]) if self._keys.enabled else None
        self._keys.check(presented, None)
        if parts == ["catalog"]:
            return 200, self._catalog, _JSON, ()
        if parts == ["health"]:
            return 200, orjson.dumps(await self._health()), _JSON, ()
        if len(parts) == 2 and parts[0] in ("history", "stats"):
            layout = self._layout(parts[1])
            self._keys.check(presented, layout.name)
            if parts[0] == "history":
                return 200, orjson.dumps(await self._history(layout, query)), _JSON, ()
            return 200, orjson.dumps(await self._stats(layout, query)), _JSON, ()
        raise HttpError(404, "not_found", f"no such console API /ui/api/{'/'.join(parts)}")

    def _layout(self, view: str) -> ViewLayout:
        layout = self._layouts.get(view)
        if layout is None:
            raise HttpError(
                404, "unknown_view", f"unknown view {view!r}; known: {', '.join(self._names)}"
            )
        return layout

    async def _health(self) -> dict[str, Any]:
        endpoint: Sample = {}
        if self._endpoint_metrics is not None:
            endpoint = parse_exposition(self._endpoint_metrics.exposition().decode())
        return await self._settings.health.read(self._names, self._topics, endpoint)

    async def _history(self, layout: ViewLayout, query: dict[str, list[str]]) -> dict[str, Any]:
        from freshet.offline.stats import StatsError, entity_history

        entity = _entity(layout, query)
        span = _range(query, "from", "to", default=("now-1d", "now"))
        features = _features(query)
        try:
            async with self._db_lock:
                history = await asyncio.to_thread(
                    entity_history,
                    self._settings.offline_dir,
                    layout,
                    entity,
                    span,
                    features=features,
                )
        except StatsError as exc:
            raise HttpError(422, "invalid_request", str(exc)) from None
        return {"view": layout.name, "version": layout.version, "entity": entity,
                "range": span.to_json(), **history}  # fmt: skip

    async def _stats(self, layout: ViewLayout, query: dict[str, list[str]]) -> dict[str, Any]:
        from freshet.offline.stats import StatsError, view_stats

        base = _range(query, "from", "to", default=("now-1d", "now"))
        compare = (
            _range(query, "compare_from", "compare_to", default=None)
            if "compare_from" in query or "compare_to" in query
            else None
        )
        try:
            async with self._db_lock:
                result = await asyncio.to_thread(
                    view_stats,
                    self._settings.offline_dir,
                    layout,
                    base,
                    compare=compare,
                    features=_features(query),
                    threads=1,
                )
        except StatsError as exc:
            raise HttpError(422, "invalid_request", str(exc)) from None
        return result.to_json()


def _one(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values else None


def _features(query: dict[str, list[str]]) -> list[str] | None:
    text = _one(query, "features")
    return [f for f in text.split(",") if f] if text else None


def _range(
    query: dict[str, list[str]], start: str, end: str, *, default: tuple[str, str] | None
) -> Any:
    from freshet.offline.stats import StatsError, TimeRange, parse_time

    lo, hi = _one(query, start), _one(query, end)
    if lo is None or hi is None:
        if default is None:
            raise HttpError(422, "invalid_request", f"give both ?{start}= and ?{end}=")
        lo, hi = lo or default[0], hi or default[1]
    try:
        return TimeRange(parse_time(lo), parse_time(hi))
    except StatsError as exc:
        raise HttpError(422, "invalid_request", str(exc)) from None


def _entity(layout: ViewLayout, query: dict[str, list[str]]) -> str:
    """The encoded entity id: ``?entity=`` or one ``?{field}=`` per key field."""
    given = _one(query, "entity")
    if given is not None and not layout.is_composite:
        return given
    try:
        if given is not None:
            return composite_key(layout, given)[0]
        values = [_one(query, key) for key in layout.keys]
        if any(v is None for v in values):
            raise HttpError(
                422,
                "invalid_request",
                f"give ?entity= or ?{'=&'.join(layout.keys)}= (view {layout.name!r})",
            )
        if not layout.is_composite:
            return str(values[0])
        return composite_key(layout, [str(v) for v in values])[0]
    except EntityKeyError as exc:
        raise HttpError(422, "invalid_request", str(exc)) from None
