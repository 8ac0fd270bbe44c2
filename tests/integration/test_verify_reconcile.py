"""freshet verify / reconcile against a real Redis and an offline log on disk.

One scenario holds an entity of each outcome; verify must report each, reconcile must repair
the mismatches and missing records without touching a newer Redis value, and two versions of
a view must not see each other's records or logs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from flows.cli import cli
from flows.reconcile import Outcome, reconcile, verify
from flows.views import CARD_TXN
from sinks.layout import ViewLayout
from sinks.parquet_log import ParquetLogWriter, log_dir
from sinks.redis_store import RedisFeatureWriter, connect, record_key
from sinks.rows import Row

LAYOUT = CARD_TXN.layout()
NOW = time.time_ns() // 1_000_000
MIN = 60_000
TTL_MS = LAYOUT.ttl_seconds * 1000


def _row(entity: str, as_of: int, offset: int, count: int, layout: ViewLayout = LAYOUT) -> Row:
    values = (count, 10.0 * count, 10.0, 10.0 * count, f"m{count}", count)
    return Row(layout.name, entity, as_of, values, 0, offset)


def _write_log(root: Path, rows: list[Row], layout: ViewLayout = LAYOUT) -> None:
    writer = ParquetLogWriter(root, layout, max_rows=1000, max_age_s=3600)
    writer.write(rows)
    writer.close()


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = connect(redis_url)
    yield c
    c.close()


@pytest.fixture
def scenario(client: redis.Redis, offline_dir: Path) -> dict[str, Row]:
    """Writes the log and Redis; returns the Redis row of the entity that is newer online."""
    log = [
        _row("match", NOW - 10 * MIN, 1, 1),
        _row("match", NOW - 9 * MIN, 2, 2),
        _row("stale", NOW - 8 * MIN, 3, 1),
        _row("stale", NOW - 7 * MIN, 4, 2),
        _row("differs", NOW - 6 * MIN, 5, 1),
        _row("missing_online", NOW - 5 * MIN, 6, 1),
        _row("newer", NOW - 4 * MIN, 7, 1),
        _row("expired", NOW - TTL_MS - MIN, 8, 1),
    ]
    _write_log(offline_dir, log[:4])
    _write_log(offline_dir, [*log[3:], log[0]])  # a second segment with copies of rows
    online = {
        "match": log[1],
        "stale": log[2],  # Redis missed the last write
        "differs": log[4]._replace(values=(9, 0.0, 0.0, 0.0, "zz", 9)),  # same version
        "newer": _row("newer", NOW - MIN, 99, 5),  # fresher than the log (its buffer)
        "missing_offline": _row("missing_offline", NOW - MIN, 100, 1),
    }
    assert RedisFeatureWriter(client, {LAYOUT.name: LAYOUT}).write(list(online.values())) == 5
    return online


def test_verify_reports_each_outcome_with_examples(
    client: redis.Redis, offline_dir: Path, scenario: dict[str, Row]
) -> None:
    report = verify(client, offline_dir, LAYOUT)

    assert {o.value: n for o, n in report.counts.items()} == {
        "match": 1,
        "mismatch": 2,
        "missing_online": 1,
        "missing_offline": 1,
        "expired": 1,
        "online_newer": 1,
    }
    assert not report.ok
    assert (report.offline_entities, report.checked_offline, report.checked_online) == (6, 6, 5)
    mismatches = {(e.entity, e.detail) for e in report.examples[Outcome.MISMATCH]}
    assert mismatches == {("stale", "stale"), ("differs", "differs")}
    stale = next(e for e in report.examples[Outcome.MISMATCH] if e.entity == "stale")
    assert stale.online is not None
    assert stale.offline is not None
    assert (stale.online.as_of, stale.offline.as_of) == (NOW - 8 * MIN, NOW - 7 * MIN)
    assert [e.entity for e in report.examples[Outcome.MISSING_OFFLINE]] == ["missing_offline"]


def test_reconcile_repairs_redis_and_never_regresses_a_newer_value(
    client: redis.Redis, offline_dir: Path, scenario: dict[str, Row]
) -> None:
    newer_key = record_key(LAYOUT, "newer")
    newer_before = client.get(newer_key)

    report = reconcile(client, offline_dir, LAYOUT)

    # match (equal rewrite), stale, differs and missing_online win; newer keeps its value
    assert (report.offline_entities, report.written, report.won) == (6, 5, 4)
    assert (report.kept_newer, report.skipped_expired) == (1, 1)
    assert client.get(newer_key) == newer_before
    assert client.get(record_key(LAYOUT, "expired")) is None
    after = verify(client, offline_dir, LAYOUT)
    assert after.ok
    assert after.counts[Outcome.MATCH] == 4
    assert after.counts[Outcome.ONLINE_NEWER] == 1
    assert 0 < client.pttl(record_key(LAYOUT, "missing_online")) <= TTL_MS


def test_reconcile_twice_changes_nothing(
    client: redis.Redis, offline_dir: Path, scenario: dict[str, Row]
) -> None:
    reconcile(client, offline_dir, LAYOUT)
    keys = sorted(client.scan_iter(match=b"fs:*"))
    snapshot = {k: client.get(k) for k in keys}

    reconcile(client, offline_dir, LAYOUT)

    assert {k: client.get(k) for k in sorted(client.scan_iter(match=b"fs:*"))} == snapshot


def test_a_sample_checks_that_many_entities_reproducibly(
    client: redis.Redis, offline_dir: Path, scenario: dict[str, Row]
) -> None:
    first = verify(client, offline_dir, LAYOUT, sample=3, seed=7)
    again = verify(client, offline_dir, LAYOUT, sample=3, seed=7)

    assert (first.offline_entities, first.checked_offline) == (6, 3)
    assert first.checked_online <= 3
    assert first.counts == again.counts
    assert first.examples == again.examples


def test_cli_verify_fails_until_reconcile_repairs(
    redis_url: str, offline_dir: Path, scenario: dict[str, Row]
) -> None:
    env = {"FRESHET_REDIS_URL": redis_url, "FRESHET_OFFLINE_DIR": str(offline_dir)}
    runner = CliRunner(env=env)

    before = runner.invoke(cli, ["verify", "card_txn", "--json"])
    fixed = runner.invoke(cli, ["reconcile", "card_txn"])
    after = runner.invoke(cli, ["verify", "card_txn"])

    assert before.exit_code == 1, before.output
    report = json.loads(before.output)
    assert report["counts"]["mismatch"] == 2
    assert report["ok"] is False
    assert fixed.exit_code == 0, fixed.output
    assert "4 won" in fixed.output
    assert "1 kept a newer Redis value" in fixed.output
    assert after.exit_code == 0, after.output
    assert "OK" in after.output


def test_cli_reports_an_unreachable_redis_with_exit_3(offline_dir: Path) -> None:
    env = {"FRESHET_REDIS_URL": "redis://127.0.0.1:1/0", "FRESHET_OFFLINE_DIR": str(offline_dir)}

    result = CliRunner(env=env).invoke(cli, ["verify", "card_txn"])

    assert result.exit_code == 3
    assert "redis://127.0.0.1:1/0 is unavailable" in result.output


def test_two_versions_of_a_view_keep_separate_redis_records_and_logs(
    client: redis.Redis, offline_dir: Path
) -> None:
    v2 = replace(LAYOUT, version=2)
    _write_log(offline_dir, [_row("c", NOW - MIN, 1, 1)])
    _write_log(offline_dir, [_row("c", NOW - MIN, 1, 2, layout=v2)], layout=v2)
    RedisFeatureWriter(client, {LAYOUT.name: LAYOUT}).write([_row("c", NOW - MIN, 1, 1)])

    # v2 is backfilled and verified while v1 keeps serving its own values
    assert verify(client, offline_dir, v2).counts[Outcome.MISSING_ONLINE] == 1
    assert reconcile(client, offline_dir, v2).won == 1
    v1_report, v2_report = verify(client, offline_dir, LAYOUT), verify(client, offline_dir, v2)

    assert v1_report.ok
    assert v1_report.counts[Outcome.MATCH] == 1
    assert v2_report.ok
    assert v2_report.counts[Outcome.MATCH] == 1
    assert record_key(LAYOUT, "c") != record_key(v2, "c")
    v1_raw, v2_raw = client.get(record_key(LAYOUT, "c")), client.get(record_key(v2, "c"))
    assert v1_raw is not None
    assert v2_raw is not None
    assert v1_raw != v2_raw
    assert log_dir(offline_dir, LAYOUT.name, 1) != log_dir(offline_dir, LAYOUT.name, 2)


def test_verify_scans_only_its_view_versions_records_whatever_the_entity_bytes(
    client: redis.Redis, offline_dir: Path
) -> None:
    odd = ["x*y", "{}", "a:b}", "[ab]", "\\"]
    v2 = replace(LAYOUT, version=2)
    other = replace(LAYOUT, name="card_txn_json")
    writer = RedisFeatureWriter(client, {LAYOUT.name: LAYOUT, other.name: other})
    writer.write([_row(e, NOW - MIN, 1, 1) for e in odd])
    writer.write([_row("json_only", NOW - MIN, 1, 1, layout=other)])
    RedisFeatureWriter(client, {v2.name: v2}).write([_row("v2_only", NOW - MIN, 1, 1, layout=v2)])

    report = verify(client, offline_dir, LAYOUT, examples=10)

    assert report.checked_online == len(odd)
    assert sorted(e.entity for e in report.examples[Outcome.MISSING_OFFLINE]) == sorted(odd)
