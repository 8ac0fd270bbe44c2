"""Staleness at the edge, in process: ``valid_until`` in the record header, ``stale`` statuses,
``max_staleness_ms`` and the stale-serve counter, with the clock fixed by the test.

The rule under test is README "Staleness": a windowed value is ``stale`` once ``now`` is past
``valid_until + allowed lateness + grace``; lifetime features stay ``present``; a request's
``max_staleness_ms`` nulls windowed values more than that past ``valid_until``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from freshet.dsl.registry import get_view, views_json
from freshet.serving.app import FeatureApp
from freshet.serving.auth import ApiKeys
from freshet.sinks.layout import FeatureColumn, ViewLayout
from freshet.sinks.redis_store import (
    RedisFeatureReader,
    decode_record,
    encode_record,
    record_key,
    record_valid_until,
)
from freshet.sinks.settings import Settings, SettingsError

LAYOUT = get_view("card_txn").layout()
VALUES = (3, 152.5, 50.83, 100.0, "m_0012", 2)
NAMES = LAYOUT.feature_names
WINDOWED = {"txn_count_5m", "amount_sum_1h", "amount_mean_1h", "amount_max_24h",
            "merchant_distinct_24h"}  # fmt: skip
LATENESS = 5_000  # card_txn's allowed lateness
GRACE = 2_000
NOW = 1_800_000_000_000


class MemoryRedis:
    def __init__(self, records: dict[bytes, bytes]) -> None:
        self.records = records

    def mget(self, keys: list[bytes]) -> list[bytes | None]:
        return [self.records.get(k) for k in keys]


class AsyncMemoryRedis(MemoryRedis):
    async def mget(self, keys: list[bytes]) -> list[bytes | None]:  # type: ignore[override]
        return [self.records.get(k) for k in keys]

    async def ping(self) -> bool:
        return True


def reader(records: dict[str, bytes]) -> RedisFeatureReader:
    client = MemoryRedis({record_key(LAYOUT, e): r for e, r in records.items()})
    return RedisFeatureReader(
        client, {"card_txn": LAYOUT}, clock_ms=lambda: NOW, stale_grace_ms=GRACE
    )


def test_the_header_carries_valid_until_and_old_records_still_read() -> None:
    new = encode_record(NOW - 10, 7, VALUES, NOW + 90)
    assert len(new) - len(encode_record(NOW - 10, 7, VALUES)[24:]) == 24
    assert decode_record(new) == (NOW - 10, 7, list(VALUES))
    assert record_valid_until(new) == NOW + 90
    # A record of the 16-byte header freshet wrote before valid_until existed.
    import struct

    import orjson

    old = struct.pack(">qq", NOW - 10, 7) + orjson.dumps(VALUES)
    assert decode_record(old) == (NOW - 10, 7, list(VALUES))
    assert record_valid_until(old) == -1
    lookup = reader({"c": old}).get("card_txn", "c")
    assert lookup["valid_until"] is None
    assert lookup["features"] == dict(zip(NAMES, VALUES, strict=True))
    assert set(lookup["status"].values()) == {"present"}


@pytest.mark.parametrize(
    ("behind", "stale"),
    [
        (-60_000, False),  # valid_until a minute ahead
        (0, False),
        (LATENESS + GRACE, False),  # exactly at the bound: still present
        (LATENESS + GRACE + 1, True),
        (3_600_000, True),
    ],
)
def test_windowed_values_are_stale_past_valid_until_plus_lateness_plus_grace(
    behind: int, stale: bool
) -> None:
    valid_until = NOW - behind
    lookup = reader({"c": encode_record(valid_until - 1_000, 1, VALUES, valid_until)}).get(
        "card_txn", "c"
    )
    assert lookup["valid_until"] == valid_until
    assert lookup["features"] == dict(zip(NAMES, VALUES, strict=True))  # values kept
    want = {n: "stale" if stale and n in WINDOWED else "present" for n in NAMES}
    assert lookup["status"] == want


def test_no_valid_until_is_never_stale() -> None:
    lookup = reader({"c": encode_record(NOW - 86_400_000, 1, VALUES, -1)}).get("card_txn", "c")
    assert lookup["valid_until"] is None
    assert set(lookup["status"].values()) == {"present"}


def test_max_staleness_nulls_windowed_values_past_it_and_only_those() -> None:
    valid_until = NOW - 1_500  # within lateness + grace: present by default
    r = reader({"c": encode_record(valid_until - 10, 1, VALUES, valid_until)})
    assert set(r.get("card_txn", "c")["status"].values()) == {"present"}
    for limit, nulled in ((0, True), (1_499, True), (1_500, False), (60_000, False)):
        lookup = r.get_many("card_txn", ["c"], max_staleness_ms=limit)[0]
        want_values = {
            n: None if nulled and n in WINDOWED else v for n, v in zip(NAMES, VALUES, strict=True)
        }
        assert lookup["features"] == want_values, limit
        want_status = {n: "stale" if nulled and n in WINDOWED else "present" for n in NAMES}
        assert lookup["status"] == want_status, limit
    # A feature subset: only the named ones, the lifetime one untouched.
    lookup = r.get_many("card_txn", ["c"], ["merchant_last", "txn_count_5m"], max_staleness_ms=0)
    assert lookup[0]["features"] == {"merchant_last": "m_0012", "txn_count_5m": None}
    assert lookup[0]["status"] == {"merchant_last": "present", "txn_count_5m": "stale"}


def test_a_view_of_lifetime_features_only_is_never_stale() -> None:
    layout = ViewLayout("life", 1, "card_id", (FeatureColumn("n", "int64"),), 0, lateness_ms=0)
    client = MemoryRedis({record_key(layout, "c"): encode_record(1, 1, (5,), 2)})
    r = RedisFeatureReader(client, {"life": layout}, clock_ms=lambda: NOW, stale_grace_ms=0)
    lookup = r.get_many("life", ["c"], max_staleness_ms=0)[0]
    assert lookup["features"] == {"n": 5}
    assert lookup["status"] == {"n": "present"}


def _app(records: dict[str, bytes]) -> FeatureApp:
    app = FeatureApp(
        layouts={"card_txn": LAYOUT},
        views_doc=views_json(),
        redis_client=AsyncMemoryRedis({record_key(LAYOUT, e): r for e, r in records.items()}),
        api_keys=ApiKeys.parse(""),
        stale_grace_ms=GRACE,
    )
    app._reader._clock_ms = lambda: NOW  # the endpoint's clock, fixed
    return app


def _call(app: FeatureApp, method: str, path: str, **kwargs: Any) -> httpx.Response:
    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(run())


def test_the_endpoint_reports_stale_counts_it_and_takes_max_staleness_ms() -> None:
    stale_until = NOW - LATENESS - GRACE - 1
    app = _app({
        "old": encode_record(stale_until - 10, 1, VALUES, stale_until),
        "fresh": encode_record(NOW - 10, 1, VALUES, NOW + 100),
    })  # fmt: skip
    one = _call(app, "GET", "/v1/features/card_txn/old").json()
    assert one["valid_until"] == stale_until
    assert {n for n, s in one["status"].items() if s == "stale"} == WINDOWED
    nulled = _call(app, "GET", "/v1/features/card_txn/old?max_staleness_ms=0").json()
    assert {n for n, v in nulled["features"].items() if v is None} == WINDOWED
    batch = _call(
        app, "POST", "/v1/features/card_txn",
        json={"entities": ["fresh", "old"], "max_staleness_ms": 0},
    ).json()["results"]  # fmt: skip
    assert set(batch[0]["status"].values()) == {"present"}
    assert batch[0]["features"] == dict(zip(NAMES, VALUES, strict=True))
    assert {n for n, v in batch[1]["features"].items() if v is None} == WINDOWED
    metrics = _call(app, "GET", "/metrics").text
    assert 'freshet_lookups_total{result="stale",view="card_txn"} 3.0' in metrics
    assert 'freshet_lookups_total{result="hit",view="card_txn"} 1.0' in metrics


@pytest.mark.parametrize(
    "query", ["max_staleness_ms=-1", "max_staleness_ms=abc", "max_staleness_ms=86400001",
              "max_staleness_ms=1&max_staleness_ms=2", "max_staleness_ms="],
)  # fmt: skip
def test_a_bad_max_staleness_is_a_422_naming_it(query: str) -> None:
    response = _call(_app({}), "GET", f"/v1/features/card_txn/c?{query}")
    assert response.status_code == 422
    assert "max_staleness_ms" in response.json()["message"]
    bad_body = _call(
        _app({}), "POST", "/v1/features/card_txn", json={"entities": ["c"], "max_staleness_ms": 1.5}
    )
    assert bad_body.status_code == 422
    assert "max_staleness_ms" in bad_body.json()["message"]


def test_the_grace_is_a_setting() -> None:
    assert Settings.from_env({}).stale_grace_ms == 5000
    assert Settings.from_env({"FRESHET_STALE_GRACE_MS": "250"}).stale_grace_ms == 250
    with pytest.raises(SettingsError, match="FRESHET_STALE_GRACE_MS"):
        Settings.from_env({"FRESHET_STALE_GRACE_MS": "-3"})


def test_a_feature_service_reports_its_views_stale_values_and_nulls_them_on_request() -> None:
    from freshet.dsl.registry import Registry
    from freshet.dsl.services import FeatureService

    registry = Registry([get_view("card_txn")])
    plan = registry.add_service(
        FeatureService(
            name="s",
            features=("card_txn:txn_count_5m", "card_txn:merchant_last"),
            derived={"twice": "card_txn.txn_count_5m * 2"},
        )
    )
    stale_until = NOW - LATENESS - GRACE - 1
    app = FeatureApp(
        layouts={"card_txn": LAYOUT},
        views_doc=[],
        redis_client=AsyncMemoryRedis(
            {record_key(LAYOUT, "c"): encode_record(stale_until - 5, 1, VALUES, stale_until)}
        ),
        api_keys=ApiKeys.parse(""),
        services=[plan],
        stale_grace_ms=GRACE,
    )
    app._reader._clock_ms = lambda: NOW
    result = _call(app, "POST", "/v1/services/s", json={"rows": [{"card_id": "c"}]}).json()
    row = result["results"][0]
    assert row["features"] == {
        "card_txn__txn_count_5m": 3, "card_txn__merchant_last": "m_0012", "twice": 6,
    }  # fmt: skip
    assert row["status"] == {
        "card_txn__txn_count_5m": "stale", "card_txn__merchant_last": "present", "twice": "stale",
    }  # fmt: skip
    body = {"rows": [{"card_id": "c"}], "max_staleness_ms": 0}
    nulled = _call(app, "POST", "/v1/services/s", json=body).json()["results"][0]
    assert nulled["features"] == {
        "card_txn__txn_count_5m": None, "card_txn__merchant_last": "m_0012", "twice": None,
    }  # fmt: skip
    metrics = _call(app, "GET", "/metrics").text
    assert 'freshet_lookups_total{result="stale",view="card_txn"} 2.0' in metrics
