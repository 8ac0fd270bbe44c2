"""Request metrics of the lookup endpoint, exposed on ``GET /metrics``::

    freshet_http_requests_total{route,view,status}   requests answered
    freshet_http_request_seconds{route,view}         histogram: request latency in the app
    freshet_lookups_total{view,result}               entities looked up: hit | miss | expired
    freshet_feature_age_seconds{view}                histogram: now - as_of of each hit

With the hot-entity cache on, ``freshet_cache_*`` too (:mod:`freshet.serving.cache`).

``route`` is the path template (``/v1/features/{view}/{entity}``), ``view`` a registered view
name or ``-``, so label sets stay bounded whatever paths clients send.

With several workers (``freshet serve --workers N``) each worker is its own process;
``freshet serve`` then points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory, values go to
prometheus-client's shared files, and any worker's ``/metrics`` shows the sum of all. Counts
are kept in plain lists per request and flushed into the metrics every second (and before
each exposition): a scrape may miss another worker's last second.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

__all__ = ["CONTENT_TYPE", "ServingMetrics", "add_counts", "observe_many"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Lookups take ~0.1-2 ms: resolve that range finely.
_LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 1.0,
)  # fmt: skip
# Feature ages from 100 ms (fresh streaming values) to a week (the demo view's TTL).
_AGE_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 6 * 3600, 86400, 604800)


def observe_many(histogram: Any, values: Iterable[float]) -> None:
    """``histogram.observe(v)`` for each value, touching each bucket once per call."""
    bounds: Sequence[float] = histogram._upper_bounds
    counts = [0] * len(bounds)
    total = 0.0
    for value in values:
        counts[bisect.bisect_left(bounds, value)] += 1
        total += value
    add_counts(histogram, counts, total)


def add_counts(histogram: Any, counts: Sequence[int], total: float) -> None:
    """Add per-bucket observation counts (one slot per bound, ``+Inf`` last) and their sum.

    Uses ``Histogram``'s value slots (``_upper_bounds``, ``_buckets``, ``_sum``), which also
    back multiprocess mode; ``tests/unit/test_serving_metrics.py`` checks the exposition equals
    plain ``observe`` calls, so a prometheus-client change that breaks this fails there.
    """
    if not any(counts):
        return
    histogram._sum.inc(total)
    for slot, count in zip(histogram._buckets, counts, strict=True):
        if count:
            slot.inc(count)


class ServingMetrics:
    """The endpoint's metrics in a registry of their own (one per app instance)."""

    def __init__(
        self,
        views: Iterable[str],
        *,
        multiprocess_dir: str | None = None,
        flush_interval_s: float = 1.0,
    ) -> None:
        self._multiprocess_dir = multiprocess_dir
        self._flush_interval_s = flush_interval_s
        self._flush_at = 0.0
        self._latency_bounds = _LATENCY_BUCKETS
        self._age_bounds = tuple(float(b) for b in _AGE_BUCKETS)
        # (route, view, status) -> [count, latency bucket counts (+Inf last), latency sum]
        self._requests: dict[tuple[str, str, int], list[Any]] = {}
        # view -> [hits, misses, expired, age bucket counts (+Inf last), age sum]
        self._lookups: dict[str, list[Any]] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        self.views = frozenset(views)
        # Other parts' flushes (the cache's counts), run with this one.
        self._flushers: list[Callable[[], None]] = []
        self.requests = Counter(
            "freshet_http_requests",
            "HTTP requests answered by the lookup endpoint",
            ["route", "view", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "freshet_http_request_seconds",
            "Time from request start to response sent, in the app",
            ["route", "view"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.lookups = Counter(
            "freshet_lookups",
            "Entities looked up, by result",
            ["view", "result"],
            registry=self.registry,
        )
        self.age = Histogram(
            "freshet_feature_age_seconds",
            "Age (now - as_of) of the feature values served",
            ["view"],
            buckets=_AGE_BUCKETS,
            registry=self.registry,
        )

    def view_label(self, view: str | None) -> str:
        return view if view is not None and view in self.views else "-"

    def request(self, route: str, view: str, status: int, seconds: float) -> None:
        """Count one answered request (kept locally; see ``flush``)."""
        key = (route, view, status)
        pending = self._requests.get(key)
        if pending is None:
            pending = self._requests[key] = [0, [0] * (len(self._latency_bounds) + 1), 0.0]
        pending[0] += 1
        pending[1][bisect.bisect_left(self._latency_bounds, seconds)] += 1
        pending[2] += seconds
        if time.monotonic() >= self._flush_at:
            self.flush()

    def lookups_done(
        self,
        view: str,
        hits: int,
        misses: int,
        expired: int,
        ages_s: list[float],
        stale: int = 0,
    ) -> None:
        """Count a request's looked-up entities by result (``hit``: every value present;
        ``stale``: found, with stale windowed values), and the ages of the found ones."""
        pending = self._lookups.get(view)
        if pending is None:
            pending = self._lookups[view] = [0, 0, 0, [0] * (len(self._age_bounds) + 1), 0.0, 0]
        pending[0] += hits
        pending[1] += misses
        pending[2] += expired
        pending[5] += stale
        bounds, counts = self._age_bounds, pending[3]
        for age in ages_s:
            counts[bisect.bisect_left(bounds, age)] += 1
        pending[4] += sum(ages_s)

    def flush(self) -> None:
        """Move the locally kept counts into the Prometheus metrics.

        Updating prometheus-client's metrics per request cost ~8 µs (a quarter of a lookup's
        time in the app); the endpoint counts in plain lists instead and flushes at most
        every ``flush_interval_s`` and before every exposition. In multiprocess mode another
        worker's last second may not be in a scrape yet.
        """
        self._flush_at = time.monotonic() + self._flush_interval_s
        requests, self._requests = self._requests, {}
        for (route, view, status), (count, buckets, total) in requests.items():
            self.requests.labels(route, view, str(status)).inc(count)
            add_counts(self.latency.labels(route, view), buckets, total)
        lookups, self._lookups = self._lookups, {}
        for view, (hits, misses, expired, buckets, total, stale) in lookups.items():
            for result, count in (
                ("hit", hits), ("miss", misses), ("expired", expired), ("stale", stale),
            ):  # fmt: skip
                if count:
                    self.lookups.labels(view, result).inc(count)
            add_counts(self.age.labels(view), buckets, total)
        for flusher in self._flushers:
            flusher()

    def add_flusher(self, flush: Callable[[], None]) -> None:
        """Run ``flush`` (moving another part's local counts into its metrics in
        :attr:`registry`) whenever these metrics are flushed."""
        self._flushers.append(flush)

    def exposition(self) -> bytes:
        """The text exposition of every metric (summed over workers in multiprocess mode)."""
        self.flush()
        if self._multiprocess_dir:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=self._multiprocess_dir)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)
