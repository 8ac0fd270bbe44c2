"""Property-based API test: schemathesis generates requests from ``/openapi.json`` and checks
the running endpoint (real uvicorn, real Redis holding demo records) never answers 5xx and
every response matches the document (status codes, content types, schemas)."""

from __future__ import annotations

import time
from typing import Any

import pytest
import schemathesis
from http_servers import running_server
from hypothesis import HealthCheck, given, settings
from schemathesis.config import SchemathesisConfig
from schemathesis.generation import GenerationMode

from freshet.dsl.registry import get_view
from freshet.serving.app import create_app
from freshet.sinks.redis_store import RedisFeatureWriter, connect
from freshet.sinks.rows import Row
from freshet.sinks.settings import Settings

CARD_TXN = get_view("card_txn").layout()
API_KEY = "k_schemathesis"
WITH_INPUTS = {"/v1/features/{view}/{entity}", "/v1/features/{view}"}
MAX_EXAMPLES = 40  # per operation and mode: ~1,000 requests in all, a few seconds


def _write_demo_records(redis_url: str) -> None:
    client = connect(redis_url)
    now = time.time_ns() // 1_000_000
    rows = [
        Row("card_txn", f"card_{i}", now - i * 1_000, (i, 1.5 * i, 1.5, 9.0, f"m_{i}", 1), 0, i)
        for i in range(20)
    ]
    RedisFeatureWriter(client, {"card_txn": CARD_TXN}).write(rows)
    client.close()


# schemathesis' own pytest integration (``from_fixture``) breaks on pytest 9 (it reads the
# removed ``Function._nodeid``), so each operation's strategy is driven with ``@given`` here.
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize("auth", ["open", "with-api-keys"])
def test_every_generated_request_gets_a_documented_non_5xx_answer(
    redis_url: str, auth: str, mode: GenerationMode
) -> None:
    _write_demo_records(redis_url)
    env = {"FRESHET_REDIS_URL": redis_url}
    auth_config: dict[str, Any] = {}
    if auth == "with-api-keys":
        env["FRESHET_API_KEYS"] = f"{API_KEY}:*"
        # Declared per security scheme, so the auth checks know which credentials are real.
        auth_config = {"openapi": {"bearer": {"bearer": API_KEY}, "apiKey": {"api_key": API_KEY}}}
    with running_server(create_app(Settings.from_env(env))) as url:
        config = SchemathesisConfig.from_dict(
            {
                "auth": auth_config,
                # 413 is this API's documented answer to an over-long batch.
                "checks": {
                    "negative_data_rejection": {
                        "expected-statuses": [400, 401, 403, 404, 405, 413, 422]
                    }
                },
            }
        )
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json", config=config)
        # POST /v1/ingest produces to Kafka: tests/integration/test_ingest_read_after_write.py
        # covers it.
        operations = [
            op
            for op in (result.ok() for result in schema.get_all_operations())
            if not op.path.startswith("/v1/ingest/")
        ]
        assert len(operations) == 7  # services: tests/integration/test_feature_services_stack.py
        for operation in operations:
            if mode is GenerationMode.NEGATIVE and operation.path not in WITH_INPUTS:
                continue  # nothing to make invalid

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=MAX_EXAMPLES,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def check(case: Any) -> None:
                case.call_and_validate(base_url=url)

            check()
