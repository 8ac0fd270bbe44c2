"""The console's routes on the endpoint (``/ui``): pages, static files, auth, off switch, and the
health page's reading of Prometheus metrics (no network: an in-memory Redis, httpx transports)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from freshet.dsl.registry import get_view, views_json
from freshet.serving.app import FeatureApp
from freshet.serving.auth import ApiKeys
from freshet.serving.console import ConsoleSettings, console_for, ui_enabled
from freshet.serving.health import (
    HealthSources,
    Scrape,
    histogram_quantile,
    parse_exposition,
    summarise,
)
from freshet.sinks.layout import ViewLayout


class MemoryRedis:
    async def mget(self, keys: list[bytes]) -> list[bytes | None]:
        return [None for _ in keys]

    async def ping(self) -> bool:
        return True


def _layouts() -> dict[str, ViewLayout]:
    return {name: get_view(name).layout() for name in ("card_txn", "card_txn_json")}


def _app(keys: str = "", *, ui: bool = True, offline: Path = Path("/nonexistent"),
         environ: dict[str, str] | None = None) -> FeatureApp:  # fmt: skip
    layouts = _layouts()
    api_keys = ApiKeys.parse(keys)
    return FeatureApp(
        layouts=layouts,
        views_doc=views_json(),
        redis_client=MemoryRedis(),
        api_keys=api_keys,
        console=console_for(offline, layouts, views_json(), (), api_keys, environ or {})
        if ui
        else None,
    )


def _get(app: FeatureApp, path: str, **kwargs: Any) -> httpx.Response:
    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get(path, **kwargs)

    return asyncio.run(run())


def test_each_page_is_the_shell_with_its_name_and_a_strict_content_policy() -> None:
    app = _app()
    for page in ("catalog", "explore", "stats", "health"):
        response = _get(app, f"/ui/{page}")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        assert f'data-page="{page}"' in response.text
        policy = response.headers["content-security-policy"]
        assert "default-src 'self'" in policy
        assert "script-src 'self'" in policy
        assert "http" not in response.text.replace('xmlns="http', "")  # nothing off-site
    root = _get(app, "/ui")
    assert root.status_code == 302
    assert root.headers["location"] == "/ui/catalog"
    script = _get(app, "/ui/static/console.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert "https://" not in script.text
    assert "//cdn" not in script.text
    assert _get(app, "/ui/static/console.css").headers["content-type"].startswith("text/css")
    missing = _get(app, "/ui/nope")
    assert missing.status_code == 404
    assert "catalog" in missing.json()["message"]


def test_the_catalog_adds_each_views_redis_keys_and_offline_log(tmp_path: Path) -> None:
    doc = _get(_app(offline=tmp_path), "/ui/api/catalog").json()
    card = next(v for v in doc["views"] if v["name"] == "card_txn")
    assert card["offline_log"] == str(tmp_path / "card_txn" / "date=YYYY-MM-DD")
    assert card["redis_key"] == "fs:card_txn:1:{<entity>}"
    assert [f["name"] for f in card["features"]] == list(
        get_view("card_txn").layout().feature_names
    )
    assert doc["services"] == []


def test_the_console_api_needs_the_endpoints_keys_and_scopes() -> None:
    app = _app("k_all:*;k_json:card_txn_json")
    assert _get(app, "/ui/catalog").status_code == 200  # the page holds no data
    assert _get(app, "/ui/api/catalog").status_code == 401
    assert _get(app, "/ui/api/health").status_code == 401
    ok = {"Authorization": "Bearer k_all"}
    assert _get(app, "/ui/api/catalog", headers=ok).status_code == 200
    scoped = {"X-API-Key": "k_json"}
    assert _get(app, "/ui/api/catalog", headers=scoped).status_code == 200
    refused = _get(app, "/ui/api/stats/card_txn", headers=scoped)
    assert refused.status_code == 403
    history = _get(app, "/ui/api/history/card_txn?entity=c1", headers={"X-API-Key": "bad"})
    assert history.status_code == 401
    assert _get(app, "/ui/api/stats/nope", headers=ok).status_code == 404


def test_history_and_stats_answer_from_the_offline_log(tmp_path: Path) -> None:
    app = _app(offline=tmp_path)
    history = _get(app, "/ui/api/history/card_txn?card_id=c1&from=2024-05-01&to=now")
    assert history.status_code == 200, history.text
    assert history.json()["as_of"] == []
    stats = _get(
        app,
        "/ui/api/stats/card_txn?from=now-1h&to=now&compare_from=2024-05-01&compare_to=2024-05-02",
    )
    assert stats.status_code == 200, stats.text
    assert stats.json()["base"]["rows"] == 0
    bad = _get(app, "/ui/api/stats/card_txn?from=yesterday&to=now")
    assert bad.status_code == 422
    assert "'yesterday' is not a time" in bad.json()["message"]
    half = _get(app, "/ui/api/stats/card_txn?from=-1d&to=now&compare_from=-2d")
    assert half.status_code == 422


def test_the_console_is_off_by_setting() -> None:
    assert ui_enabled({})
    assert ui_enabled({"FRESHET_UI": "on"})
    assert not ui_enabled({"FRESHET_UI": "off"})
    assert not ui_enabled({"FRESHET_UI": "0"})
    app = _app(ui=False)
    assert _get(app, "/ui/catalog").status_code == 404
    assert _get(app, "/ui/api/catalog").status_code == 404


def test_the_console_only_answers_get() -> None:
    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post("/ui/api/catalog", content=b"{}")

    assert asyncio.run(run()).status_code == 405


# -- health ----------------------------------------------------------------------------------------

FLOW = """\
# TYPE freshet_events_in_total counter
freshet_events_in_total{view="card_txn"} 1000.0
# TYPE freshet_dead_letters_total counter
freshet_dead_letters_total{reason="late",view="card_txn"} 7.0
freshet_dead_letters_total{reason="undecodable",view="card_txn"} 3.0
# TYPE freshet_consumer_lag gauge
freshet_consumer_lag{partition="0",topic="whatever"} 5.0
freshet_consumer_lag{partition="1",topic="whatever"} 4.0
# TYPE freshet_freshness_seconds histogram
freshet_freshness_seconds_bucket{le="0.1",view="card_txn"} 50.0
freshet_freshness_seconds_bucket{le="0.25",view="card_txn"} 90.0
freshet_freshness_seconds_bucket{le="1.0",view="card_txn"} 100.0
freshet_freshness_seconds_bucket{le="+Inf",view="card_txn"} 100.0
freshet_freshness_seconds_count{view="card_txn"} 100.0
freshet_freshness_seconds_sum{view="card_txn"} 9.0
"""
ENDPOINT = """\
# TYPE freshet_lookups_total counter
freshet_lookups_total{result="hit",view="card_txn"} 90.0
freshet_lookups_total{result="stale",view="card_txn"} 10.0
"""


def test_histogram_quantile_interpolates_as_prometheus_does() -> None:
    buckets = [(0.1, 50.0), (0.25, 90.0), (1.0, 100.0), (float("inf"), 100.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    assert histogram_quantile(0.7, buckets) == pytest.approx(0.1 + 0.15 * 20 / 40)
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.25 + 0.75 * 9 / 10)
    assert histogram_quantile(0.5, [(0.1, 0.0), (float("inf"), 0.0)]) is None
    assert histogram_quantile(0.99, [(0.1, 1.0), (float("inf"), 100.0)]) == 0.1


def test_health_sums_a_flows_metrics_and_reads_stale_serves_from_the_endpoint() -> None:
    scrape = Scrape("flow", "http://flow/metrics")
    scrape.record(parse_exposition(FLOW.replace("1000.0", "800.0")), 10.0)
    scrape.record(parse_exposition(FLOW), 12.0)
    rows = summarise(["card_txn", "other"], {}, [scrape], parse_exposition(ENDPOINT))
    card = rows[0]
    assert card["events_per_s"] == pytest.approx(100.0)
    assert card["events_in_total"] == 1000
    assert card["consumer_lag"] == 9  # a process running one view owns its lag
    assert card["dead_letters"] == {"late": 7, "undecodable": 3}
    assert card["freshness_p50_s"] == pytest.approx(0.1)
    assert card["lookups"] == {"hit": 90, "miss": 0, "expired": 0, "stale": 10}
    assert card["stale_share"] == pytest.approx(0.1)
    assert rows[1]["events_per_s"] is None
    assert rows[1]["stale_share"] is None


def test_health_scrapes_the_configured_flows_and_reports_one_that_is_down() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "up":
            return httpx.Response(200, text=FLOW)
        raise httpx.ConnectError("refused", request=request)

    sources = HealthSources(flow_metrics=["up:9108", "http://down:9109/metrics"],
                            transport=httpx.MockTransport(handler))  # fmt: skip
    answer = asyncio.run(sources.read(["card_txn"], {}, {}))
    assert answer["source"] == "scrape"
    assert [(t["address"], t["up"]) for t in answer["targets"]] == [
        ("up:9108", True), ("http://down:9109/metrics", False)
    ]  # fmt: skip
    assert answer["views"][0]["events_in_total"] == 1000


def test_health_from_a_prometheus_server_maps_topics_to_views() -> None:
    answers = {
        "sum by (view) (rate(freshet_events_in_total[5m]))": [({"view": "card_txn"}, "12.5")],
        "sum by (topic) (freshet_consumer_lag)": [({"topic": "transactions"}, "3")],
        "sum by (view, result) (freshet_lookups_total)": [
            ({"view": "card_txn", "result": "stale"}, "2"),
            ({"view": "card_txn", "result": "hit"}, "6"),
        ],
    }
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        query = request.url.params["query"]
        seen.append(query)
        result = [{"metric": m, "value": [time.time(), v]} for m, v in answers.get(query, [])]
        return httpx.Response(
            200, content=orjson.dumps({"status": "success", "data": {"result": result}})
        )

    sources = HealthSources(
        prometheus_url="http://prom:9090/", transport=httpx.MockTransport(handler)
    )
    answer = asyncio.run(sources.read(["card_txn"], {"transactions": "card_txn"}, {}))
    row = answer["views"][0]
    assert answer["source"] == "prometheus"
    assert answer["targets"][0]["up"]
    assert row["events_per_s"] == 12.5
    assert row["consumer_lag"] == 3
    assert row["stale_share"] == pytest.approx(0.25)
    assert len(seen) == 7


def test_console_settings_read_the_flow_metrics_addresses() -> None:
    settings = ConsoleSettings.from_env(
        Path("x"), {"FRESHET_UI_FLOW_METRICS": " 127.0.0.1:9108, ,10.0.0.2:9109 "}
    )
    assert [s.address for s in settings.health._scrapes] == ["127.0.0.1:9108", "10.0.0.2:9109"]
    assert settings.health._scrapes[0].url == "http://127.0.0.1:9108/metrics"
