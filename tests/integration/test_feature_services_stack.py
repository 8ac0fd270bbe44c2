"""Feature services and view versions on a real uvicorn server over real Redis, and training
sets of a service from a real Parquet log through ``freshet historical --service``.

Views and services come from ``service_views.py`` (the demo's ``card_txn``, ``card_merchant``
keyed by card and merchant, the service ``fraud_v1``) and ``service_views_v2.py`` (``card_txn``
version 2, a service pinned to version 1), loaded as ``FRESHET_VIEWS`` modules. Records are
written with the sinks' own writers; expected values are computed here from the rows written.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from http_servers import running_server

from freshet.cli import cli
from freshet.dsl.registry import Registry
from freshet.serving import Client, ServingError
from freshet.serving.app import FeatureApp, create_app
from freshet.serving.auth import ApiKeys
from freshet.serving.cache import CacheSettings
from freshet.serving.redis_link import RedisLink
from freshet.sinks.layout import ViewLayout, encode_entity
from freshet.sinks.parquet_log import ParquetLogWriter
from freshet.sinks.redis_store import RedisFeatureWriter, connect
from freshet.sinks.rows import Row
from freshet.sinks.settings import Settings

HERE = Path(__file__).resolve().parent
V1_VIEWS = str(HERE / "service_views.py")
V2_VIEWS = str(HERE / "service_views_v2.py")
_FRESHET = [sys.executable, "-c", "import sys; from freshet.cli import main; sys.exit(main())"]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _registry(*modules: str) -> Registry:
    registry = Registry()
    registry.load({"FRESHET_VIEWS": ",".join(modules)})
    return registry


class CountingLink(RedisLink):
    """The endpoint's Redis link, counting ``MGET`` round trips."""

    calls = 0

    async def mget(self, keys: list[bytes]) -> list[bytes | None]:
        type(self).calls += 1
        return await super().mget(keys)


def _app(redis_url: str, registry: Registry) -> FeatureApp:
    app = create_app(
        Settings.from_env({"FRESHET_REDIS_URL": redis_url}),
        api_keys=ApiKeys.parse(""),
        cache=CacheSettings.from_env({}),
        registry=registry,
    )
    app._redis = CountingLink(redis_url)
    app._reader._client = app._redis
    return app


@pytest.fixture
def v1_url(redis_url: str) -> Iterator[str]:
    with running_server(_app(redis_url, _registry(V1_VIEWS))) as url:
        yield url


@pytest.fixture
def v2_url(redis_url: str) -> Iterator[str]:
    with running_server(_app(redis_url, _registry(V1_VIEWS, V2_VIEWS))) as url:
        yield url


def _write_redis(redis_url: str, layout: ViewLayout, rows: Sequence[Row]) -> None:
    client = connect(redis_url)
    try:
        RedisFeatureWriter(client, {layout.name: layout}).write(rows)
    finally:
        client.close()


# card_txn features: txn_count_5m, amount_sum_1h, amount_mean_1h, amount_max_24h,
# merchant_last, merchant_distinct_24h
CARDS: dict[str, tuple[Any, ...]] = {
    "c1": (3, 150.0, 50.0, 90.0, "m1", 2),
    "c2": (0, 0.0, None, None, "m9", 1),  # an empty hour: mean is null
    "c 3/é": (1, 8.0, 8.0, 8.0, "m|2", 1),
}
# card_merchant features: txn_count_1h, amount_sum_1h
PAIRS: dict[tuple[str, str], tuple[Any, ...]] = {
    ("c1", "m1"): (2, 100.0),
    ("c1", "m|2"): (1, 50.0),
    ("c 3/é", "m|2"): (1, 8.0),
}
ROWS = [
    {"card_id": "c1", "merchant": "m1", "amount": 120.0},
    {"card_id": "c2", "merchant": "m1", "amount": 5},  # mean null: derived null
    {"card_id": "nobody", "merchant": "m1", "amount": 3.0},  # not found in either view
    {"card_id": "c1", "merchant": "m|2", "amount": None},  # request null
    {"card_id": "c 3/é", "merchant": "m|2", "amount": 0.0},
    {"card_id": "c1", "merchant": "m1", "amount": 7.5},  # same entities twice: both answered
]


