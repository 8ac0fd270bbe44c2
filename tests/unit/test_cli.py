"""The ``freshet`` entry point: every command is listed, bad input is a message, not a traceback."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

FRESHET = [sys.executable, "-c", "from freshet.cli import main; main()"]

CONTRACT_COMMANDS = (
    "dev", "demo", "run", "backfill", "serve", "get", "views", "topics",
    "historical", "stats", "verify", "reconcile", "doctor",
)  # fmt: skip
REPO = Path(__file__).resolve().parents[2]


def freshet(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FRESHET, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
        check=False,
    )


def test_help_lists_every_command_of_the_interface_contract() -> None:
    result = freshet("--help")
    assert result.returncode == 0, result.stderr
    listed = {line.split()[0] for line in result.stdout.split("Commands:")[1].splitlines() if line}
    assert set(CONTRACT_COMMANDS) <= listed


@pytest.mark.parametrize("command", CONTRACT_COMMANDS)
def test_every_command_has_help(command: str) -> None:
    result = freshet(command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage: freshet" in result.stdout


def test_a_views_module_that_does_not_load_is_an_error_message_not_a_traceback() -> None:
    result = freshet("views", FRESHET_VIEWS="no_such_views_module")
    assert result.returncode == 2
    assert "no_such_views_module" in result.stderr
    assert "Traceback" not in result.stderr


def _environment_variables_in_the_code() -> set[str]:
    names: set[str] = set()
    for folder in ("flows", "sinks", "serving"):
        for path in (REPO / folder).rglob("*.py"):
            names.update(re.findall(r"FRESHET_[A-Z0-9_]*[A-Z0-9](?![A-Z0-9_])", path.read_text()))
    # FRESHET_KAFKA_CONFIG_<KEY> is a family; its members in the code are examples.
    return {n for n in names if not n.startswith("FRESHET_KAFKA_CONFIG_")}


def test_help_lists_every_environment_variable_freshet_reads() -> None:
    result = freshet("--help")
    assert result.returncode == 0, result.stderr
    names = _environment_variables_in_the_code()
    assert {"FRESHET_VIEWS", "FRESHET_DEV_DIR", "FRESHET_DEV_REDIS_PORT"} <= names
    missing = sorted(n for n in names if not re.search(rf"\b{n}\b", result.stdout))
    assert not missing, f"freshet --help does not mention {missing}"
    assert "FRESHET_KAFKA_CONFIG_<KEY>" in result.stdout
    assert "freshet.dsl.views,my_views" in result.stdout  # how to keep the demo views


def test_topics_create_help_says_what_it_creates() -> None:
    result = freshet("topics", "create", "--help")
    assert result.returncode == 0, result.stderr
    for words in ("source topic", "dead-letter topic", "--partitions", "FRESHET_VIEWS"):
        assert words in result.stdout


def test_topics_create_names_the_known_views_for_an_unknown_one() -> None:
    result = freshet("topics", "create", "card_tx")
    assert result.returncode == 2
    assert "unknown view 'card_tx'; known: card_txn, card_txn_json" in result.stderr


def test_topics_create_without_a_broker_is_one_line_and_exit_3() -> None:
    result = freshet(
        "topics", "create", "card_txn",
        FRESHET_KAFKA_BOOTSTRAP="127.0.0.1:1", FRESHET_KAFKA_TIMEOUT="1",
    )  # fmt: skip
    assert result.returncode == 3, result.stderr
    assert "cannot reach Kafka at 127.0.0.1:1" in result.stderr
    assert "Traceback" not in result.stderr


def test_each_view_gets_its_source_and_dead_letter_topic_once() -> None:
    from dataclasses import replace

    from freshet.cli.topics import TopicPlan, plan_topics
    from freshet.dsl.views import CARD_TXN, CARD_TXN_JSON

    same_topic = replace(CARD_TXN, name="card_txn_copy", dead_letter_topic=None)

    plans = plan_topics([CARD_TXN, CARD_TXN_JSON, same_topic], partitions=6)

    assert plans == [
        TopicPlan("transactions", 6, "source of card_txn"),
        TopicPlan("transactions_dlq", 1, "dead-letter topic of card_txn"),
        TopicPlan("transactions_json", 6, "source of card_txn_json"),
        TopicPlan("transactions_json_dlq", 1, "dead-letter topic of card_txn_json"),
        TopicPlan("transactions.dlq", 1, "dead-letter topic of card_txn_copy"),
    ]
