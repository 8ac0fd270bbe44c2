"""``freshet doctor``'s judgement, from facts to findings (no servers: the probes are separate)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from freshet.cli import cli
from freshet.dsl.registry import get_view
from freshet.ops.doctor import (
    C_EXTENSIONS,
    Finding,
    KafkaFacts,
    Level,
    RedisFacts,
    RedisNode,
    check_c_extensions,
    check_eviction,
    check_offline_dir,
    check_redis_mode,
    check_redis_version,
    check_topics,
    diagnose,
    probe_c_extensions,
)

CARD_TXN = get_view("card_txn")
NO_TTL = dataclasses.replace(get_view("card_txn_json"), ttl_seconds=0)
GIB = 1 << 30


def node(policy: str = "noeviction", *, maxmemory: int = 4 * GIB, used: int = GIB) -> RedisNode:
    return RedisNode("10.0.0.1:6379", "7.2.4", maxmemory, policy, used, cluster_enabled=False)


def kafka(**topics: int) -> KafkaFacts:
    return KafkaFacts("k:9092", cluster_id="c1", brokers=3, topics=topics)


def by_check(findings: list[Finding]) -> dict[str, Finding]:
    return {f.check: f for f in findings}


# --- eviction -------------------------------------------------------------------------------


def test_noeviction_never_evicts_a_feature_value() -> None:
    finding = check_eviction(node("noeviction"), [CARD_TXN])
    assert finding.level is Level.OK
    assert "1.0 GiB of maxmemory 4.0 GiB used" in finding.message


@pytest.mark.parametrize("policy", ["allkeys-lru", "allkeys-lfu", "allkeys-random"])
def test_allkeys_policies_can_evict_every_view_with_or_without_ttl(policy: str) -> None:
    finding = check_eviction(node(policy), [CARD_TXN, NO_TTL])
    assert finding.level is Level.WARN
    assert f"{CARD_TXN.name}, {NO_TTL.name}" in finding.message
    assert "noeviction" in finding.fix


@pytest.mark.parametrize(
    "policy", ["volatile-lru", "volatile-lfu", "volatile-random", "volatile-ttl"]
)
def test_volatile_policies_evict_exactly_the_views_whose_keys_carry_a_ttl(policy: str) -> None:
    finding = check_eviction(node(policy), [CARD_TXN, NO_TTL])
    assert finding.level is Level.WARN
    assert CARD_TXN.name in finding.message
    assert NO_TTL.name not in finding.message
    assert "keys with a TTL" in finding.message


def test_volatile_policy_is_safe_when_no_view_sets_a_ttl() -> None:
    assert check_eviction(node("volatile-lru"), [NO_TTL]).level is Level.OK


def test_without_maxmemory_no_policy_evicts() -> None:
    finding = check_eviction(node("allkeys-lru", maxmemory=0), [CARD_TXN])
    assert finding.level is Level.OK
    assert "never evicts" in finding.message


def test_memory_almost_full_under_noeviction_warns_that_writes_will_fail() -> None:
    finding = check_eviction(node("noeviction", used=int(3.5 * GIB)), [CARD_TXN])
    assert finding.level is Level.WARN
    assert "writes fail with OOM" in finding.message


# --- topics ---------------------------------------------------------------------------------


def test_a_missing_source_topic_is_an_error_with_the_command_that_creates_it() -> None:
    findings = by_check(check_topics(kafka(), [CARD_TXN]))
    source = findings["topic transactions"]
    assert source.level is Level.ERROR
    assert "`freshet topics create card_txn --partitions N`" in source.fix
    dlq = findings["topic transactions_dlq"]
    assert dlq.level is Level.WARN  # freshet run creates it
    assert "`freshet topics create card_txn`" in dlq.fix
    assert "kafka-topics.sh --create" not in source.fix + dlq.fix  # not in freshet's stack


def test_existing_topics_report_their_partitions() -> None:
    findings = by_check(check_topics(kafka(transactions=6, transactions_dlq=1), [CARD_TXN]))
    assert findings["topic transactions"].level is Level.OK
    assert "6 partition(s)" in findings["topic transactions"].message
    assert findings["topic transactions_dlq"].level is Level.OK


@pytest.mark.parametrize(
    ("partitions", "workers", "level", "words"),
    [
        (6, 3, Level.OK, "2 per worker"),
        (6, 6, Level.OK, "1 per worker"),
        (4, 6, Level.WARN, "2 worker(s) will read nothing"),
        (6, 4, Level.WARN, "some read 2, others 1"),
    ],
)
def test_partitions_are_checked_against_the_planned_workers(
    partitions: int, workers: int, level: Level, words: str
) -> None:
    facts = kafka(transactions=partitions, transactions_dlq=1)
    finding = by_check(check_topics(facts, [CARD_TXN], workers=workers))["topic transactions"]
    assert finding.level is level
    assert words in finding.message


# --- redis ----------------------------------------------------------------------------------


def test_a_cluster_node_behind_a_plain_url_is_an_error_that_names_the_flag() -> None:
    cluster_node = dataclasses.replace(node(), cluster_enabled=True)
    finding = check_redis_mode(RedisFacts("redis://r:6379/0", False, nodes=(cluster_node,)))
    assert finding is not None
    assert finding.level is Level.ERROR
    assert "?cluster=true" in finding.fix


def test_a_cluster_url_on_a_plain_server_is_an_error() -> None:
    finding = check_redis_mode(RedisFacts("redis://r:6379/0?cluster=true", True, nodes=(node(),)))
    assert finding is not None
    assert finding.level is Level.ERROR
    assert "remove ?cluster=true" in finding.fix


def test_matching_modes_need_no_finding() -> None:
    cluster_node = dataclasses.replace(node(), cluster_enabled=True)
    assert check_redis_mode(RedisFacts("u", True, nodes=(cluster_node,) * 3)) is None
    assert check_redis_mode(RedisFacts("u", False, nodes=(node(),))) is None


@pytest.mark.parametrize(
    ("version", "level"), [("5.0.14", Level.WARN), ("6.0.0", Level.OK), ("7.2.4", Level.OK),
                           ("8.0-m02", Level.OK)]
)  # fmt: skip
def test_old_redis_versions_get_a_warning(version: str, level: Level) -> None:
    assert check_redis_version(dataclasses.replace(node(), version=version)).level is level


# --- offline dir ----------------------------------------------------------------------------


def test_a_writable_offline_dir_is_ok_and_a_missing_one_will_be_created(tmp_path: Path) -> None:
    assert check_offline_dir(tmp_path).level is Level.OK
    finding = check_offline_dir(tmp_path / "a" / "b")
    assert finding.level is Level.OK
    assert "created on first write" in finding.message
    assert not (tmp_path / "a").exists()  # doctor looks, it does not create


def test_an_offline_dir_under_a_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    finding = check_offline_dir(tmp_path / "file" / "offline")
    assert finding.level is Level.ERROR
    assert "is not a directory" in finding.message


def test_an_offline_dir_where_nothing_can_be_written_is_an_error() -> None:
    # /proc refuses new files even to root (CI runs as root, so chmod cannot show this).
    finding = check_offline_dir(Path("/proc/freshet/offline"))
    assert finding.level is Level.ERROR
    assert "cannot write in /proc" in finding.message


# --- the whole diagnosis ----------------------------------------------------------------------


def test_unreachable_kafka_skips_the_topic_checks_and_fails(tmp_path: Path) -> None:
    down = KafkaFacts("k:9092", error="Local: Timed out")
    findings = diagnose(down, RedisFacts("u", False, nodes=(node(),)), [CARD_TXN], tmp_path)
    assert [f.check for f in findings] == [
        "kafka", "redis", "redis version 10.0.0.1:6379", "redis memory 10.0.0.1:6379",
        "offline dir", "c extensions",
    ]  # fmt: skip
    assert findings[0].level is Level.ERROR
    assert "FRESHET_KAFKA_BOOTSTRAP" in findings[0].fix


def test_c_extensions_built_are_ok_and_missing_ones_warn_with_the_fix(tmp_path: Path) -> None:
    # This install (CI's) has both built.
    assert probe_c_extensions() == []
    assert check_c_extensions([]).level is Level.OK
    missing = check_c_extensions(["freshet.decode._fastdecode"])
    assert missing.level is Level.WARN
    assert "freshet.decode._fastdecode" in missing.message
    assert "2.8x slower" in missing.message
    assert "C compiler" in missing.fix
    assert "freshet.engine._faststate" not in missing.message
    down = KafkaFacts("k:9092", error="Local: Timed out")
    findings = by_check(
        diagnose(down, RedisFacts("u", False), [CARD_TXN], tmp_path,
                 missing_extensions=list(C_EXTENSIONS))
    )  # fmt: skip
    assert findings["c extensions"].level is Level.WARN
    assert "freshet.engine._faststate" in findings["c extensions"].message


def test_every_primary_of_a_cluster_is_checked(tmp_path: Path) -> None:
    nodes = tuple(
        dataclasses.replace(node(policy), address=f"n{i}:6379", cluster_enabled=True)
        for i, policy in enumerate(["noeviction", "allkeys-lru", "noeviction"])
    )
    redis_facts = RedisFacts("redis://n0:6379/0?cluster=true", True, nodes=nodes)
    facts = kafka(transactions=3, transactions_dlq=1)
    findings = by_check(diagnose(facts, redis_facts, [CARD_TXN], tmp_path))
    assert findings["redis"].message.endswith("cluster of 3 primaries")
    assert findings["redis memory n1:6379"].level is Level.WARN
    assert findings["redis memory n0:6379"].level is Level.OK


def test_cli_names_the_known_views_for_an_unknown_one() -> None:
    result = CliRunner().invoke(cli, ["doctor", "card_tx"])
    assert result.exit_code == 2
    assert "unknown view 'card_tx'; known: card_txn, card_txn_json" in result.output


def test_doctor_knows_only_the_views_in_use_when_freshet_views_names_a_module(
    tmp_path: Path,
) -> None:
    module = tmp_path / "team_views.py"
    module.write_text(
        "from dataclasses import replace\n"
        "from freshet.dsl.views import CARD_TXN\n"
        "VIEWS = [replace(CARD_TXN, name='team_txn')]\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", "from freshet.cli import main; main()", "doctor", "card_txn"],
        env={**os.environ, "FRESHET_VIEWS": str(module)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "unknown view 'card_txn'; known: team_txn" in result.stderr
