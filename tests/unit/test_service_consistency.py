"""Training and serving agree: for the same feature values and request fields, the endpoint
(``POST /v1/services/{name}`` over records in a Redis stand-in) and ``freshet historical
--service`` (an as-of join over a Parquet log holding the same values) return identical
features, derived ones included, for random inputs with nulls, zeros and extremes.

Both paths run :meth:`freshet.dsl.services.ServicePlan.derive`; this test is what keeps another
copy of the evaluation from creeping into either path unnoticed (types read back from JSON and
from Parquet, request fields coerced, null features)."""

from __future__ import annotations

import asyncio
import tempfile
import time
from typing import Any

import httpx
import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from freshet import FeatureService
from freshet.dsl.definitions import Aggregation, Entity, Feature, FeatureView, Source
from freshet.dsl.registry import Registry
from freshet.offline.services import service_historical
from freshet.serving.app import FeatureApp
from freshet.serving.auth import ApiKeys
from freshet.sinks.layout import encode_entity
from freshet.sinks.parquet_log import ParquetLogWriter
from freshet.sinks.redis_store import encode_record, record_key
from freshet.sinks.rows import Row

_SOURCE = {
    "topic": "transactions",
    "encoding": "avro",
    "schema": "transaction.avsc",
    "event_time_field": "ts",
}
ACCT = FeatureView(
    name="acct",
    version=1,
    entity=Entity("card", key="card_id"),
    source=Source(**_SOURCE),
    features=(
        Feature("cnt", Aggregation.COUNT, window="1h"),
        Feature("amount_sum", Aggregation.SUM, "amount", window="1h"),
        Feature("amount_mean", Aggregation.MEAN, "amount", window="1h"),
        Feature("merchant_last", Aggregation.LAST, "merchant"),
    ),
)
PAIR = FeatureView(
    name="pair",
    version=1,
    entity=Entity("pair", key=("card_id", "merchant")),
    source=ACCT.source,
    features=(
        Feature("cnt", Aggregation.COUNT, window="1h"),
        Feature("total", Aggregation.SUM, "amount", window="1h"),
    ),
)
SERVICE = FeatureService(
    name="score",
    features=("acct:*", "pair:*"),
    request={"amount": "float64", "n": "int64", "tag": "string"},
    derived={
        "ratio": "request.amount / acct.amount_mean",
        "per_pair": "pair.cnt // request.n",
        "rest": "acct.cnt % request.n",
        "same": "request.tag == acct.merchant_last",
        "mix": "coalesce(pair.total, 0.0) - acct.amount_sum * request.amount",
        "flag": "acct.cnt > 2 and request.amount > 0.0",
        "label": "upper(coalesce(acct.merchant_last, request.tag, 'none'))",
    },
)
PLAN = Registry([ACCT, PAIR]).add_service(SERVICE)
T0 = 1_714_521_600_000
CARDS = ["c1", "c2", "c|3"]
MERCHANTS = ["m1", "m|2"]

floats = st.one_of(
    st.none(),
    st.sampled_from([0.0, -0.0, 1.0, -1.5, 1e308, 5e-324]),
    st.floats(allow_nan=False, allow_infinity=False),
)
ints = st.one_of(
    st.none(),
    st.sampled_from([0, 1, -1, 2**63 - 1, -(2**63)]),
    st.integers(-(2**63), 2**63 - 1),
)
# The log keeps int64 feature values within ±2**53 (freshet.sinks.parquet_log, ample for counts).
counts = st.one_of(st.sampled_from([0, 1, 3, 2**53]), st.integers(0, 2**53))
texts = st.one_of(st.none(), st.sampled_from(["m1", "", "m|2"]), st.text(max_size=5))
acct_values = st.one_of(
    st.none(),  # no record: not found
    st.tuples(counts, floats.map(lambda f: 0.0 if f is None else f), floats, texts),
)
pair_values = st.one_of(st.none(), st.tuples(counts, floats.map(lambda f: 0.0 if f is None else f)))


def _clean(text: str | None) -> str | None:
    # Control characters never reach a log or a record (the decoder refuses them).
    return None if text is None else "".join(c for c in text if c.isprintable())


class MemoryRedis:
    def __init__(self, records: dict[bytes, bytes]) -> None:
        self.records = records
        self.calls = 0

    async def mget(self, keys: list[bytes]) -> list[bytes | None]:
        self.calls += 1
        return [self.records.get(k) for k in keys]

    async def ping(self) -> bool:
        return True


def _served(records: dict[bytes, bytes], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    redis = MemoryRedis(records)
    app = FeatureApp(
        layouts={}, views_doc=[], redis_client=redis, api_keys=ApiKeys.parse(""), services=[PLAN]
    )

    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post("/v1/services/score", json={"rows": rows})

    response = asyncio.run(run())
    assert response.status_code == 200, response.text
    assert redis.calls == 1
    results: list[dict[str, Any]] = response.json()["results"]
    return results


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    accts=st.fixed_dictionaries(dict.fromkeys(CARDS, acct_values)),
    pairs=st.fixed_dictionaries({(c, m): pair_values for c in CARDS for m in MERCHANTS}),
    requests=st.lists(
        st.tuples(st.sampled_from(CARDS), st.sampled_from(MERCHANTS), floats, ints, texts),
        min_size=1,
        max_size=8,
    ),
)
def test_the_endpoint_and_historical_return_identical_service_features(
    accts: dict[str, Any], pairs: dict[tuple[str, str], Any], requests: list[tuple[Any, ...]]
) -> None:
    accts = {c: v if v is None else (*v[:3], _clean(v[3])) for c, v in accts.items()}
    rows = [
        {"card_id": c, "merchant": m, "amount": a, "n": n, "tag": _clean(t)}
        for c, m, a, n, t in requests
    ]
    acct_layout, pair_layout = ACCT.layout(), PAIR.layout()
    as_of = time.time_ns() // 1_000_000 - 1_000
    records = {
        record_key(acct_layout, c): encode_record(as_of, 1, v)
        for c, v in accts.items()
        if v is not None
    }
    records.update(
        {
            record_key(pair_layout, encode_entity(k)): encode_record(as_of, 1, v)
            for k, v in pairs.items()
            if v is not None
        }
    )
    online = _served(records, rows)

    with tempfile.TemporaryDirectory() as root:
        for layout, entries in (
            (acct_layout, list(accts.items())),
            (pair_layout, [(encode_entity(k), v) for k, v in pairs.items()]),
        ):
            writer = ParquetLogWriter(root, layout, max_rows=1_000, max_age_s=3600)
            writer.write([Row(layout.name, e, T0, v, 0, 1) for e, v in entries if v is not None])
            writer.close()
        table = service_historical(
            root,
            pa.Table.from_pylist(
                [{**row, "timestamp": T0 + 1} for row in rows],
                schema=pa.schema(
                    [
                        ("card_id", pa.string()),
                        ("merchant", pa.string()),
                        ("amount", pa.float64()),
                        ("n", pa.int64()),
                        ("tag", pa.string()),
                        ("timestamp", pa.int64()),
                    ]
                ),
            ),
            PLAN,
        )
    offline = table.to_pylist()
    assert len(offline) == len(online) == len(rows)
    for served, trained in zip(online, offline, strict=True):
        assert list(served["features"]) == list(PLAN.columns)
        for column in PLAN.columns:
            a, b = served["features"][column], trained[column]
            assert type(a) is type(b), (column, a, b)
            assert a == b, (column, a, b)
            if isinstance(a, float):
                assert repr(a) == repr(b), (column, a, b)  # -0.0 is -0.0 on both paths
