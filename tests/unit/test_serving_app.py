"""The endpoint's HTTP contract, in process: routes, status codes, errors, auth, batch order.

Redis is replaced by an in-memory ``mget`` holding records made with the store's own encoder
(no network here); ``tests/integration/test_serving.py`` runs the same paths on real Redis.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx
import orjson
import pytest
import redis.exceptions

from freshet.dsl.registry import get_view, views_json
from freshet.serving.app import MAX_BATCH, MAX_BODY_BYTES, FeatureApp
from freshet.serving.auth import ApiKeys
from freshet.sinks.redis_store import encode_record, record_key

LAYOUT = get_view("card_txn").layout()
LAYOUTS = {"card_txn": LAYOUT, "card_txn_json": get_view("card_txn_json").layout()}
VALUES = (3, 152.5, 50.83, 100.0, "m_0012", 2)


class MemoryRedis:
    """Answers ``mget``/``ping`` from a dict; ``down=True`` makes it fail like a dead link."""

    def __init__(self, records: dict[bytes, bytes], *, down: bool = False) -> None:
        self.records = records
        self.down = down
        self.calls = 0

    async def mget(self, keys: list[bytes]) -> list[bytes | None]:
        self.calls += 1
        if self.down:
            raise redis.exceptions.ConnectionError("connection refused")
        return [self.records.get(k) for k in keys]

    async def ping(self) -> bool:
        if self.down:
            raise redis.exceptions.ConnectionError("connection refused")
        return True


def _store(entities: dict[str, tuple[Any, ...]], as_of: int) -> MemoryRedis:
    return MemoryRedis(
        {record_key(LAYOUT, e): encode_record(as_of, 1, v) for e, v in entities.items()}
    )


def _app(redis_client: Any = None, keys: str = "", **kwargs: Any) -> FeatureApp:
    return FeatureApp(
        layouts=LAYOUTS,
        views_doc=views_json(),
        redis_client=redis_client or MemoryRedis({}),
        api_keys=ApiKeys.parse(keys),
        **kwargs,
    )


def _call(app: FeatureApp, method: str, path: str, **kwargs: Any) -> httpx.Response:
    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(run())


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def test_single_lookup_returns_the_stored_values_with_their_age() -> None:
    as_of = _now_ms() - 1_500
    response = _call(_app(_store({"card_1": VALUES}, as_of)), "GET", "/v1/features/card_txn/card_1")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["view"] == "card_txn"
    assert body["entity"] == "card_1"
    assert body["found"] is True
    assert body["as_of"] == as_of
    assert 1_500 <= body["age_ms"] < 60_000
    assert body["features"] == dict(zip(LAYOUT.feature_names, VALUES, strict=True))
    assert set(body["status"].values()) == {"present"}


def test_unknown_entity_is_found_false_with_not_found_status() -> None:
    body = _call(_app(), "GET", "/v1/features/card_txn/nobody").json()
    assert body["found"] is False
    assert body["as_of"] is None
    assert body["age_ms"] is None
    assert set(body["features"].values()) == {None}
    assert set(body["status"].values()) == {"not_found"}


def test_features_query_selects_and_orders_features() -> None:
    app = _app(_store({"c": VALUES}, _now_ms()))
    body = _call(app, "GET", "/v1/features/card_txn/c?features=merchant_last,txn_count_5m").json()
    assert list(body["features"].items()) == [("merchant_last", "m_0012"), ("txn_count_5m", 3)]


def test_unknown_view_is_404_naming_the_known_views() -> None:
    for method, path, kwargs in [
        ("GET", "/v1/features/card_tx/c", {}),
        ("POST", "/v1/features/card_tx", {"json": {"entities": ["c"]}}),
    ]:
        response = _call(_app(), method, path, **kwargs)
        assert response.status_code == 404
        assert response.json() == {
            "error": "unknown_view",
            "message": "unknown view 'card_tx'; known: card_txn, card_txn_json",
        }


def test_unknown_features_are_422_naming_the_known_ones() -> None:
    response = _call(_app(), "GET", "/v1/features/card_txn/c?features=txn_count_5m,nope")
    assert response.status_code == 422
    assert "'nope'" in response.json()["message"]
    assert "known: txn_count_5m, amount_sum_1h" in response.json()["message"]
    batch = _call(
        _app(), "POST", "/v1/features/card_txn", json={"entities": ["c"], "features": ["zz"]}
    )
    assert batch.status_code == 422
    assert "'zz'" in batch.json()["message"]


def test_batch_returns_one_lookup_per_entity_in_request_order() -> None:
    store = _store({"a": VALUES, "b": (9, 1.0, 1.0, 1.0, "m_9", 1)}, _now_ms())
    response = _call(
        _app(store),
        "POST",
        "/v1/features/card_txn",
        json={"entities": ["b", "zz", "a", "b"], "features": ["txn_count_5m"]},
    )
    assert response.status_code == 200
    body = response.json()
    assert body["view"] == "card_txn"
    assert [(r["entity"], r["found"], r["features"]) for r in body["results"]] == [
        ("b", True, {"txn_count_5m": 9}),
        ("zz", False, {"txn_count_5m": None}),
        ("a", True, {"txn_count_5m": 3}),
        ("b", True, {"txn_count_5m": 9}),
    ]
    assert store.calls == 1  # one Redis round trip for the whole batch


def test_batches_over_the_maximum_are_413() -> None:
    response = _call(
        _app(),
        "POST",
        "/v1/features/card_txn",
        json={"entities": [str(i) for i in range(MAX_BATCH + 1)]},
    )
    assert response.status_code == 413
    assert response.json()["message"] == "1001 entities in one request; the maximum is 1000"
    assert _call(_app(), "POST", "/v1/features/card_txn", json={"entities": ["x"] * MAX_BATCH})


def test_bodies_over_the_byte_limit_are_413() -> None:
    body = b'{"entities": ["' + b"x" * MAX_BODY_BYTES + b'"]}'
    assert _call(_app(), "POST", "/v1/features/card_txn", content=body).status_code == 413


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"", 400, "not valid JSON"),
        (b"[1, 2]", 422, '{"entities": [...]}'),
        (b'{"entity": ["a"]}', 422, "unknown field(s) 'entity'"),
        (b'{"entities": "a"}', 422, '"entities" must be a list'),
        (b'{"entities": ["a", null]}', 422, "entities[1] is None"),
        (b'{"entities": [true]}', 422, "entities[0] is True"),
        (b'{"entities": [42]}', 422, "entities[0] is 42; entities are strings"),
        (b'{"entities": ["a"], "features": []}', 422, '"features" must be a non-empty list'),
        (b'{"entities": ["a"], "features": "txn_count_5m"}', 422, '"features" must be'),
    ],
)
def test_malformed_batch_bodies_get_a_message_and_no_lookup(
    body: bytes, status: int, fragment: str
) -> None:
    store = MemoryRedis({})
    response = _call(_app(store), "POST", "/v1/features/card_txn", content=body)
    assert response.status_code == status
    assert fragment in response.json()["message"]
    assert store.calls == 0


def test_wrong_methods_are_405_with_allow() -> None:
    response = _call(_app(), "DELETE", "/v1/features/card_txn/c")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET"
    assert _call(_app(), "GET", "/v1/features/card_txn").headers["allow"] == "POST"


def test_unknown_paths_are_404() -> None:
    response = _call(_app(), "GET", "/v2/features/card_txn/c")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


def test_redis_down_is_503_with_retry_after() -> None:
    app = _app(MemoryRedis({}, down=True))
    for method, path, kwargs in [
        ("GET", "/v1/features/card_txn/c", {}),
        ("POST", "/v1/features/card_txn", {"json": {"entities": ["c"]}}),
        ("GET", "/readyz", {}),
    ]:
        response = _call(app, method, path, **kwargs)
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert response.json()["error"] == "unavailable"
    assert _call(app, "GET", "/healthz").status_code == 200  # the process itself is fine


def test_unexpected_errors_are_500_without_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(MemoryRedis):
        async def mget(self, keys: list[bytes]) -> list[bytes | None]:
            raise ZeroDivisionError("secret internals")

    with caplog.at_level(logging.ERROR, logger="freshet.serving.app"):
        response = _call(_app(Broken({})), "GET", "/v1/features/card_txn/c")
    assert response.status_code == 500
    assert response.json() == {"error": "internal", "message": "internal error; see the server log"}
    assert "secret internals" not in response.text
    assert "ZeroDivisionError" in caplog.text  # but the server log has it


def test_entities_are_opaque_text_and_cannot_reach_other_keys() -> None:
    entity = "a/b:{c}é"
    store = _store({entity: VALUES, "a": (0, 0.0, 0.0, 0.0, "victim", 0)}, _now_ms())
    response = _call(_app(store), "GET", "/v1/features/card_txn/a%2Fb%3A%7Bc%7D%C3%A9")
    assert response.status_code == 200
    body = response.json()
    assert body["found"] is True
    assert body["features"]["merchant_last"] == "m_0012"
    assert body["entity"] == entity


@pytest.mark.parametrize("path_entity", ["a%FFb", "a%00b", "a%0A%0Db", "a%1B%5B2J"])
def test_entity_ids_with_control_characters_or_non_utf8_bytes_are_a_422(path_entity: str) -> None:
    response = _call(_app(), "GET", f"/v1/features/card_txn/{path_entity}")
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_request"
    assert "without control characters" in response.json()["message"]


def test_views_lists_the_registry() -> None:
    response = _call(_app(), "GET", "/v1/views")
    assert response.status_code == 200
    assert response.json() == orjson.loads(orjson.dumps(views_json()))


def test_openapi_documents_both_lookups_and_the_error_shape() -> None:
    doc = _call(_app(), "GET", "/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    assert set(doc["paths"]) >= {"/v1/features/{view}/{entity}", "/v1/features/{view}"}
    post = doc["paths"]["/v1/features/{view}"]["post"]
    assert set(post["responses"]) >= {"200", "400", "404", "413", "422", "503"}
    schemas = doc["components"]["schemas"]
    assert schemas["BatchRequest"]["properties"]["entities"]["maxItems"] == MAX_BATCH
    assert set(schemas["Lookup"]["required"]) == {
        "view", "entity", "found", "as_of", "valid_until", "age_ms", "features", "status",
    }  # fmt: skip
    assert "securitySchemes" not in doc["components"]


class TestApiKeys:
    KEYS = "k_card:card_txn;k_all:*"

    def test_no_key_is_401_with_www_authenticate(self) -> None:
        response = _call(_app(keys=self.KEYS), "GET", "/v1/features/card_txn/c")
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json()["message"] == "missing API key"

    def test_wrong_key_is_401(self) -> None:
        response = _call(
            _app(keys=self.KEYS),
            "GET",
            "/v1/features/card_txn/c",
            headers={"authorization": "Bearer k_nope"},
        )
        assert response.status_code == 401
        assert "k_nope" not in response.text

    def test_key_outside_its_scope_is_403(self) -> None:
        response = _call(
            _app(keys=self.KEYS),
            "POST",
            "/v1/features/card_txn_json",
            json={"entities": ["c"]},
            headers={"x-api-key": "k_card"},
        )
        assert response.status_code == 403
        assert "k_card" not in response.text

    def test_keys_in_scope_read(self) -> None:
        app = _app(keys=self.KEYS)
        for key, view in [("k_card", "card_txn"), ("k_all", "card_txn_json")]:
            response = _call(
                app, "GET", f"/v1/features/{view}/c", headers={"authorization": f"Bearer {key}"}
            )
            assert response.status_code == 200

    def test_unknown_view_with_a_valid_key_is_404_and_without_is_401(self) -> None:
        app = _app(keys=self.KEYS)
        assert _call(app, "GET", "/v1/features/zz/c").status_code == 401
        assert (
            _call(app, "GET", "/v1/features/zz/c", headers={"x-api-key": "k_card"}).status_code
            == 404
        )

    def test_views_need_a_key_but_probes_and_metrics_do_not(self) -> None:
        app = _app(keys=self.KEYS)
        assert _call(app, "GET", "/v1/views").status_code == 401
        assert _call(app, "GET", "/v1/views", headers={"x-api-key": "k_card"}).status_code == 200
        for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
            assert _call(app, "GET", path).status_code == 200

    def test_openapi_declares_the_security_schemes(self) -> None:
        doc = _call(_app(keys=self.KEYS), "GET", "/openapi.json").json()
        assert set(doc["components"]["securitySchemes"]) == {"bearer", "apiKey"}
        assert "401" in doc["paths"]["/v1/features/{view}/{entity}"]["get"]["responses"]


def test_metrics_count_requests_per_route_view_and_status() -> None:
    app = _app(_store({"a": VALUES}, _now_ms()))
    _call(app, "GET", "/v1/features/card_txn/a")
    _call(app, "GET", "/v1/features/card_txn/missing")
    _call(app, "GET", "/v1/features/unknown_view/a")
    text = _call(app, "GET", "/metrics").text
    assert (
        'freshet_http_requests_total{route="/v1/features/{view}/{entity}",status="200",'
        'view="card_txn"} 2.0' in text
    )
    assert 'status="404",view="-"} 1.0' in text
    assert 'freshet_lookups_total{result="hit",view="card_txn"} 1.0' in text
    assert 'freshet_lookups_total{result="miss",view="card_txn"} 1.0' in text
    assert (
        'freshet_http_request_seconds_bucket{le="0.001",route="/v1/features/{view}/{entity}"'
        in text
    )


def test_an_empty_entity_id_in_a_batch_is_a_422() -> None:
    response = _call(_app(), "POST", "/v1/features/card_txn", json={"entities": ["c1", ""]})
    assert response.status_code == 422
    assert "non-empty" in response.json()["message"]
