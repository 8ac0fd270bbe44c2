"""Pipeline health per view, for the console's health page (``GET /ui/api/health``).

Read from Prometheus metrics, one of two ways:

* **Scraped** (default): the ``/metrics`` of each flow process named in
  ``FRESHET_UI_FLOW_METRICS`` (comma-separated ``host:port`` or URLs; ``freshet run
  --metrics-port``, default 9108) and the endpoint's own metrics. Rates (events/s) are the
  change between two consecutive reads of the page (the page reads every few seconds; the
  first read has none); freshness quantiles come from the flow's histogram since it started.
* **Prometheus** (``FRESHET_PROMETHEUS_URL`` set): instant PromQL queries over the last five
  minutes (rates and freshness quantiles) summed over every scraped process.

Per view: ``events_per_s`` (``freshet_events_in_total``), ``consumer_lag`` (the sum of
``freshet_consumer_lag`` over the partitions of the processes that run the view, or of its
source topic), ``freshness_p50_s``/``freshness_p99_s`` (``freshet_freshness_seconds``),
``dead_letters`` by reason (``freshet_dead_letters_total``), and the endpoint's lookups by
result (``freshet_lookups_total{view,result}``: hit, miss, expired, stale) with
``stale_share``, the share of lookups answered ``stale``.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

__all__ = [
    "HealthSources",
    "Sample",
    "Scrape",
    "histogram_quantile",
    "parse_exposition",
    "summarise",
]

# name -> list of (labels, value); histogram buckets under "<name>_bucket".
Sample = dict[str, list[tuple[dict[str, str], float]]]
_TIMEOUT_S = 2.0


def parse_exposition(text: str) -> Sample:
    """The samples of a Prometheus text exposition, by sample name (``_total`` kept)."""
    out: Sample = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return out


def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """Prometheus' ``histogram_quantile`` over cumulative ``(upper bound, count)`` buckets:
    linear interpolation inside the bucket holding rank ``q * total`` (the first bucket from
    0; a rank in the ``+Inf`` bucket gives the largest finite bound). None without samples."""
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return None
    total = ordered[-1][1]
    rank = q * total
    previous_bound, previous_count = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                return previous_bound
            if count == previous_count:
                return bound
            return previous_bound + (bound - previous_bound) * (rank - previous_count) / (
                count - previous_count
            )
        previous_bound, previous_count = bound, count
    return previous_bound


@dataclass(slots=True)
class Scrape:
    """One flow process's metrics as last read, and the read before (for rates)."""

    address: str
    url: str
    at: float = 0.0
    sample: Sample = field(default_factory=dict)
    previous_at: float = 0.0
    previous: Sample = field(default_factory=dict)
    error: str | None = None

    def record(self, sample: Sample, at: float) -> None:
        if self.sample and at - self.at >= 0.5:
            self.previous, self.previous_at = self.sample, self.at
        self.sample, self.at, self.error = sample, at, None


def _url(address: str) -> str:
    address = address.strip()
    if "://" not in address:
        address = f"http://{address}"
    return address if address.rstrip("/").endswith("/metrics") else address.rstrip("/") + "/metrics"


