"""The endpoint's feature-service and view-version routes, in process: one ``MGET`` per request,
request order, errors naming the row and field, auth across a service's views, ``VIEW@N``."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any

import httpx
import pytest

from freshet import FeatureService
from freshet.dsl.definitions import Aggregation, Entity, Feature, FeatureView
from freshet.dsl.registry import Registry
from freshet.dsl.views import CARD_TXN, CARD_TXN_JSON
from freshet.serving.app import FeatureApp
from freshet.serving.auth import ApiKeys
from freshet.sinks.layout import encode_entity
from freshet.sinks.redis_store import encode_record, record_key

CARD_MERCHANT = FeatureView(
    name="card_merchant",
    version=1,
    entity=Entity("card_merchant", key=("card_id", "merchant")),
    source=CARD_TXN.source,
    features=(
        Feature("txn_count_1h", Aggregation.COUNT, window="1h"),
        Feature("amount_sum_1h", Aggregation.SUM, "amount", window="1h"),
    ),
)
V2 = replace(
    CARD_TXN,
    version=2,
    features=(*CARD_TXN.features, Feature("amount_min_1h", Aggregation.MIN, "amount", window="1h")),
)
THREE = FeatureService(
    name="three",
    features=(
        "card_txn@1:txn_count_5m",
        "card_txn_json:amount_sum_1h",
        "card_merchant:txn_count_1h",
    ),
    request={"amount": "float64"},
    derived={"share": "request.amount / card_txn_json.amount_sum_1h"},
)
REGISTRY = Registry([CARD_TXN, CARD_TXN_JSON, CARD_MERCHANT, V2])
PLAN = REGISTRY.add_service(THREE)
TXN_VALUES = (3, 152.5, 50.83, 100.0, "m_0012", 2)
V2_VALUES = (*TXN_VALUES, 7.5)


class MemoryRedis:
    def __init__(self, records: dict[bytes, bytes]) -> None:
        self.records = records
        self.calls = 0

    async def mget(self, keys: list[bytes]) -> list[bytes | None]:
        self.calls += 1
        return [self.records.get(k) for k in keys]

    async def ping(self) -> bool:
        return True


def _records(as_of: int) -> dict[bytes, bytes]:
    v1 = REGISTRY.get("card_txn@1").layout()
    return {
        record_key(v1, "c1"): encode_record(as_of, 1, TXN_VALUES),
        record_key(V2.layout(), "c1"): encode_record(as_of + 1, 1, V2_VALUES),
        record_key(CARD_TXN_JSON.layout(), "c1"): encode_record(as_of, 1, (*TXN_VALUES[:1], 0.0,
                                                                            *TXN_VALUES[2:])),
        record_key(CARD_TXN_JSON.layout(), "c2"): encode_record(as_of, 1, TXN_VALUES),
        record_key(CARD_MERCHANT.layout(), encode_entity(("c2", "m1"))): encode_record(
            as_of, 1, (4, 20.0)
        ),
    }  # fmt: skip


def _app(redis: MemoryRedis, keys: str = "", max_batch: int = 1_000) -> FeatureApp:
    layouts = {"card_txn": V2.layout(), "card_txn@1": CARD_TXN.layout()}
    layouts.update({v.name: v.layout() for v in (CARD_TXN_JSON, CARD_MERCHANT)})
    return FeatureApp(
        layouts=layouts,
        views_doc=[],
        redis_client=redis,
        api_keys=ApiKeys.parse(keys),
        services=[PLAN],
        max_batch=max_batch,
    )


def _call(app: FeatureApp, method: str, path: str, **kwargs: Any) -> httpx.Response:
    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(run())


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def test_three_views_for_many_rows_take_one_mget_and_keep_request_order() -> None:
    redis = MemoryRedis(_records(_now_ms() - 1_000))
    rows = [
        {"card_id": "c2", "merchant": "m1", "amount": 5},
        {"card_id": "c1", "merchant": "m1", "amount": 1.0},
        {"card_id": "zz", "merchant": "m9", "amount": None},
    ]
    response = _call(_app(redis), "POST", "/v1/services/three", json={"rows": rows})
    assert response.status_code == 200, response.text
    assert redis.calls == 1
    body = response.json()
    assert body["service"] == "three"
    first, second, third = body["results"]
    assert first["features"] == {
        "card_txn__txn_count_5m": None,  # c2 has no card_txn@1 record
        "card_txn_json__amount_sum_1h": 152.5,
        "card_merchant__txn_count_1h": 4,
        "share": 5 / 152.5,
    }
    assert first["status"]["card_txn__txn_count_5m"] == "not_found"
    assert first["status"]["share"] == "present"
    assert first["views"]["card_txn"]["version"] == 1  # pinned, although v2 is the newest
    assert second["features"]["card_txn__txn_count_5m"] == TXN_VALUES[0]
    assert second["features"]["share"] is None  # 1.0 / 0.0: division by zero is null
    assert second["views"]["card_merchant"]["found"] is False
    assert set(third["status"].values()) == {"not_found"}
    assert third["features"]["share"] is None


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{", 400, "not valid JSON"),
        ({"entities": []}, 422, 'body must be {"rows": [...]}'),
        ({"rows": {}}, 422, '"rows" must be a list'),
        ({"rows": ["c1"]}, 422, "rows[0] is 'c1'; rows are objects"),
        ({"rows": [{"card_id": "c1", "amount": 1.0}]}, 422, "rows[0]: no 'merchant'"),
        (
            {"rows": [{"card_id": "c1", "merchant": "m", "amount": 1.0, "x": 1}]},
            422,
            "rows[0]: unknown 'x'",
        ),
        (
            {"rows": [{"card_id": 7, "merchant": "m", "amount": 1.0}]},
            422,
            "key field 'card_id' is 7",
        ),
        (
            {"rows": [{"card_id": "c\u0001", "merchant": "m", "amount": 1.0}]},
            422,
            "rows[0]: 'card_id': entity ids are UTF-8 text",
        ),
        (
            {"rows": [{"card_id": "c", "merchant": "m", "amount": True}]},
            422,
            "request field 'amount' is True; it is float64",
        ),
        ({"rows": [{"card_id": "c", "merchant": "m", "amount": 1}] * 3}, 413, "3 rows"),
    ],
)
def test_bad_requests_are_refused_naming_the_row_and_field(
    body: Any, status: int, message: str
) -> None:
    redis = MemoryRedis({})
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    response = _call(_app(redis, max_batch=2), "POST", "/v1/services/three", **kwargs)
    assert response.status_code == status, response.text
    assert message in response.json()["message"]
    assert redis.calls == 0


def test_unknown_service_is_404_and_other_methods_405() -> None:
    app = _app(MemoryRedis({}))
    unknown = _call(app, "POST", "/v1/services/nope", json={"rows": []})
    assert unknown.status_code == 404
    assert unknown.json() == {
        "error": "unknown_service",
        "message": "unknown service 'nope'; known: three",
    }
    assert _call(app, "GET", "/v1/services/three").status_code == 405
    listed = _call(app, "GET", "/v1/services").json()
    assert [s["name"] for s in listed] == ["three"]


def test_a_service_needs_a_key_that_reads_every_one_of_its_views() -> None:
    app = _app(MemoryRedis({}), keys="all:*;some:card_txn,card_merchant")
    rows = {"rows": [{"card_id": "c", "merchant": "m", "amount": 1.0}]}
    assert _call(app, "POST", "/v1/services/three", json=rows).status_code == 401
    bearer = {"authorization": "Bearer some"}
    denied = _call(app, "POST", "/v1/services/three", json=rows, headers=bearer)
    assert denied.status_code == 403
    assert "card_txn_json" in denied.json()["message"]
    unknown = _call(app, "POST", "/v1/services/nope", json=rows, headers=bearer)
    assert unknown.status_code == 404
    allowed = {"authorization": "Bearer all"}
    assert _call(app, "POST", "/v1/services/three", json=rows, headers=allowed).status_code == 200
    # a view's scope covers its versions
    assert _call(app, "GET", "/v1/features/card_txn@1/c", headers=bearer).status_code == 200


@pytest.mark.parametrize(
    "view", ["card_txn@1", "card_txn%401", "card_txn@v1", "card_txn%40v1", "card_txn@01"]
)
def test_view_at_version_serves_that_version_beside_the_newest(view: str) -> None:
    as_of = _now_ms() - 1_000
    app = _app(MemoryRedis(_records(as_of)))
    old = _call(app, "GET", f"/v1/features/{view}/c1").json()
    assert old["view"] == "card_txn@1"
    assert old["features"] == dict(zip(CARD_TXN.layout().feature_names, TXN_VALUES, strict=True))
    batch = _call(app, "POST", f"/v1/features/{view}", json={"entities": ["c1"]}).json()
    assert batch["results"][0]["features"] == old["features"]
    newest = _call(app, "GET", "/v1/features/card_txn/c1").json()
    assert newest["features"] == dict(zip(V2.layout().feature_names, V2_VALUES, strict=True))
    assert newest["as_of"] == as_of + 1


def test_an_unregistered_version_is_404() -> None:
    app = _app(MemoryRedis({}))
    for path in ("/v1/features/card_txn@9/c1", "/v1/features/card_txn@x/c1"):
        response = _call(app, "GET", path)
        assert response.status_code == 404, path
        assert response.json()["error"] == "unknown_view"


def test_openapi_documents_each_service_and_versions_in_the_view_parameter() -> None:
    doc = _call(_app(MemoryRedis({})), "GET", "/openapi.json").json()
    route = doc["paths"]["/v1/services/three"]["post"]
    schema = route["requestBody"]["content"]["application/json"]["schema"]
    assert schema["properties"]["rows"]["items"]["required"] == ["card_id", "merchant", "amount"]
    one = doc["paths"]["/v1/features/{view}/{entity}"]["get"]["parameters"][0]
    assert "VIEW@N" in one["description"]
    assert "/v1/features/card_txn@1/{entity}" not in doc["paths"]
