"""``freshet serve`` refuses bad settings before starting; ``freshet get`` names unknown views."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from flows.cli import cli


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
