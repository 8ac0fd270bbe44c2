"""freshet verify / reconcile against a real Redis and an offline log on disk.

One scenario holds an entity of each outcome; verify must report each, reconcile must repair
what it can without touching a newer Redis value, and two versions of a view must not see each
other's records or logs. Then the CLI: stores written by the real writers agree (exit 0) until
one kind of difference is made on purpose (exit 1, naming it), and rows in flight pass while
they arrive within ``--allow-lag`` and fail when they never do.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner, Result

from freshet.cli import cli
from freshet.dsl.views import CARD_TXN
from freshet.offline.reconcile import Outcome, reconcile, verify
from freshet.sinks.layout import ViewLayout
from freshet.sinks.parquet_log import ParquetLogWriter, log_dir
from freshet.sinks.redis_store import RedisFeatureWriter, connect, record_key
from freshet.sinks.rows import Row

LAYOUT = CARD_TXN.layout()
NOW = time.time_ns() // 1_000_000
MIN = 60_000
TTL_MS = LAYOUT.ttl_seconds * 1000


def _row(entity: str, as_of: int, offset: int, count: int, layout: ViewLayout = LAYOUT) -> Row:
    values = (count, 10.0 * count, 10.0, 10.0 * count, f"m{count}", count)
    return Row(layout.name, entity, as_of, values, 0, offset)


def _write_log(root: Path, rows: list[Row], layout: ViewLayout = LAYOUT) -> list[Path]:
    """Commit ``rows`` as new segments; returns their paths."""
    writer = ParquetLogWriter(root, layout, max_rows=1000, max_age_s=3600)
    committed = writer.write(rows)
    return [*committed, *writer.close()]


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = connect(redis_url)
    assert isinstance(c, redis.Redis)  # the local dev Redis is a single node
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
        "online_stale": 1,
        "values_differ": 1,
        "missing_online": 1,
        "missing_offline": 1,
        "expired": 1,
        "online_newer": 1,
        "in_flight": 0,
    }
    assert not report.ok
    assert (report.offline_entities, report.checked_offline, report.checked_online) == (6, 6, 5)
    assert [e.entity for e in report.examples[Outcome.VALUES_DIFFER]] == ["differs"]
    (stale,) = report.examples[Outcome.ONLINE_STALE]
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
    assert after.counts[Outcome.MATCH] == 4
    # what reconcile cannot repair: the log lacks rows Redis has (a backfill rebuilds it)
    assert after.failing == {Outcome.ONLINE_NEWER: 1, Outcome.MISSING_OFFLINE: 1}
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


def test_cli_verify_fails_until_reconcile_repairs_what_it_can(
    redis_url: str, offline_dir: Path, scenario: dict[str, Row]
) -> None:
    env = {"FRESHET_REDIS_URL": redis_url, "FRESHET_OFFLINE_DIR": str(offline_dir)}
    runner = CliRunner(env=env)
    verify_args = ["verify", "card_txn", "--allow-lag", "0"]

    before = runner.invoke(cli, [*verify_args, "--json"])
    fixed = runner.invoke(cli, ["reconcile", "card_txn"])
    after = runner.invoke(cli, verify_args)

    assert before.exit_code == 1, before.output
    report = json.loads(before.stdout)
    assert report["ok"] is False
    assert report["failing"] == {
        "online_newer": 1,
        "missing_offline": 1,
        "missing_online": 1,
        "online_stale": 1,
        "values_differ": 1,
    }
    assert fixed.exit_code == 0, fixed.output
    assert "4 won" in fixed.output
    assert "1 kept a newer Redis value" in fixed.output
    assert after.exit_code == 1, after.output
    assert "FAILED: Redis and the offline log differ (online_newer 1, missing_offline 1)" in (
        after.output
    )


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


# --- freshet verify as the CLI: each kind of difference made on purpose --------------------

AGREED = ["a", "b", "c", "d", "e"]


@pytest.fixture
def agreed(client: redis.Redis, offline_dir: Path) -> dict[str, list[Path]]:
    """Log and Redis written by the real writers, in agreement: each entity's latest row in
    Redis, its rows in a segment of its own (returned per entity, to delete), and an entity
    whose only row is older than the TTL, legitimately absent from Redis."""
    segments = {}
    for i, entity in enumerate(AGREED):
        rows = [
            _row(entity, NOW - 20 * MIN, 10 * i, 1),
            _row(entity, NOW - 10 * MIN, 10 * i + 1, 2),
        ]
        segments[entity] = _write_log(offline_dir, rows)
        assert RedisFeatureWriter(client, {LAYOUT.name: LAYOUT}).write(rows) == 2
    _write_log(offline_dir, [_row("expired", NOW - TTL_MS - MIN, 99, 1)])
    return segments


def _verify(redis_url: str, offline_dir: Path, *args: str) -> Result:
    env = {"FRESHET_REDIS_URL": redis_url, "FRESHET_OFFLINE_DIR": str(offline_dir)}
    return CliRunner(env=env).invoke(cli, ["verify", "card_txn", *args])


def test_cli_verify_exits_0_when_the_stores_agree(
    redis_url: str, offline_dir: Path, agreed: dict[str, list[Path]]
) -> None:
    result = _verify(redis_url, offline_dir)

    assert result.exit_code == 0, result.output
    assert "OK: Redis and the offline log agree" in result.output
    assert "FAIL" not in result.output
    report = json.loads(_verify(redis_url, offline_dir, "--json").stdout)
    assert report["ok"] is True
    assert report["failing"] == {}
    assert (report["counts"]["match"], report["counts"]["expired"]) == (5, 1)


def _newer_in_redis(client: redis.Redis, offline_dir: Path, segments: dict[str, list[Path]]) -> str:
    RedisFeatureWriter(client, {LAYOUT.name: LAYOUT}).write([_row("a", NOW - MIN, 1000, 3)])
    return "a"


def _segment_lost(client: redis.Redis, offline_dir: Path, segments: dict[str, list[Path]]) -> str:
    for path in segments["b"]:
        path.unlink()
    return "b"


def _key_deleted(client: redis.Redis, offline_dir: Path, segments: dict[str, list[Path]]) -> str:
    assert client.delete(record_key(LAYOUT, "c")) == 1
    return "c"


def _older_in_redis(client: redis.Redis, offline_dir: Path, segments: dict[str, list[Path]]) -> str:
    client.delete(record_key(LAYOUT, "d"))
    RedisFeatureWriter(client, {LAYOUT.name: LAYOUT}).write([_row("d", NOW - 20 * MIN, 30, 1)])
    return "d"


def _value_changed(client: redis.Redis, offline_dir: Path, segments: dict[str, list[Path]]) -> str:
    same_version = _row("e", NOW - 10 * MIN, 41, 2)._replace(values=(2, 20.0, 10.0, 20.0, "zz", 2))
    assert RedisFeatureWriter(client, {LAYOUT.name: LAYOUT}).write([same_version]) == 1
    return "e"


Tamper = Callable[[redis.Redis, Path, dict[str, list[Path]]], str]


@pytest.mark.parametrize(
    ("tamper", "kind"),
    [
        (_newer_in_redis, "online_newer"),
        (_segment_lost, "missing_offline"),
        (_key_deleted, "missing_online"),
        (_older_in_redis, "online_stale"),
        (_value_changed, "values_differ"),
    ],
)
def test_cli_verify_exits_1_naming_each_kind_of_difference(
    client: redis.Redis,
    redis_url: str,
    offline_dir: Path,
    agreed: dict[str, list[Path]],
    tamper: Tamper,
    kind: str,
) -> None:
    entity = tamper(client, offline_dir, agreed)

    # written just now, yet not in flight: --allow-lag 0 fails every difference at once
    result = _verify(redis_url, offline_dir, "--allow-lag", "0")
    as_json = _verify(redis_url, offline_dir, "--allow-lag", "0", "--json")

    assert result.exit_code == 1, result.output
    summary = next(line for line in result.output.splitlines() if f" {kind} " in line)
    assert summary.lstrip().startswith("FAIL")
    assert f"e.g. {entity!r}" in summary
    assert f"FAILED: Redis and the offline log differ ({kind} 1)" in result.output
    assert as_json.exit_code == 1
    report = json.loads(as_json.stdout)
    assert report["failing"] == {kind: 1}
    assert [e["entity"] for e in report["examples"][kind]] == [entity]


# --- rows in flight ------------------------------------------------------------------------


def test_a_running_flows_rows_in_flight_pass_once_the_log_catches_up(
    client: redis.Redis, redis_url: str, offline_dir: Path, agreed: dict[str, list[Path]]
) -> None:
    """Redis gets a row at once, the log when its segment rolls: verify re-checks the entity
    and passes once the log has the row, even though Redis has moved on meanwhile."""
    writer = RedisFeatureWriter(client, {LAYOUT.name: LAYOUT})
    writer.write([_row("a", NOW - MIN, 1000, 3)])

    def flow_goes_on() -> None:
        _write_log(offline_dir, [_row("a", NOW - MIN, 1000, 3)])  # the segment rolls
        writer.write([_row("a", NOW, 1001, 4)])  # and a newer event reaches Redis

    later = threading.Timer(1.5, flow_goes_on)
    later.start()
    try:
        result = _verify(redis_url, offline_dir, "--allow-lag", "30")
    finally:
        later.join()

    assert result.exit_code == 0, result.output
    assert "1 differing entities may be rows in flight" in result.stderr
    summary = next(line for line in result.stdout.splitlines() if " in_flight " in line)
    assert summary.split()[:3] == ["ok", "in_flight", "1"]
    assert "e.g. 'a'" in summary
    assert "OK: Redis and the offline log agree" in result.stdout


def test_a_stopped_flows_recent_rows_fail_after_the_allowance(
    client: redis.Redis, redis_url: str, offline_dir: Path, agreed: dict[str, list[Path]]
) -> None:
    """A flow killed before its segment rolled: the row never reaches the log, so verify
    waits out --allow-lag and fails; it never reports OK."""
    RedisFeatureWriter(client, {LAYOUT.name: LAYOUT}).write([_row("a", NOW - MIN, 1000, 3)])
    _key_deleted(client, offline_dir, agreed)  # and a recent log row Redis never got

    started = time.monotonic()
    result = _verify(redis_url, offline_dir, "--allow-lag", "2", "--json")
    took = time.monotonic() - started

    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert report["failing"] == {"online_newer": 1, "missing_online": 1}
    assert report["counts"]["in_flight"] == 0
    assert 1.5 < took < 15


def test_differences_older_than_the_allowance_fail_without_waiting(
    client: redis.Redis, redis_url: str, offline_dir: Path, agreed: dict[str, list[Path]]
) -> None:
    """The Redis record of 'a' was written 10 minutes ago (its remaining TTL says so) and the
    log never got it: with the default --allow-lag (90 s) that cannot be in flight."""
    RedisFeatureWriter(client, {LAYOUT.name: LAYOUT}).write([_row("a", NOW - MIN, 1000, 3)])
    client.pexpire(record_key(LAYOUT, "a"), TTL_MS - 10 * MIN)
    _value_changed(client, offline_dir, agreed)  # never in flight, however recent

    started = time.monotonic()
    result = _verify(redis_url, offline_dir)

    assert time.monotonic() - started < 10
    assert result.exit_code == 1, result.output
    assert "--allow-lag 90 s" in result.output
    assert "FAILED: Redis and the offline log differ (online_newer 1, values_differ 1)" in (
        result.output
    )
    assert "may be rows in flight" not in result.output


def test_a_log_row_committed_before_its_redis_write_is_in_flight_briefly(
    client: redis.Redis, redis_url: str, offline_dir: Path, agreed: dict[str, list[Path]]
) -> None:
    """The log may commit a batch a moment before the Redis sink writes it: a row the log
    committed just now and Redis lacks is re-checked (up to 10 s), and passes when it lands."""
    client.delete(record_key(LAYOUT, "c"))  # the fixture committed c's rows just now
    redis_sink = threading.Timer(
        1.0,
        RedisFeatureWriter(client, {LAYOUT.name: LAYOUT}).write,
        [[_row("c", NOW - 10 * MIN, 21, 2)]],
    )
    redis_sink.start()
    try:
        result = _verify(redis_url, offline_dir, "--json")
    finally:
        redis_sink.join()

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["counts"]["in_flight"] == 1
    assert report["examples"]["in_flight"][0]["detail"] == "missing_online"
    assert report["waited_s"] < 10
