"""``freshet doctor`` and a schema registry (FRESHET_SCHEMA_REGISTRY_URL)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from loopback_http import QuietHandler, loopback_server

from freshet.dsl.registry import get_view
from freshet.ops.doctor import (
    KafkaFacts,
    Level,
    RedisFacts,
    RegistryFacts,
    check_schema_registry,
    diagnose,
    probe_schema_registry,
)

AVRO = get_view("card_txn")
JSON_ONLY = get_view("card_txn_json")


def test_an_unreachable_registry_is_an_error_for_avro_views_and_names_the_fix() -> None:
    down = RegistryFacts("http://reg:8081", error="unreachable (connection refused)")
    finding = check_schema_registry(down, [AVRO, JSON_ONLY])
    assert finding.level is Level.ERROR
    assert "connection refused" in finding.message
    assert "FRESHET_SCHEMA_REGISTRY_URL" in finding.fix
    # Only JSON views: nothing reads the registry, so a warning.
    assert check_schema_registry(down, [JSON_ONLY]).level is Level.WARN


def test_a_reachable_registry_is_reported_with_the_views_that_use_it() -> None:
    finding = check_schema_registry(RegistryFacts("http://reg:8081", subjects=3), [AVRO])
    assert finding.level is Level.OK
    assert "3 subjects" in finding.message
    assert "card_txn" in finding.message


def test_diagnose_checks_the_registry_only_when_one_is_configured(tmp_path: Path) -> None:
    kafka = KafkaFacts("k:9092", error="down")
    redis_facts = RedisFacts("redis://r:6379/0", url_says_cluster=False, error="down")
    without = diagnose(kafka, redis_facts, [AVRO], tmp_path)
    assert "schema registry" not in {f.check for f in without}
    registry = RegistryFacts("http://reg:8081", error="unreachable")
    with_registry = diagnose(kafka, redis_facts, [AVRO], tmp_path, registry=registry)
    assert [f.level for f in with_registry if f.check == "schema registry"] == [Level.ERROR]


@pytest.fixture
def registry_url() -> Iterator[str]:
    class Handler(QuietHandler):
        def do_GET(self) -> None:
            body = json.dumps(["transactions-value", "payments-value"]).encode()
            status = 200 if self.path == "/subjects" else 404
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    with loopback_server(Handler) as url:
        yield url


def test_probe_counts_the_registrys_subjects(registry_url: str) -> None:
    assert probe_schema_registry(registry_url + "/") == RegistryFacts(registry_url, subjects=2)


def test_probe_of_a_closed_port_says_unreachable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    facts = probe_schema_registry(f"http://svc:secret@127.0.0.1:{port}", timeout_s=2.0)
    assert facts.error is not None
    assert facts.error.startswith("unreachable")
    assert facts.url == f"http://127.0.0.1:{port}"  # the credentials are never shown
