"""Views keyed by several fields on a real uvicorn server over real Redis: records the sink's
writer stored under the encoded entity are served by path segments, by key objects in batches
(request order kept), through the Python client and ``freshet get --url``."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from click.testing import CliRunner
from http_servers import running_server

from freshet.cli import cli
from freshet.serving import Client, ServingError
from freshet.serving.app import FeatureApp
from freshet.serving.auth import ApiKeys
from freshet.serving.redis_link import RedisLink
from freshet.sinks.layout import FeatureColumn, ViewLayout, encode_entity
from freshet.sinks.redis_store import RedisFeatureWriter, connect
from freshet.sinks.rows import Row

CARD_MERCHANT = ViewLayout(
    "card_merchant",
    1,
    "card_id|merchant",
    (FeatureColumn("txn_count_5m", "int64"), FeatureColumn("amount_sum_1h", "float64")),
    3600,
    key_fields=("card_id", "merchant"),
    key_types=("string", "string"),
)
USER_STORE = ViewLayout(
    "user_store",
    1,
    "user_id|store",
    (FeatureColumn("visits", "int64"),),
    0,
    key_fields=("user_id", "store"),
    key_types=("int64", "string"),
)
LAYOUTS = {CARD_MERCHANT.name: CARD_MERCHANT, USER_STORE.name: USER_STORE}


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@pytest.fixture
def server_url(redis_url: str) -> Iterator[str]:
    app = FeatureApp(
        layouts=LAYOUTS,
        views_doc=[],
        redis_client=RedisLink(redis_url),
        api_keys=ApiKeys.parse(""),
    )
    with running_server(app) as url:
        yield url


def _write(redis_url: str, rows: list[Row]) -> None:
    client = connect(redis_url)
    try:
        RedisFeatureWriter(client, LAYOUTS).write(rows)
    finally:
        client.close()


KEYS = [("c1", "m1"), ("c1", "m2"), ("c|2", "m%7C"), ("a/b", "é€ x")]


def test_composite_keys_written_by_the_sink_are_served_by_segments_and_by_objects(
    redis_url: str, server_url: str
) -> None:
    as_of = _now_ms() - 1_000
    rows = [
        Row("card_merchant", encode_entity(k), as_of, (i, 1.5 * i), 0, i)
        for i, k in enumerate(KEYS)
    ]
    rows.append(Row("user_store", encode_entity(("42", "s1")), as_of, (9,), 0, 1))
    _write(redis_url, rows)
    with Client(server_url) as client:
        for i, (card, merchant) in enumerate(KEYS):
            got = client.get("card_merchant", (card, merchant))
            assert got["found"] is True
            assert got["entity"] == encode_entity((card, merchant))
            assert got["key"] == {"card_id": card, "merchant": merchant}
            assert got["features"] == {"txn_count_5m": i, "amount_sum_1h": 1.5 * i}
            by_object = client.get("card_merchant", {"merchant": merchant, "card_id": card})
            assert {**by_object, "age_ms": 0} == {**got, "age_ms": 0}
        wanted = [
            {"card_id": "c1", "merchant": "m2"},
            {"card_id": "nobody", "merchant": "m1"},
            encode_entity(KEYS[2]),
            {"card_id": "c1", "merchant": "m1"},
        ]
        many = client.get_many("card_merchant", wanted, features=["txn_count_5m"])
        assert [(r["entity"], r["found"], r["features"]) for r in many] == [
            ("c1|m2", True, {"txn_count_5m": 1}),
            ("nobody|m1", False, {"txn_count_5m": None}),
            (encode_entity(KEYS[2]), True, {"txn_count_5m": 2}),
            ("c1|m1", True, {"txn_count_5m": 0}),
        ]
        assert many[2]["key"] == {"card_id": "c|2", "merchant": "m%7C"}
        # a long key field: an int or digits, stored as its decimal digits
        for entity in ({"user_id": 42, "store": "s1"}, ("042", "s1")):
            got = client.get("user_store", entity)
            assert (got["entity"], got["key"], got["features"]) == (
                "42|s1",
                {"user_id": 42, "store": "s1"},
                {"visits": 9},
            )


def test_key_errors_reach_the_client_naming_the_key_fields(server_url: str) -> None:
    with Client(server_url) as client:
        with pytest.raises(ServingError) as info:
            client.get("card_merchant", "c1")
        assert info.value.status == 404
        assert "view 'card_merchant' is keyed by card_id, merchant" in info.value.message
        with pytest.raises(ServingError) as info:
            client.get_many("card_merchant", [{"card_id": "c1"}])
        assert info.value.status == 422
        assert "no 'merchant' in the key" in info.value.message


def test_freshet_get_url_takes_one_value_per_key_field(redis_url: str, server_url: str) -> None:
    _write(redis_url, [Row("card_merchant", "c1|m2", _now_ms(), (5, 2.5), 0, 1)])
    result = CliRunner().invoke(cli, ["get", "card_merchant", "c1", "m2", "--url", server_url])
    assert result.exit_code == 0, result.output
    assert "card_id=c1, merchant=m2" in " ".join(result.output.split())
    wrong = CliRunner().invoke(cli, ["get", "card_merchant", "c1", "--url", server_url])
    assert wrong.exit_code == 1
    assert "keyed by card_id, merchant" in wrong.output
