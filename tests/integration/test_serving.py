"""The lookup endpoint on a real uvicorn server over real Redis, through the Python client
and the CLI: values equal what the sink wrote, batch order, 503 and recovery, auth, serve."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from click.testing import CliRunner
from http_servers import running_server
from redis_servers import RedisProcess, free_port

from freshet.cli import cli
from freshet.dsl.registry import get_view
from freshet.serving import Client, ServingError
from freshet.serving.app import FeatureApp, create_app
from freshet.serving.auth import ApiKeys
from freshet.serving.redis_link import RedisLink
from freshet.sinks.redis_store import RedisFeatureWriter, connect
from freshet.sinks.rows import Row
from freshet.sinks.settings import Settings

CARD_TXN = get_view("card_txn").layout()
LAYOUTS = {CARD_TXN.name: CARD_TXN}


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _write(redis_url: str, rows: list[Row]) -> None:
    client = connect(redis_url)
    try:
        RedisFeatureWriter(client, LAYOUTS).write(rows)
    finally:
        client.close()


def _row(entity: str, as_of: int, count: int, merchant: str = "m_1") -> Row:
    return Row("card_txn", entity, as_of, (count, 10.0 * count, 10.0, 25.5, merchant, 1), 2, count)


@pytest.fixture
def server_url(redis_url: str) -> Iterator[str]:
    app = create_app(Settings.from_env({"FRESHET_REDIS_URL": redis_url}))
    with running_server(app) as url:
        yield url


def test_lookups_return_exactly_what_the_sink_wrote(redis_url: str, server_url: str) -> None:
    as_of = _now_ms() - 2_000
    rows = [_row(f"card_{i}", as_of, i, merchant=f"m_{i}") for i in range(50)]
    _write(redis_url, rows)
    with Client(server_url) as client:
        one = client.get("card_txn", "card_7")
        assert one["found"] is True
        assert one["as_of"] == as_of
        assert one["age_ms"] >= 2_000
        assert one["features"] == dict(zip(CARD_TXN.feature_names, rows[7].values, strict=True))
        wanted = ["card_49", "nobody", "card_0", "card_49", "card_13"]
        many = client.get_many("card_txn", wanted, features=["txn_count_5m", "merchant_last"])
    assert [(r["entity"], r["found"], r["features"]) for r in many] == [
        ("card_49", True, {"txn_count_5m": 49, "merchant_last": "m_49"}),
        ("nobody", False, {"txn_count_5m": None, "merchant_last": None}),
        ("card_0", True, {"txn_count_5m": 0, "merchant_last": "m_0"}),
        ("card_49", True, {"txn_count_5m": 49, "merchant_last": "m_49"}),
        ("card_13", True, {"txn_count_5m": 13, "merchant_last": "m_13"}),
    ]
    assert many[1]["status"] == {"txn_count_5m": "not_found", "merchant_last": "not_found"}


def test_a_newer_write_is_served_at_once_and_an_older_one_never(
    redis_url: str, server_url: str
) -> None:
    now = _now_ms()
    with Client(server_url) as client:
        _write(redis_url, [_row("c", now - 5_000, 1)])
        assert client.get("card_txn", "c")["features"]["txn_count_5m"] == 1
        _write(redis_url, [_row("c", now - 1_000, 2)])
        assert client.get("card_txn", "c")["features"]["txn_count_5m"] == 2
        _write(redis_url, [_row("c", now - 3_000, 3)])  # a late replay of an older row
        assert client.get("card_txn", "c")["features"]["txn_count_5m"] == 2


def test_values_past_the_views_ttl_are_served_as_expired(redis_url: str, server_url: str) -> None:
    _write(redis_url, [_row("old", _now_ms() - (CARD_TXN.ttl_seconds * 1000 + 60_000), 4)])
    with Client(server_url) as client:
        got = client.get("card_txn", "old")
    assert got["found"] is True
    assert set(got["status"].values()) == {"expired"}
    assert set(got["features"].values()) == {None}


def test_entities_with_any_bytes_round_trip_through_http(redis_url: str, server_url: str) -> None:
    entities = ["a/b", "x:{y}", "sp ace", "q?x=1#f", "é€", "%41"]
    _write(redis_url, [_row(e, _now_ms(), i, merchant=e) for i, e in enumerate(entities)])
    with Client(server_url) as client:
        for entity in entities:
            got = client.get("card_txn", entity)
            assert (got["entity"], got["features"]["merchant_last"]) == (entity, entity)
        assert client.get("card_txn", "A")["found"] is False  # "%41" was not decoded twice


def test_errors_reach_the_client_with_status_and_message(server_url: str) -> None:
    with Client(server_url) as client:
        with pytest.raises(ServingError) as info:
            client.get("nope", "c")
        assert info.value.status == 404
        assert info.value.message == "unknown view 'nope'; known: card_txn, card_txn_json"
        with pytest.raises(ServingError) as info:
            client.get("card_txn", "c", features=["bogus"])
        assert info.value.status == 422


def test_views_endpoint_matches_freshet_views_json(server_url: str) -> None:
    result = CliRunner().invoke(cli, ["views", "--json"])
    assert result.exit_code == 0, result.output
    with Client(server_url) as client:
        assert client.views() == httpx.Response(200, content=result.output).json()


def test_redis_down_is_503_with_retry_after_and_service_resumes_when_it_returns(
    tmp_path: Path,
) -> None:
    redis_server = RedisProcess(free_port(), tmp_path / "redis")
    app = create_app(Settings.from_env({"FRESHET_REDIS_URL": redis_server.url}))
    with running_server(app) as url, httpx.Client(base_url=url) as http:
        for method, path, body in [
            ("GET", "/v1/features/card_txn/c", None),
            ("POST", "/v1/features/card_txn", b'{"entities": ["c"]}'),
            ("GET", "/readyz", None),
        ]:
            response = http.request(method, path, content=body)
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"] == "1"
            assert response.json()["error"] == "unavailable"
        assert http.get("/healthz").status_code == 200

        redis_server.start()
        try:
            _write(redis_server.url, [_row("c", _now_ms(), 5)])
            assert http.get("/readyz").status_code == 200
            assert http.get("/v1/features/card_txn/c").json()["features"]["txn_count_5m"] == 5
            redis_server.stop()  # dies under a connected server
            assert http.get("/v1/features/card_txn/c").status_code == 503
            redis_server.start()
            _write(redis_server.url, [_row("c", _now_ms(), 6)])
            assert http.get("/v1/features/card_txn/c").json()["features"]["txn_count_5m"] == 6
        finally:
            redis_server.stop()


def test_a_redis_that_stops_answering_gives_503_after_the_timeout_not_a_hang() -> None:
    with socket.socket() as silent:  # accepts connections (kernel backlog), never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        app = FeatureApp(
            layouts=LAYOUTS,
            views_doc=[],
            redis_client=RedisLink(f"redis://127.0.0.1:{port}/0", socket_timeout=0.3),
            api_keys=ApiKeys.parse(""),
        )
        with running_server(app) as url, httpx.Client(base_url=url, timeout=10) as http:
            started = time.monotonic()
            response = http.get("/v1/features/card_txn/c")
            assert response.status_code == 503
            assert 0.3 <= time.monotonic() - started < 5


def test_the_endpoint_authenticates_to_redis_and_selects_the_urls_database(
    tmp_path: Path,
) -> None:
    server = RedisProcess(free_port(), tmp_path / "redis", password="s3cret")
    server.start()
    try:
        url = f"redis://:s3cret@127.0.0.1:{server.port}/3"
        _write(url, [_row("c", _now_ms(), 7)])
        wrong = f"redis://:wrong@127.0.0.1:{server.port}/3"
        for redis_url, status in ((url, 200), (wrong, 503)):
            app = create_app(Settings.from_env({"FRESHET_REDIS_URL": redis_url}))
            with running_server(app) as base, httpx.Client(base_url=base) as http:
                response = http.get("/v1/features/card_txn/c")
                assert response.status_code == status, response.text
                assert "s3cret" not in response.text
                assert "wrong" not in response.text
                if status == 200:
                    assert response.json()["features"]["txn_count_5m"] == 7
    finally:
        server.stop()


def test_api_keys_scope_views_on_a_real_server(redis_url: str) -> None:
    env = {"FRESHET_REDIS_URL": redis_url, "FRESHET_API_KEYS": "k_card:card_txn;k_all:*"}
    app = create_app(Settings.from_env(env), api_keys=ApiKeys.from_env(env))
    with (
        running_server(app) as url,
        Client(url) as anonymous,
        Client(url, api_key="k_card") as card,
        Client(url, api_key="k_all") as admin,
    ):
        with pytest.raises(ServingError) as info:
            anonymous.get("card_txn", "c")
        assert info.value.status == 401
        with pytest.raises(ServingError) as info:
            card.get("card_txn_json", "c")
        assert info.value.status == 403
        assert card.get("card_txn", "c")["found"] is False
        assert admin.get("card_txn_json", "c")["found"] is False


def test_freshet_get_reads_redis_directly_and_through_the_endpoint(
    redis_url: str, server_url: str
) -> None:
    _write(redis_url, [_row("card_9", _now_ms() - 1_000, 9, merchant="m_cafe")])
    runner = CliRunner()
    env = {"FRESHET_REDIS_URL": redis_url}
    table = runner.invoke(cli, ["get", "card_txn", "card_9"], env=env)
    assert table.exit_code == 0, table.output
    assert "m_cafe" in table.output
    assert "present" in table.output
    as_json = runner.invoke(cli, ["get", "card_txn", "card_9", "--json"], env=env)
    via_http = runner.invoke(cli, ["get", "card_txn", "card_9", "--json", "--url", server_url])
    direct, served = (httpx.Response(200, content=r.output).json() for r in (as_json, via_http))
    assert direct["features"] == served["features"]
    assert direct["features"]["txn_count_5m"] == 9
    unknown = runner.invoke(cli, ["get", "card_tx", "card_9"], env=env)
    assert unknown.exit_code == 2
    assert "unknown view 'card_tx'; known: card_txn, card_txn_json" in unknown.output


@pytest.mark.parametrize(("server", "workers"), [("granian", 1), ("granian", 2), ("uvicorn", 2)])
def test_freshet_serve_answers_lookups_and_metrics(
    redis_url: str, server: str, workers: int
) -> None:
    _write(redis_url, [_row("card_1", _now_ms(), 1)])
    port = free_port()
    env = {**os.environ, "FRESHET_REDIS_URL": redis_url}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    freshet = Path(sys.executable).with_name("freshet")
    proc = subprocess.Popen(
        [str(freshet), "serve", "--port", str(port), "-w", str(workers), "--server", server],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        _await_ready(url, proc)
        with Client(url) as client:
            for _ in range(20):
                assert client.get("card_txn", "card_1")["found"] is True
        # With 2 workers the 20 requests spread over both; /metrics on either sums them
        # (each worker flushes its counts within a second).
        wanted = (
            'freshet_http_requests_total{route="/v1/features/{view}/{entity}",status="200",'
            'view="card_txn"} 20.0'
        )
        deadline = time.monotonic() + 10
        while wanted not in (metrics := httpx.get(f"{url}/metrics").text):
            assert time.monotonic() < deadline, metrics
            time.sleep(0.2)
    finally:
        proc.terminate()
        try:
            _, stderr = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()  # and reap it, closing its pipe: not a warning in a later test
            proc.communicate()
            raise
    assert b"Traceback" not in stderr, stderr.decode()


def _await_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"freshet serve exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"freshet serve not ready at {url} after {timeout_s}s")


def test_freshet_get_accepts_a_versioned_view_name(
    redis_url: str, redis_client: redis.Redis
) -> None:
    from click.testing import CliRunner

    from freshet.cli import cli
    from freshet.dsl.registry import get_view
    from freshet.sinks.redis_store import RedisFeatureWriter
    from freshet.sinks.rows import Row

    layout = get_view("card_txn").layout()
    values = (3, 30.0, 10.0, 20.0, "m_1", 2)
    RedisFeatureWriter(redis_client, {layout.name: layout}).write(
        [Row(layout.name, "card_v", int(time.time() * 1000), values, 0, 7)]
    )
    result = CliRunner().invoke(
        cli,
        ["get", f"card_txn@{layout.version}", "card_v", "--json"],
        env={"FRESHET_REDIS_URL": redis_url},
    )
    assert result.exit_code == 0, result.output
    assert '"merchant_last": "m_1"' in result.output
