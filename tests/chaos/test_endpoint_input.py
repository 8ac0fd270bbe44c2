"""Hostile requests against the endpoint on a real server (uvicorn + httptools, as ``freshet
serve`` runs it) over real Redis: every answer is a 2xx/4xx JSON answer or the HTTP parser's
own 400, never a 5xx, and odd entity ids never reach another entity's record.

Already covered elsewhere, not repeated here: 413 for batches over 1,000 entities and bodies
over 1 MiB by Content-Length or by chunks, malformed batch bodies, unknown views and features
(``tests/unit/test_serving_app.py``, in process); the schemathesis run over the OpenAPI
document (``tests/integration/test_serving_schemathesis.py``).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import pytest
from http_servers import running_server

from freshet.dsl.registry import get_view
from freshet.serving.app import create_app
from freshet.sinks.redis_store import RedisFeatureWriter, connect
from freshet.sinks.rows import Row
from freshet.sinks.settings import Settings

LAYOUT = get_view("card_txn").layout()
VALUES = (3, 30.0, 10.0, 12.5, "m_victim", 2)


@pytest.fixture
def server(redis_url: str) -> Iterator[str]:
    client = connect(redis_url)
    now = time.time_ns() // 1_000_000
    # A record another id must never reach: "a", the prefix of many ids below.
    RedisFeatureWriter(client, {LAYOUT.name: LAYOUT}).write(
        [Row("card_txn", "a", now, VALUES, 0, 1)]
    )
    client.close()
    with running_server(create_app(Settings.from_env({"FRESHET_REDIS_URL": redis_url}))) as url:
        yield url


def _raw(url: str, request: bytes) -> tuple[int, bytes]:
    """Send bytes as they are (httpx refuses to build such requests); status and body."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@pytest.mark.parametrize(
    ("entity_path", "shown_as"),
    [
        ("a%zz", "a%zz"),  # a broken escape stays literal
        ("a%2F..%2F..%2Fb", "a/../../b"),  # slashes inside the id
        ("a%7D%7Bfs:card_txn:1:%7Ba", "a}{fs:card_txn:1:{a"),  # key-layout characters
    ],
)
def test_odd_entity_ids_are_looked_up_as_themselves_and_never_reach_another_record(
    server: str, entity_path: str, shown_as: str
) -> None:
    with httpx.Client(base_url=server, timeout=10) as http:
        response = http.get(f"/v1/features/card_txn/{entity_path}")
        batch = http.post("/v1/features/card_txn", json={"entities": [shown_as]})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json()["entity"] == shown_as
    assert response.json()["found"] is False  # not "a"'s record
    assert batch.status_code == 200
    assert batch.json()["results"][0]["found"] is False


@pytest.mark.parametrize(
    ("entity_path", "entity"),
    [
        ("a%00b", "a\x00b"),  # NUL
        ("a%0A%0Db", "a\n\rb"),  # CR/LF
        ("a%1B%5B2J", "a\x1b[2J"),  # a terminal escape
        ("a%FFb", None),  # not UTF-8 (cannot be sent as JSON text at all)
    ],
)
def test_control_characters_and_non_utf8_in_ids_are_a_clear_422(
    server: str, entity_path: str, entity: str | None
) -> None:
    with httpx.Client(base_url=server, timeout=10) as http:
        responses = [http.get(f"/v1/features/card_txn/{entity_path}")]
        if entity is not None:
            responses.append(http.post("/v1/features/card_txn", json={"entities": [entity]}))
    for response in responses:
        assert response.status_code == 422, response.text
        assert "without control characters" in response.json()["message"]


def test_control_bytes_and_non_utf8_sent_raw_in_the_path_are_400_from_the_http_parser(
    server: str,
) -> None:
    for path in (b"/v1/features/card_txn/a\x01b", b"/v1/features/card_txn/a\xffb"):
        status, _ = _raw(server, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 400, path
    with httpx.Client(base_url=server) as http:  # the server still answers
        assert http.get("/v1/features/card_txn/a").json()["found"] is True


def test_request_lines_over_the_parser_limit_are_400_and_the_server_stays_up(server: str) -> None:
    for size in (100_000, 1_000_000):
        request = b"GET /v1/features/card_txn/" + b"x" * size + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        assert _raw(server, request)[0] == 400, size
    with httpx.Client(base_url=server) as http:
        assert http.get("/healthz").status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "error"),
    [
        ("POST", "/v1/features/card_txn", b"[" * 100_000 + b"]" * 100_000, 400, "bad_request"),
        ("POST", "/v1/features/card_txn", b"\xff\xfe{}", 400, "bad_request"),
        ("POST", "/v1/features/card_txn", b'{"entities": ["a"], "features": ["nope"]}', 422,
         "unknown_features"),
        ("GET", "/v1/features/card_txn/a?features=nope,txn_count_5m", None, 422,
         "unknown_features"),
        ("GET", "/v1/features/card_txn/a?features=,", None, 422, "invalid_request"),
        ("GET", "/v1/features/card%00txn/a", None, 404, "unknown_view"),
        ("GET", "/v1/features/" + "v" * 10_000 + "/a", None, 404, "unknown_view"),
    ],
)  # fmt: skip
def test_malformed_requests_get_a_json_4xx_naming_the_problem(
    server: str, method: str, path: str, body: bytes | None, status: int, error: str
) -> None:
    with httpx.Client(base_url=server, timeout=10) as http:
        response = http.request(method, path, content=body)
    assert response.status_code == status, response.text
    assert response.json()["error"] == error
    assert response.json()["message"]
    assert "Traceback" not in response.text


def test_a_chunked_body_past_1_mib_without_content_length_is_413(server: str) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(40):  # 2.6 MB, no Content-Length: the limit is counted as it arrives
            yield b" " * 65_536

    with httpx.Client(base_url=server, timeout=10) as http:
        response = http.post("/v1/features/card_txn", content=chunks())
        assert response.status_code == 413
        assert response.json()["error"] == "too_large"
        assert http.get("/healthz").status_code == 200


def test_huge_entity_ids_are_a_clear_4xx(server: str) -> None:
    with httpx.Client(base_url=server, timeout=10) as http:
        single = http.get("/v1/features/card_txn/" + "x" * 60_000)
        batch = http.post("/v1/features/card_txn", json={"entities": ["y" * 900_000]})
    for response in (single, batch):
        assert 400 <= response.status_code < 500
        assert "entity" in response.json()["message"]
