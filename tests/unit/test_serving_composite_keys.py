"""The endpoint for views keyed by several fields: one path segment per key field, batches
of key objects in request order, the encoded id and the key echoed, 404/422 naming the key
fields; and freshet.serving.keys, the rule they share with ``freshet get``."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import orjson
import pytest
from click.testing import CliRunner

import freshet.dsl.registry
import freshet.sinks.redis_store
from freshet.cli import cli
from freshet.serving.app import FeatureApp
from freshet.serving.auth import ApiKeys
from freshet.serving.client import Client, to_pandas
from freshet.serving.keys import EntityKeyError, composite_key
from freshet.serving.openapi import build_openapi
from freshet.sinks.layout import FeatureColumn, ViewLayout, encode_entity
from freshet.sinks.redis_store import encode_record, record_key

FEATURES = (FeatureColumn("txn_count_5m", "int64"), FeatureColumn("merchant_last", "string"))
CARD_MERCHANT = ViewLayout(
    "card_merchant",
    1,
    "card_id|merchant",
    FEATURES,
    0,
    key_fields=("card_id", "merchant"),
    key_types=("string", "string"),
)
USER_STORE = ViewLayout(
    "user_store",
    1,
    "user_id|store",
    FEATURES,
    0,
    key_fields=("user_id", "store"),
    key_types=("int64", "string"),
)
CARD = ViewLayout("card", 1, "card_id", FEATURES, 0, key_fields=("card_id",))
LAYOUTS = {lay.name: lay for lay in (CARD_MERCHANT, USER_STORE, CARD)}


class MemoryRedis:
    def __init__(self, records: dict[bytes, bytes]) -> None:
        self.records = records

    async def mget(self, keys: list[bytes]) -> list[bytes | None]:
        return [self.records.get(k) for k in keys]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


AS_OF = _now_ms() - 1_000
STORED = {
    (CARD_MERCHANT, ("c1", "m2")): (1, "m2"),
    (CARD_MERCHANT, ("c|1", "a/b%")): (2, "weird"),
    (USER_STORE, ("7", "s1")): (3, "s1"),
    (CARD, ("c1",)): (4, "plain"),
}


def _app() -> FeatureApp:
    records = {
        record_key(layout, encode_entity(parts)): encode_record(AS_OF, 1, values)
        for (layout, parts), values in STORED.items()
    }
    return FeatureApp(
        layouts=LAYOUTS, views_doc=[], redis_client=MemoryRedis(records), api_keys=ApiKeys.parse("")
    )


def _call(method: str, path: str, **kwargs: Any) -> httpx.Response:
    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(run())


def test_a_path_with_one_segment_per_key_field_returns_the_entity_and_its_key() -> None:
    response = _call("GET", "/v1/features/card_merchant/c1/m2")
    assert response.status_code == 200
    body = response.json()
    assert (body["entity"], body["key"], body["found"]) == (
        "c1|m2",
        {"card_id": "c1", "merchant": "m2"},
        True,
    )
    assert body["features"] == {"txn_count_5m": 1, "merchant_last": "m2"}


def test_key_values_are_percent_decoded_per_segment_and_may_hold_the_separator() -> None:
    body = _call("GET", "/v1/features/card_merchant/c%7C1/a%2Fb%25").json()
    assert body["key"] == {"card_id": "c|1", "merchant": "a/b%"}
    assert body["entity"] == "c%7C1|a/b%25"
    assert body["features"]["txn_count_5m"] == 2


def test_long_key_fields_take_digits_and_answer_with_integers() -> None:
    for path in ("/v1/features/user_store/7/s1", "/v1/features/user_store/007/s1"):
        body = _call("GET", path).json()
        assert (body["entity"], body["key"], body["found"]) == (
            "7|s1",
            {"user_id": 7, "store": "s1"},
            True,
        )
    response = _call("GET", "/v1/features/user_store/u7/s1")
    assert response.status_code == 422
    assert "key field 'user_id' is 'u7'; it is a long" in response.json()["message"]


@pytest.mark.parametrize(
    "path",
    [
        "/v1/features/card_merchant/c1",
        "/v1/features/card_merchant/c1/m2/x",
        "/v1/features/card/c1/m2",
    ],
)
def test_a_wrong_number_of_key_segments_is_404_naming_the_key_fields(path: str) -> None:
    response = _call("GET", path)
    assert response.status_code == 404
    body = response.json()
    assert body["error"] == "not_found"
    view = path.split("/")[3]
    assert f"view {view!r} is keyed by {', '.join(LAYOUTS[view].keys)}" in body["message"]


def test_more_segments_than_any_key_has_is_no_such_path() -> None:
    response = _call("GET", "/v1/features/card_merchant/a/b/c/d/e")
    assert response.status_code == 404
    assert "no such path" in response.json()["message"]


def test_each_key_value_follows_the_entity_rule() -> None:
    for path, said in [
        ("/v1/features/card_merchant/c1/%01", "key field 'merchant': entity ids are UTF-8"),
        ("/v1/features/card_merchant/%FF/m", "key field 'card_id': entity ids are UTF-8"),
        (f"/v1/features/card_merchant/{'x' * 1025}/m", "key field 'card_id': entity of 1025"),
        ("/v1/features/card_merchant//m", "key field 'card_id': entity ids are non-empty"),
    ]:
        response = _call("GET", path)
        assert response.status_code == 422, path
        assert said in response.json()["message"]


def test_one_field_views_answer_exactly_as_before() -> None:
    body = _call("GET", "/v1/features/card/c1").json()
    assert "key" not in body
    assert (body["entity"], body["features"]["txn_count_5m"]) == ("c1", 4)
    # an id holding '|' is just an id for a one-field view
    assert _call("GET", "/v1/features/card/c1%7Cm2").json()["found"] is False


def test_batches_of_key_objects_are_answered_in_request_order() -> None:
    entities = [
        {"merchant": "m2", "card_id": "c1"},
        {"card_id": "nobody", "merchant": "m2"},
        "c%7C1|a/b%25",
        {"card_id": "c1", "merchant": "m2"},
    ]
    response = _call("POST", "/v1/features/card_merchant", json={"entities": entities})
    assert response.status_code == 200
    results = response.json()["results"]
    assert [(r["entity"], r["key"], r["found"]) for r in results] == [
        ("c1|m2", {"card_id": "c1", "merchant": "m2"}, True),
        ("nobody|m2", {"card_id": "nobody", "merchant": "m2"}, False),
        ("c%7C1|a/b%25", {"card_id": "c|1", "merchant": "a/b%"}, True),
        ("c1|m2", {"card_id": "c1", "merchant": "m2"}, True),
    ]


def test_long_key_fields_in_a_batch_take_integers_and_digit_strings() -> None:
    entities = [{"user_id": 7, "store": "s1"}, {"user_id": "7", "store": "s1"}, "007|s1"]
    results = _call("POST", "/v1/features/user_store", json={"entities": entities}).json()
    assert [(r["entity"], r["key"]["user_id"], r["found"]) for r in results["results"]] == [
        ("7|s1", 7, True)
    ] * 3


@pytest.mark.parametrize(
    ("view", "entity", "said"),
    [
        ("card_merchant", {"card_id": "c1"}, "entities[1]: no 'merchant' in the key"),
        ("card_merchant", {"card_id": "c1", "merchant": "m", "x": "1"}, "unknown 'x'"),
        ("card_merchant", {"card_id": "c1", "merchant": 5}, "key field 'merchant' is 5"),
        ("card_merchant", {"card_id": "c1", "merchant": None}, "key field 'merchant' is None"),
        ("card_merchant", "c1", "entities[1]: entity 'c1' is not a key of 2 fields"),
        ("card_merchant", "a|b|c", "is not a key of 2 fields"),
        ("card_merchant", 42, "entities[1] is 42; entities are objects of key fields"),
        ("card_merchant", {"card_id": "c1", "merchant": "\x00"}, "key field 'merchant': entity"),
        ("user_store", {"user_id": True, "store": "s"}, "key field 'user_id' is True"),
        ("user_store", {"user_id": 2**63, "store": "s"}, "within 64 bits"),
        ("user_store", {"user_id": "1e3", "store": "s"}, "key field 'user_id' is '1e3'"),
        ("card", 42, "entities[1] is 42; entities are strings"),
        ("card", {"user": "x"}, "entities[1]: no 'card_id' and unknown 'user' in the key"),
    ],
)
def test_bad_batch_entities_are_422_naming_the_entity_and_the_key_field(
    view: str, entity: Any, said: str
) -> None:
    good = {"card_merchant": "a|b", "user_store": "1|s", "card": "c"}[view]
    response = _call("POST", f"/v1/features/{view}", json={"entities": [good, entity]})
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "invalid_request"
    assert said in body["message"]
    assert f"keyed by {', '.join(LAYOUTS[view].keys)}" in body["message"]


def test_one_field_views_also_take_objects_of_their_key_field() -> None:
    entities = ["c1", {"card_id": "c1"}, "nobody"]
    results = _call("POST", "/v1/features/card", json={"entities": entities}).json()["results"]
    assert [(r["entity"], r["found"], "key" in r) for r in results] == [
        ("c1", True, False),
        ("c1", True, False),
        ("nobody", False, False),
    ]


def test_features_are_selected_for_composite_lookups_too() -> None:
    body = _call("GET", "/v1/features/card_merchant/c1/m2?features=merchant_last").json()
    assert body["features"] == {"merchant_last": "m2"}


def test_openapi_documents_each_composite_views_paths_and_key_schema() -> None:
    doc = build_openapi(LAYOUTS, max_batch=1000, auth=False, version="0")
    get = doc["paths"]["/v1/features/user_store/{user_id}/{store}"]["get"]
    assert [p["name"] for p in get["parameters"]] == [
        "user_id", "store", "features", "max_staleness_ms",
    ]  # fmt: skip
    assert get["parameters"][0]["schema"]["type"] == "integer"
    assert "keyed by user_id, store" in get["responses"]["404"]["description"] + get["summary"]
    post = doc["paths"]["/v1/features/card_merchant"]["post"]
    assert post["operationId"] == "getFeaturesBatch_card_merchant"
    key = doc["components"]["schemas"]["Key_card_merchant"]
    assert key["required"] == ["card_id", "merchant"]
    assert key["additionalProperties"] is False
    assert "key" in doc["components"]["schemas"]["Lookup"]["properties"]
    # the templated paths describe the one-field views only
    view_param = doc["paths"]["/v1/features/{view}/{entity}"]["get"]["parameters"][0]
    assert view_param["schema"]["example"] == "card"


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (["c1", "m2"], ("c1|m2", {"card_id": "c1", "merchant": "m2"})),
        ({"card_id": "a|b", "merchant": "%"}, ("a%7Cb|%25", {"card_id": "a|b", "merchant": "%"})),
        ("a%7Cb|%25", ("a%7Cb|%25", {"card_id": "a|b", "merchant": "%"})),
    ],
)
def test_composite_key_takes_values_objects_or_encoded_ids(
    key: Any, expected: tuple[str, dict[str, Any]]
) -> None:
    assert composite_key(CARD_MERCHANT, key) == expected


def test_composite_key_refuses_a_wrong_number_of_values() -> None:
    with pytest.raises(EntityKeyError, match=r"3 key value.*keyed by card_id, merchant"):
        composite_key(CARD_MERCHANT, ["a", "b", "c"])


# ---------------------------------------------------------------------------------------------
# The client and `freshet get`


def _recording_client() -> tuple[Client, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        lookup = {"view": "card_merchant", "entity": "c1|m2", "key": {"card_id": "c1"}}
        if request.method == "POST":
            return httpx.Response(200, json={"view": "card_merchant", "results": [lookup]})
        return httpx.Response(200, json=lookup)

    return Client("http://test", transport=httpx.MockTransport(answer)), seen


def test_the_client_sends_key_values_as_path_segments_and_key_objects_as_a_batch() -> None:
    client, seen = _recording_client()
    with client:
        client.get("card_merchant", ("c|1", "a/b"), features=["txn_count_5m"])
        client.get("card_merchant", {"card_id": "c1", "merchant": "m2"})
        client.get_many("user_store", [{"user_id": 7, "store": "s"}, "8|s"])
        client.get("card", "c1")
    assert seen[0].method == "GET"
    assert seen[0].url.raw_path == b"/v1/features/card_merchant/c%7C1/a%2Fb?features=txn_count_5m"
    assert (seen[1].method, seen[1].url.path) == ("POST", "/v1/features/card_merchant")
    assert orjson.loads(seen[1].content) == {"entities": [{"card_id": "c1", "merchant": "m2"}]}
    assert orjson.loads(seen[2].content) == {"entities": [{"user_id": 7, "store": "s"}, "8|s"]}
    assert seen[3].url.raw_path == b"/v1/features/card/c1"


def test_to_pandas_has_a_column_per_key_field() -> None:
    pytest.importorskip("pandas")
    lookup = {
        "view": "card_merchant",
        "entity": "c1|m2",
        "key": {"card_id": "c1", "merchant": "m2"},
        "found": True,
        "as_of": 1,
        "age_ms": 2,
        "features": {"n": 3},
    }
    frame = to_pandas([lookup])
    assert list(frame.columns) == ["entity", "card_id", "merchant", "found", "as_of", "age_ms", "n"]


class _SyncRedis:
    def __init__(self, records: dict[bytes, bytes]) -> None:
        self.records = records
        self.calls = 0

    def mget(self, keys: list[bytes]) -> list[bytes | None]:
        self.calls += 1
        return [self.records.get(k) for k in keys]

    def close(self) -> None:
        pass


class _View:
    def __init__(self, layout: ViewLayout) -> None:
        self._layout = layout

    def layout(self) -> ViewLayout:
        return self._layout


def _cli_get(monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[int, str, _SyncRedis]:
    records = {
        record_key(layout, encode_entity(parts)): encode_record(AS_OF, 1, values)
        for (layout, parts), values in STORED.items()
    }
    store = _SyncRedis(records)
    monkeypatch.setattr(freshet.sinks.redis_store, "connect", lambda _url: store)
    monkeypatch.setattr(freshet.dsl.registry, "get_view", lambda name: _View(LAYOUTS[name]))
    result = CliRunner().invoke(cli, ["get", *args])
    return result.exit_code, result.output, store


def test_freshet_get_takes_one_value_per_key_field_in_key_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code, output, _ = _cli_get(monkeypatch, "user_store", "007", "s1", "--json")
    assert code == 0, output
    lookup = orjson.loads(output)
    assert (lookup["entity"], lookup["key"], lookup["found"]) == (
        "7|s1",
        {"user_id": 7, "store": "s1"},
        True,
    )
    code, output, _ = _cli_get(monkeypatch, "card_merchant", "c1", "m2")
    assert code == 0, output
    assert "card_id=c1, merchant=m2" in " ".join(output.split())


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("card_merchant", "c1"), "1 key value(s) given; view 'card_merchant' is keyed by"),
        (("user_store", "x", "s1"), "key field 'user_id' is 'x'; it is a long"),
        (("card", "c1", "m2"), "2 values given; view 'card' is keyed by card_id"),
    ],
)
def test_freshet_get_refuses_values_that_do_not_fit_the_key(
    monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...], said: str
) -> None:
    code, output, store = _cli_get(monkeypatch, *args)
    assert code == 2
    assert "Invalid value for ENTITY" in output
    assert said in " ".join(output.split())
    assert store.calls == 0


def test_freshet_get_help_says_how_to_give_a_composite_key() -> None:
    output = " ".join(CliRunner().invoke(cli, ["get", "--help"]).output.split())
    assert "one value per key field, in the order the view declares its key" in output