def _expected(row: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The service's features of one row, from the records written (the reference)."""
    card = CARDS.get(row["card_id"])
    pair = PAIRS.get((row["card_id"], row["merchant"]))
    mean = card[2] if card else None
    amount = None if row["amount"] is None else float(row["amount"])
    features = {
        "card_txn__txn_count_5m": card[0] if card else None,
        "card_txn__amount_mean_1h": mean,
        "card_merchant__txn_count_1h": pair[0] if pair else None,
        "card_merchant__amount_sum_1h": pair[1] if pair else None,
        "amount_vs_mean": amount / mean if amount is not None and mean else None,
    }
    card_status = "present" if card else "not_found"
    pair_status = "present" if pair else "not_found"
    status = {
        "card_txn__txn_count_5m": card_status,
        "card_txn__amount_mean_1h": card_status,
        "card_merchant__txn_count_1h": pair_status,
        "card_merchant__amount_sum_1h": pair_status,
        "amount_vs_mean": card_status,
    }
    return features, status


def _write_fraud_records(redis_url: str, as_of: int) -> None:
    registry = _registry(V1_VIEWS)
    txn = registry.get("card_txn").layout()
    pairs = registry.get("card_merchant").layout()
    _write_redis(redis_url, txn, [Row("card_txn", c, as_of, v, 0, 1) for c, v in CARDS.items()])
    _write_redis(
        redis_url,
        pairs,
        [Row("card_merchant", encode_entity(k), as_of, v, 0, 1) for k, v in PAIRS.items()],
    )


def test_a_service_lookup_answers_every_views_features_and_derived_ones_per_row_in_one_mget(
    redis_url: str, v1_url: str
) -> None:
    as_of = _now_ms() - 2_000
    _write_fraud_records(redis_url, as_of)
    with Client(v1_url) as client:
        before = CountingLink.calls
        results = client.get_service("fraud_v1", ROWS)
        assert CountingLink.calls - before == 1  # one MGET for 2 views x 6 rows
    assert len(results) == len(ROWS)
    for row, result in zip(ROWS, results, strict=True):
        features, status = _expected(row)
        assert list(result["features"]) == list(features)  # the service's column order
        assert result["features"] == pytest.approx(features, nan_ok=False)
        assert result["status"] == status
        card_found = row["card_id"] in CARDS
        txn = result["views"]["card_txn"]
        assert (txn["version"], txn["entity"], txn["found"]) == (1, row["card_id"], card_found)
        assert txn["as_of"] == (as_of if card_found else None)
        assert (txn["age_ms"] is not None and txn["age_ms"] >= 2_000) == card_found
        pair = result["views"]["card_merchant"]
        assert pair["entity"] == encode_entity((row["card_id"], row["merchant"]))
        assert pair["found"] == ((row["card_id"], row["merchant"]) in PAIRS)


def test_service_errors_name_the_service_the_row_and_the_field(v1_url: str) -> None:
    with Client(v1_url) as client:
        with pytest.raises(ServingError) as unknown:
            client.get_service("fraud_v9", ROWS[:1])
        assert (unknown.value.status, unknown.value.code) == (404, "unknown_service")
        assert "fraud_v9" in unknown.value.message
        assert "fraud_v1" in unknown.value.message
        with pytest.raises(ServingError) as missing:
            client.get_service("fraud_v1", [ROWS[0], {"card_id": "c1", "amount": 1.0}])
        assert missing.value.status == 422
        assert "rows[1]" in missing.value.message
        assert "'merchant'" in missing.value.message
        with pytest.raises(ServingError) as no_request:
            client.get_service("fraud_v1", [{"card_id": "c1", "merchant": "m1"}])
        assert no_request.value.status == 422
        assert "'amount'" in no_request.value.message
        with pytest.raises(ServingError) as typed:
            client.get_service("fraud_v1", [{**ROWS[0], "amount": "12"}])
        assert typed.value.status == 422
        assert "amount" in typed.value.message
        assert client.get_service("fraud_v1", []) == []
        (listed,) = client.services()
        assert listed["name"] == "fraud_v1"
        assert [c["name"] for c in listed["columns"]] == list(_expected(ROWS[0])[0])
        assert listed["keys"] == ["card_id", "merchant"]


def test_openapi_documents_the_service_route_with_its_row_schema(v1_url: str) -> None:
    import httpx

    doc = httpx.get(f"{v1_url}/openapi.json").json()
    route = doc["paths"]["/v1/services/fraud_v1"]["post"]
    rows = route["requestBody"]["content"]["application/json"]["schema"]["properties"]["rows"]
    assert rows["items"]["required"] == ["card_id", "merchant", "amount"]
    assert rows["items"]["properties"]["amount"]["type"] == "number"
    result = route["responses"]["200"]["content"]["application/json"]["schema"]
    features = result["properties"]["results"]["items"]["properties"]["features"]
    assert features["required"] == list(_expected(ROWS[0])[0])
    assert "/v1/services" in doc["paths"]


def test_freshet_get_service_reads_redis_directly_and_through_the_endpoint(
    redis_url: str, v1_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_fraud_records(redis_url, _now_ms() - 1_000)
    args = ["get", "--service", "fraud_v1", "card_id=c1", "merchant=m1", "amount=120", "--json"]
    over_http = CliRunner().invoke(cli, [*args, "--url", v1_url])
    assert over_http.exit_code == 0, over_http.output
    import orjson

    got = orjson.loads(over_http.output)
    features, status = _expected({"card_id": "c1", "merchant": "m1", "amount": 120.0})
    assert got["features"] == pytest.approx(features)
    assert got["status"] == status
    # straight from Redis: a child process loading the views module (the registry is global)
    direct = subprocess.run(
        [*_FRESHET, *args],
        env={**_env(), "FRESHET_VIEWS": V1_VIEWS, "FRESHET_REDIS_URL": redis_url},
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert direct.returncode == 0, direct.stderr.decode()
    assert orjson.loads(direct.stdout)["features"] == pytest.approx(features)
    bad = CliRunner().invoke(cli, ["get", "--service", "fraud_v1", "card_id", "--url", v1_url])
    assert bad.exit_code != 0
    assert "FIELD=VALUE" in bad.output


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("FRESHET_")}


def test_a_view_version_is_served_by_name_at_version_while_a_newer_one_is_registered(
    redis_url: str, v2_url: str
) -> None:
    registry = _registry(V1_VIEWS, V2_VIEWS)
    v1, v2 = (registry.get("card_txn", version).layout() for version in (1, 2))
    as_of = _now_ms() - 1_000
    _write_redis(redis_url, v1, [Row("card_txn", "c1", as_of, CARDS["c1"], 0, 1)])
    v2_values = (*CARDS["c1"][:-1], 5, 12.5)
    _write_redis(redis_url, v2, [Row("card_txn", "c1", as_of + 7, v2_values, 0, 2)])
    with Client(v2_url) as client:
        newest = client.get("card_txn", "c1")
        assert newest["features"] == dict(zip(v2.feature_names, v2_values, strict=True))
        assert newest["as_of"] == as_of + 7
        assert client.get("card_txn@2", "c1")["features"] == newest["features"]
        old = client.get("card_txn@1", "c1")  # the client sends %40
        assert old["features"] == dict(zip(v1.feature_names, CARDS["c1"], strict=True))
        assert (old["view"], old["as_of"]) == ("card_txn@1", as_of)
        (batch,) = client.get_many("card_txn@1", ["c1"], features=["merchant_distinct_24h"])
        assert batch["features"] == {"merchant_distinct_24h": 2}
        with pytest.raises(ServingError) as unknown:
            client.get("card_txn@3", "c1")
        assert unknown.value.status == 404
        (pinned,) = client.get_service("fraud_pinned", [{"card_id": "c1", "merchant": "m1"}])
        assert pinned["views"]["card_txn"]["version"] == 1
        assert pinned["features"]["card_txn__txn_count_5m"] == CARDS["c1"][0]
    import httpx

    for path in ("/v1/features/card_txn@1/c1", "/v1/features/card_txn%401/c1"):
        raw = httpx.get(f"{v2_url}{path}").json()
        assert raw["features"] == old["features"], path


# --- training sets -------------------------------------------------------------------------

T0 = 1_714_521_600_000  # 2024-05-01T00:00:00Z
MIN = 60_000


def _log(root: Path, registry: Registry) -> list[Row]:
    """A log of both views with values changing over time; returns every row written."""
    txn = registry.get("card_txn").layout()
    pairs = registry.get("card_merchant").layout()
    rows = [
        Row("card_txn", "c1", T0, (1, 10.0, 10.0, 10.0, "m1", 1), 0, 1),
        Row("card_txn", "c1", T0 + 5 * MIN, (2, 30.0, 15.0, 20.0, "m1", 1), 0, 2),
        Row("card_txn", "c1", T0 + 9 * MIN, (0, 0.0, None, 20.0, "m1", 1), 0, 3),
        Row("card_txn", "c2", T0 + MIN, (1, 4.0, 4.0, 4.0, "m|2", 1), 1, 1),
        Row("card_txn", "c2", T0 + 2 * MIN, (2, 4.0, 0.0, 4.0, "m|2", 1), 1, 2),
    ]
    merchant_rows = [
        Row("card_merchant", encode_entity(("c1", "m1")), T0, (1, 10.0), 0, 1),
        Row("card_merchant", encode_entity(("c1", "m1")), T0 + 5 * MIN, (2, 30.0), 0, 2),
        Row("card_merchant", encode_entity(("c2", "m|2")), T0 + 3 * MIN, (1, 4.0), 1, 2),
    ]
    for layout, batch in ((txn, rows), (pairs, merchant_rows)):
        writer = ParquetLogWriter(root, layout, max_rows=1_000, max_age_s=3600)
        writer.write(batch)
        writer.close()
    return rows + merchant_rows


def _as_of(rows: Sequence[Row], view: str, entity: str, t: int) -> tuple[Any, ...] | None:
    seen = [r for r in rows if r.view == view and r.entity == entity and r.as_of <= t]
    return max(seen, key=lambda r: (r.as_of, r.offset)).values if seen else None


def test_historical_for_a_service_has_the_endpoints_columns_point_in_time(
    tmp_path: Path,
) -> None:
    registry = _registry(V1_VIEWS)
    logged = _log(tmp_path / "offline", registry)
    inputs = [
        {"card_id": c, "merchant": m, "timestamp": T0 + dt, "amount": a, "label": i}
        for i, (c, m, dt, a) in enumerate(
            [
                ("c1", "m1", -1, 5.0),  # before any row: nulls
                ("c1", "m1", 0, 5.0),  # equal timestamps are visible
                ("c1", "m1", 5 * MIN - 1, 30.0),  # never the row of the next millisecond
                ("c1", "m1", 5 * MIN, 30.0),
                ("c1", "m1", 9 * MIN, 1.0),  # mean null -> derived null
                ("c2", "m|2", 2 * MIN + 1, 3.0),  # mean 0 -> division by zero is null
                ("c2", "m|2", 3 * MIN, 8),  # an int amount of a float64 field
                ("c2", "m1", 3 * MIN, None),
                ("nobody", "m1", 3 * MIN, 1.0),
            ]
        )
    ]
    entities = tmp_path / "rows.csv"
    pacsv.write_csv(pa.Table.from_pylist(inputs), entities)
    out = tmp_path / "train.parquet"
    result = subprocess.run(
        [*_FRESHET, "historical", "--service", "fraud_v1", "--entities", str(entities),
         "--out", str(out), "--offline-dir", str(tmp_path / "offline")],
        env={**_env(), "FRESHET_VIEWS": V1_VIEWS},
        capture_output=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    table = pq.read_table(out)
    endpoint_columns = list(_expected(ROWS[0])[0])
    assert table.column_names == [*inputs[0], *endpoint_columns]
    for row, got in zip(inputs, table.to_pylist(), strict=True):
        card = _as_of(logged, "card_txn", row["card_id"], row["timestamp"])
        pair = _as_of(
            logged, "card_merchant", encode_entity((row["card_id"], row["merchant"])),
            row["timestamp"],
        )  # fmt: skip
        mean = card[2] if card else None
        amount = row["amount"]
        want = {
            "card_txn__txn_count_5m": card[0] if card else None,
            "card_txn__amount_mean_1h": mean,
            "card_merchant__txn_count_1h": pair[0] if pair else None,
            "card_merchant__amount_sum_1h": pair[1] if pair else None,
            "amount_vs_mean": amount / mean if amount is not None and mean else None,
        }
        assert {c: got[c] for c in endpoint_columns} == pytest.approx(want), row
        assert got["label"] == row["label"]


def test_historical_and_the_endpoint_agree_on_the_same_latest_rows(
    redis_url: str, v1_url: str, tmp_path: Path
) -> None:
    from freshet.offline.services import service_historical

    registry = _registry(V1_VIEWS)
    plan = registry.get_service("fraud_v1")
    as_of = _now_ms() - 5_000
    _write_fraud_records(redis_url, as_of)
    for view, entries in (("card_txn", CARDS.items()), ("card_merchant", PAIRS.items())):
        layout = registry.get(view).layout()
        writer = ParquetLogWriter(tmp_path, layout, max_rows=1_000, max_age_s=3600)
        writer.write(
            [
                Row(view, k if isinstance(k, str) else encode_entity(k), as_of, v, 0, 1)
                for k, v in entries
            ]
        )
        writer.close()
    now = _now_ms()
    table = service_historical(
        tmp_path,
        pa.Table.from_pylist([{**row, "timestamp": now} for row in ROWS]),
        plan,
    )
    with Client(v1_url) as client:
        served = client.get_service("fraud_v1", ROWS)
    for offline, online in zip(table.to_pylist(), served, strict=True):
        assert {c: offline[c] for c in plan.columns} == online["features"]


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_schemathesis_requests_to_the_service_route_get_documented_answers(
    redis_url: str, v1_url: str, mode: str
) -> None:
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.generation import GenerationMode

    _write_fraud_records(redis_url, _now_ms() - 1_000)
    from schemathesis.config import SchemathesisConfig

    # 413 is this API's documented answer to too many rows (as for view batches).
    config = SchemathesisConfig.from_dict(
        {
            "checks": {
                "negative_data_rejection": {
                    "expected-statuses": [400, 401, 403, 404, 405, 413, 422]
                }
            }
        }
    )
    schema = schemathesis.openapi.from_url(f"{v1_url}/openapi.json", config=config)
    (operation,) = [
        op
        for op in (result.ok() for result in schema.get_all_operations())
        if op.path.startswith("/v1/services/")
    ]
    generation = GenerationMode.POSITIVE if mode == "positive" else GenerationMode.NEGATIVE

    @given(case=operation.as_strategy(generation_mode=generation))
    @settings(
        max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    def check(case: Any) -> None:
        case.call_and_validate(base_url=v1_url)

    check()