def _by_view(sample: Sample, name: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for labels, value in sample.get(name, ()):
        view = labels.get("view")
        if view is not None:
            out[view] = out.get(view, 0.0) + value
    return out


def _lag(scrape: Scrape, topics: Mapping[str, str]) -> dict[str, float]:
    """Consumer lag per view: a process running one view owns all its lag; otherwise the
    partitions of each view's source topic."""
    lag = scrape.sample.get("freshet_consumer_lag", [])
    views = set(_by_view(scrape.sample, "freshet_events_in_total"))
    out: dict[str, float] = {}
    for labels, value in lag:
        if len(views) == 1:
            view: str | None = next(iter(views))
        else:
            view = topics.get(labels.get("topic", ""))
        if view is not None:
            out[view] = out.get(view, 0.0) + value
    return out


def summarise(
    views: Sequence[str],
    topics: Mapping[str, str],
    scrapes: Sequence[Scrape],
    endpoint: Sample,
) -> list[dict[str, Any]]:
    """The health rows of ``views`` from the flows' scrapes and the endpoint's metrics.
    ``topics`` maps a source topic to its view."""
    rows = {view: _empty(view) for view in views}
    buckets: dict[str, dict[float, float]] = {view: {} for view in views}
    for scrape in scrapes:
        if not scrape.sample:
            continue
        now_in = _by_view(scrape.sample, "freshet_events_in_total")
        before = _by_view(scrape.previous, "freshet_events_in_total")
        elapsed = scrape.at - scrape.previous_at
        for view, count in now_in.items():
            row = rows.get(view)
            if row is None:
                continue
            row["events_in_total"] = (row["events_in_total"] or 0) + count
            row["processes"].append(scrape.address)
            if scrape.previous and elapsed > 0:
                rate = max(count - before.get(view, 0.0), 0.0) / elapsed
                row["events_per_s"] = (row["events_per_s"] or 0.0) + rate
        for view, value in _lag(scrape, topics).items():
            if view in rows:
                rows[view]["consumer_lag"] = (rows[view]["consumer_lag"] or 0) + value
        for labels, value in scrape.sample.get("freshet_dead_letters_total", []):
            view, reason = labels.get("view", ""), labels.get("reason", "-")
            if view in rows:
                letters = rows[view]["dead_letters"]
                letters[reason] = letters.get(reason, 0) + value
        for labels, value in scrape.sample.get("freshet_freshness_seconds_bucket", []):
            view = labels.get("view", "")
            if view in buckets:
                bound = float(labels["le"])
                buckets[view][bound] = buckets[view].get(bound, 0.0) + value
    for view, series in buckets.items():
        rows[view]["freshness_p50_s"] = histogram_quantile(0.5, series.items())
        rows[view]["freshness_p99_s"] = histogram_quantile(0.99, series.items())
    for labels, value in endpoint.get("freshet_lookups_total", []):
        view = labels.get("view", "")
        if view in rows:
            lookups = rows[view]["lookups"]
            result = labels.get("result", "-")
            lookups[result] = lookups.get(result, 0) + value
    for row in rows.values():
        _finish(row)
    return list(rows.values())


def _empty(view: str) -> dict[str, Any]:
    return {
        "view": view,
        "events_per_s": None,
        "events_in_total": None,
        "consumer_lag": None,
        "freshness_p50_s": None,
        "freshness_p99_s": None,
        "dead_letters": {},
        "lookups": {},
        "stale_share": None,
        "processes": [],
    }


def _finish(row: dict[str, Any]) -> None:
    lookups = row["lookups"]
    for result in ("hit", "miss", "expired", "stale"):
        lookups.setdefault(result, 0)
    total = sum(lookups.values())
    row["stale_share"] = lookups["stale"] / total if total else None


class HealthSources:
    """Where health comes from: flow ``/metrics`` addresses, or a Prometheus server."""

    def __init__(
        self,
        *,
        flow_metrics: Sequence[str] = (),
        prometheus_url: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._scrapes = [Scrape(address, _url(address)) for address in flow_metrics if address]
        self._prometheus = prometheus_url.rstrip("/") if prometheus_url else None
        self._transport = transport  # tests swap the network

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> HealthSources:
        addresses = [a.strip() for a in environ.get("FRESHET_UI_FLOW_METRICS", "").split(",")]
        return cls(
            flow_metrics=[a for a in addresses if a],
            prometheus_url=environ.get("FRESHET_PROMETHEUS_URL") or None,
        )

    async def read(
        self, views: Sequence[str], topics: Mapping[str, str], endpoint: Sample
    ) -> dict[str, Any]:
        """``{"source", "targets": [{address, up, error}], "views": [row, ...]}``."""
        if self._prometheus is not None:
            return await self._from_prometheus(views, topics)
        async with httpx.AsyncClient(timeout=_TIMEOUT_S, transport=self._transport) as client:
            await asyncio.gather(*(self._scrape(client, s) for s in self._scrapes))
        return {
            "source": "scrape",
            "targets": [
                {"address": s.address, "up": s.error is None and bool(s.sample), "error": s.error}
                for s in self._scrapes
            ],
            "views": summarise(views, topics, self._scrapes, endpoint),
        }

    async def _scrape(self, client: httpx.AsyncClient, scrape: Scrape) -> None:
        try:
            response = await client.get(scrape.url)
            response.raise_for_status()
            scrape.record(parse_exposition(response.text), time.monotonic())
        except (httpx.HTTPError, ValueError) as exc:
            scrape.error = f"{type(exc).__name__}: {exc}"
            scrape.sample, scrape.previous = {}, {}

    async def _from_prometheus(
        self, views: Sequence[str], topics: Mapping[str, str]
    ) -> dict[str, Any]:
        queries = {
            "rate": "sum by (view) (rate(freshet_events_in_total[5m]))",
            "total": "sum by (view) (freshet_events_in_total)",
            "lag": "sum by (topic) (freshet_consumer_lag)",
            "p50": "histogram_quantile(0.5, sum by (view, le) "
            "(rate(freshet_freshness_seconds_bucket[5m])))",
            "p99": "histogram_quantile(0.99, sum by (view, le) "
            "(rate(freshet_freshness_seconds_bucket[5m])))",
            "dead": "sum by (view, reason) (freshet_dead_letters_total)",
            "lookups": "sum by (view, result) (freshet_lookups_total)",
        }
        results: dict[str, list[tuple[dict[str, str], float]]] = {}
        error = None
        async with httpx.AsyncClient(timeout=_TIMEOUT_S, transport=self._transport) as client:
            for key, query in queries.items():
                try:
                    response = await client.get(
                        f"{self._prometheus}/api/v1/query", params={"query": query}
                    )
                    response.raise_for_status()
                    body = response.json()
                    results[key] = [
                        (item["metric"], float(item["value"][1])) for item in body["data"]["result"]
                    ]
                except (httpx.HTTPError, ValueError, KeyError) as exc:
                    error = f"{type(exc).__name__}: {exc}"
                    results[key] = []
        rows = {view: _empty(view) for view in views}
        fields = (
            ("rate", "events_per_s"),
            ("total", "events_in_total"),
            ("p50", "freshness_p50_s"),
            ("p99", "freshness_p99_s"),
        )
        for key, field_name in fields:
            for labels, value in results[key]:
                if labels.get("view") in rows and not math.isnan(value):
                    rows[labels["view"]][field_name] = value
        for labels, value in results["lag"]:
            view = topics.get(labels.get("topic", ""))
            if view in rows:
                rows[view]["consumer_lag"] = (rows[view]["consumer_lag"] or 0) + value
        for labels, value in results["dead"]:
            if labels.get("view") in rows:
                rows[labels["view"]]["dead_letters"][labels.get("reason", "-")] = value
        for labels, value in results["lookups"]:
            if labels.get("view") in rows:
                rows[labels["view"]]["lookups"][labels.get("result", "-")] = value
        for row in rows.values():
            _finish(row)
        return {
            "source": "prometheus",
            "targets": [{"address": self._prometheus, "up": error is None, "error": error}],
            "views": list(rows.values()),
        }
