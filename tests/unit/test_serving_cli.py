"""``freshet serve`` refuses bad settings before starting; ``freshet get`` names unknown views
and refuses exactly the entity ids the endpoint refuses, with the endpoint's message."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import quote

import httpx
import orjson
import pytest
from click.testing import CliRunner

import freshet.sinks.redis_store
from freshet.cli import cli
from freshet.dsl.registry import get_view, views_json
from freshet.serving.app import FeatureApp
from freshet.serving.auth import ApiKeys
from freshet.sinks.layout import MAX_ENTITY_LENGTH
from freshet.sinks.redis_store import encode_record, record_key


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FRESHET_REDIS_URL": "http://127.0.0.1:6379"}, "unsupported Redis URL scheme 'http'"),
        ({"FRESHET_API_KEYS": "sekrit"}, "FRESHET_API_KEYS entry 1 is not KEY:SCOPE"),
    ],
)
def test_serve_rejects_bad_settings_before_binding_a_port(
    env: dict[str, str], message: str
) -> None:
    result = CliRunner().invoke(cli, ["serve", "--port", "1"], env=env)
    assert result.exit_code == 2
    assert message in result.output
    assert "sekrit" not in result.output


def test_get_names_the_known_views_for_an_unknown_one() -> None:
    result = CliRunner().invoke(cli, ["get", "nope", "card_1"])
    assert result.exit_code == 2
    assert "unknown view 'nope'; known: card_txn, card_txn_json" in result.output


def test_serve_and_get_document_their_options() -> None:
    serve = CliRunner().invoke(cli, ["serve", "--help"])
    assert "--workers" in serve.output
    assert "granian" in serve.output
    get = CliRunner().invoke(cli, ["get", "--help"])
    assert "--json" in get.output
    assert "--url" in get.output


@pytest.mark.parametrize("url", ["redis://127.0.0.1:1/0", "redis://127.0.0.1:1/0?cluster=true"])
def test_get_says_redis_is_unavailable_without_a_traceback(url: str) -> None:
    result = CliRunner().invoke(cli, ["get", "card_txn", "card_1"], env={"FRESHET_REDIS_URL": url})
    assert result.exit_code == 1
    assert "Redis at FRESHET_REDIS_URL is unavailable" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


_LAYOUT = get_view("card_txn").layout()
_VALUES = (3, 152.5, 50.83, 100.0, "m_0012", 2)


class _SyncRedis:
    """What ``freshet get`` reads through: ``mget`` from a dict, counting the calls."""

    def __init__(self, records: dict[bytes, bytes]) -> None:
        self.records = records
        self.calls = 0

    def mget(self, keys: list[bytes]) -> list[bytes | None]:
        self.calls += 1
        return [self.records.get(k) for k in keys]

    def close(self) -> None:
        pass


class _AsyncRedis:
    """What the endpoint reads through: the same dict, behind ``await``."""

    def __init__(self, records: dict[bytes, bytes]) -> None:
        self.records = records

    async def mget(self, keys: list[bytes]) -> list[bytes | None]:
        return [self.records.get(k) for k in keys]


def _endpoint(records: dict[bytes, bytes], entity: str) -> httpx.Response:
    """The endpoint's answer for ``entity``: ``GET`` with its bytes percent-encoded in the
    path, or (an empty id has no path) a one-entity batch."""
    app = FeatureApp(
        layouts={_LAYOUT.name: _LAYOUT},
        views_doc=views_json(),
        redis_client=_AsyncRedis(records),
        api_keys=ApiKeys.parse(""),
    )

    async def call() -> httpx.Response:
        # FeatureApp types the scope as a dict; httpx declares a MutableMapping.
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            if not entity:
                return await client.post("/v1/features/card_txn", json={"entities": [entity]})
            path = quote(entity.encode("utf-8", "surrogateescape"), safe="")
            return await client.get(f"/v1/features/card_txn/{path}")

    return asyncio.run(call())


def _cli_get(monkeypatch: pytest.MonkeyPatch, store: _SyncRedis, entity: str) -> tuple[int, str]:
    monkeypatch.setattr(freshet.sinks.redis_store, "connect", lambda _url: store)
    result = CliRunner().invoke(cli, ["get", "card_txn", entity, "--json"])
    return result.exit_code, result.output


@pytest.mark.parametrize(
    "entity",
    [
        "id\x01",
        "a\nb",
        "\x1b[2J",
        "nul\x00",
        "del\x7f",
        "c1\x9f",
        "bad\udcffbyte",  # a non-UTF-8 byte of argv, as Python decodes it (surrogateescape)
        "",
        "x" * (MAX_ENTITY_LENGTH + 1),
    ],
    ids=["soh", "newline", "escape", "nul", "del", "c1", "not-utf8", "empty", "too-long"],
)
def test_get_refuses_the_ids_the_endpoint_refuses_with_its_message(
    monkeypatch: pytest.MonkeyPatch, entity: str
) -> None:
    response = _endpoint({}, entity)
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_request"
    store = _SyncRedis({})

    code, output = _cli_get(monkeypatch, store, entity)

    assert code == 2
    assert f"Invalid value for ENTITY: {response.json()['message']}" in output
    assert store.calls == 0  # refused, not looked up as "not found"


@pytest.mark.parametrize(
    "entity",
    ["card_1", "a/b:{c}é", "x" * MAX_ENTITY_LENGTH],
    ids=["plain", "punctuation-and-utf8", "longest"],
)
def test_get_and_the_endpoint_answer_a_valid_id_with_the_same_lookup(
    monkeypatch: pytest.MonkeyPatch, entity: str
) -> None:
    as_of = time.time_ns() // 1_000_000
    records = {record_key(_LAYOUT, entity): encode_record(as_of, 1, _VALUES)}
    response = _endpoint(records, entity)
    assert response.status_code == 200
    store = _SyncRedis(records)

    code, output = _cli_get(monkeypatch, store, entity)

    assert code == 0, output
    assert store.calls == 1
    lookup, served = orjson.loads(output), response.json()
    age_free = {k: v for k, v in served.items() if k != "age_ms"}
    assert {k: v for k, v in lookup.items() if k != "age_ms"} == age_free
    assert served["found"] is True
    assert served["features"]["merchant_last"] == "m_0012"
