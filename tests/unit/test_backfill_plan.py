"""The backfill's offset plan, time parsing, segment bookkeeping and command-line errors, without
Kafka: offsets come from a fake topic whose record timestamps the test chooses."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from freshet.backfill.plan import (
    BackfillError,
    BackfillFailed,
    BackfillPlan,
    PartitionPlan,
    ReplayJob,
    Tally,
    history_ms,
    parse_grace,
    plan_backfill,
    previous_segments,
    range_lock,
    writer_prefix,
)
from freshet.dsl.definitions import Aggregation, Feature
from freshet.dsl.views import CARD_TXN
from freshet.sinks.parquet_log import ParquetLogWriter, log_dir
from freshet.sinks.rows import Row

MIN = 60_000
HOUR = 60 * MIN
NOW = 1_750_000_000_000
LATENESS = CARD_TXN.allowed_lateness_seconds * 1000


class FakeTopic:
    """Per partition, the record timestamps at offsets ``low..``; earlier ones were deleted."""

    def __init__(self, stamps: dict[int, Sequence[int]], low: dict[int, int] | None = None):
        self.stamps = {p: list(ts) for p, ts in stamps.items()}
        self.low = low or {}

    def partitions(self, topic: str) -> list[int]:
        return sorted(self.stamps)

    def watermarks(self, topic: str, partition: int) -> tuple[int, int]:
        low = self.low.get(partition, 0)
        return low, low + len(self.stamps[partition])

    def offsets_for_time(self, topic: str, partitions: Sequence[int], ms: int) -> dict[int, int]:
        out = {}
        for p in partitions:
            ts = self.stamps[p]
            # Kafka: the earliest offset whose timestamp is >= ms (timestamps need not be sorted)
            found = next((i for i, t in enumerate(ts) if t >= ms), None)
            out[p] = -1 if found is None else self.low.get(p, 0) + found
        return out


def every_minute(start: int, end: int) -> list[int]:
    return list(range(start, end, MIN))


def plan(topic: FakeTopic, **kw: int | None) -> BackfillPlan:
    args: dict[str, int | None] = {"from_ms": NOW - 3 * HOUR, "to_ms": NOW - 2 * HOUR}
    args.update(kw)
    return plan_backfill(CARD_TXN, topic, now_ms=NOW, **args)  # type: ignore[arg-type]


def test_history_is_the_longest_window_plus_its_hop() -> None:
    assert history_ms(CARD_TXN) == (24 * 3600 + 15 * 60) * 1000
    short = replace(CARD_TXN, features=(Feature("n", Aggregation.COUNT, window="5m"),))
    assert history_ms(short) == (300 + 10) * 1000
    lifetime = replace(CARD_TXN, features=(Feature("m", Aggregation.LAST, "merchant"),))
    assert history_ms(lifetime) == 0


def test_replay_starts_a_window_before_from_and_ends_lateness_plus_grace_after_to() -> None:
    start = NOW - 30 * HOUR
    topic = FakeTopic({0: every_minute(start, NOW), 1: every_minute(start + 30_000, NOW)})

    p = plan(topic, grace_ms=10_000)

    assert p.replay_from_ms == p.from_ms - history_ms(CARD_TXN) - 10_000
    assert p.replay_until_ms == p.to_ms + LATENESS + 10_000
    for part in p.partitions:
        ts = topic.stamps[part.partition]
        assert ts[part.start] >= p.replay_from_ms > ts[part.start - 1]
        assert ts[part.end - 1] < p.replay_until_ms <= ts[part.end]
        assert part.messages == part.end - part.start
    assert p.messages == sum(part.messages for part in p.partitions)


def test_times_past_the_end_clamp_to_the_high_watermark_and_empty_partitions_replay_nothing() -> (
    None
):
    topic = FakeTopic({0: every_minute(NOW - 5 * HOUR, NOW - 150 * MIN), 1: []})

    p = plan(topic, to_ms=None)

    zero, one = p.partitions
    assert zero.end == zero.high == len(topic.stamps[0])
    assert zero.start == 0
    assert one.start == one.end == one.high == 0
    assert one.messages == 0


def test_a_start_before_the_retained_data_begins_at_the_low_watermark_with_a_warning() -> None:
    topic = FakeTopic({0: every_minute(NOW - 4 * HOUR, NOW)}, low={0: 500})

    p = plan(topic)

    assert p.partitions[0].start == 500
    assert any("retention may have removed history" in w for w in p.warnings)


def test_to_is_clamped_to_now_minus_lateness_and_grace_and_defaults_to_that() -> None:
    topic = FakeTopic({0: every_minute(NOW - HOUR, NOW)})

    explicit = plan(topic, from_ms=NOW - HOUR, to_ms=NOW + HOUR, grace_ms=10_000)
    default = plan(topic, from_ms=NOW - HOUR, to_ms=None, grace_ms=10_000)

    assert explicit.to_ms == default.to_ms == NOW - LATENESS - 10_000
    assert explicit.requested_to_ms == NOW + HOUR
    assert default.requested_to_ms == default.to_ms


def test_a_range_ending_before_it_starts_or_only_in_the_live_flows_time_is_refused() -> None:
    topic = FakeTopic({0: every_minute(NOW - HOUR, NOW)})

    with pytest.raises(BackfillError, match="is after --to"):
        plan(topic, from_ms=NOW - HOUR, to_ms=NOW - 2 * HOUR)
    with pytest.raises(BackfillError, match="the live flow's to write"):
        plan(topic, from_ms=NOW - 1000, to_ms=None)
    with pytest.raises(BackfillError, match="grace"):
        plan(topic, grace_ms=-1)


def test_a_topic_without_partitions_is_a_failure_naming_it() -> None:
    with pytest.raises(BackfillFailed, match="'nothing' has no partitions"):
        plan_backfill(
            CARD_TXN, FakeTopic({}), from_ms=NOW - HOUR, to_ms=None, now_ms=NOW, topic="nothing"
        )


def test_lifetime_aggregates_other_than_last_are_warned_about() -> None:
    view = replace(
        CARD_TXN,
        features=(*CARD_TXN.features, Feature("txn_count_ever", Aggregation.COUNT)),
    )
    p = plan_backfill(
        view, FakeTopic({0: [NOW - HOUR]}), from_ms=NOW - HOUR, to_ms=None, now_ms=NOW
    )
    assert any("txn_count_ever count only the replayed history" in w for w in p.warnings)
    assert not plan(FakeTopic({0: [NOW - HOUR]})).warnings


@given(
    stamps=st.lists(st.integers(0, 100 * MIN), max_size=60),
    from_min=st.integers(0, 100),
    span_min=st.integers(0, 50),
    grace_s=st.integers(0, 120),
)
def test_every_record_in_the_replay_window_is_replayed_whatever_the_timestamps(
    stamps: list[int], from_min: int, span_min: int, grace_s: int
) -> None:
    base = NOW - 200 * HOUR
    ts = [base + 25 * HOUR + t for t in stamps]  # unordered, as CreateTime may be
    topic = FakeTopic({0: ts})
    from_ms = base + 25 * HOUR + from_min * MIN
    p = plan_backfill(
        CARD_TXN,
        topic,
        from_ms=from_ms,
        to_ms=from_ms + span_min * MIN,
        now_ms=NOW,
        grace_ms=grace_s * 1000,
    )
    (part,) = p.partitions
    # Records before the start are all older than the replay window; records at or after the
    # first one past the window's end come after it (Kafka's offsets_for_times contract).
    assert all(t < p.replay_from_ms for t in ts[: part.start])
    first_late = next((i for i, t in enumerate(ts) if t >= p.replay_until_ms), len(ts))
    assert part.end == max(part.start, first_late)
    # So in time-ordered topics, exactly the records inside the window are replayed.
    ordered = sorted(ts)
    p2 = plan_backfill(
        CARD_TXN,
        FakeTopic({0: ordered}),
        from_ms=from_ms,
        to_ms=from_ms + span_min * MIN,
        now_ms=NOW,
        grace_ms=grace_s * 1000,
    )
    (part2,) = p2.partitions
    assert part2.start == bisect.bisect_left(ordered, p2.replay_from_ms)
    assert part2.end == bisect.bisect_left(ordered, p2.replay_until_ms)


def test_the_plan_and_job_survive_json_as_the_worker_processes_read_them() -> None:
    p = plan(FakeTopic({0: every_minute(NOW - 30 * HOUR, NOW), 3: []}, low={0: 7}))
    job = ReplayJob(plan=p, workers=3, shards=64, batch_size=500)

    assert BackfillPlan.from_json(p.to_json()) == p
    assert ReplayJob.from_json(job.to_json()) == job
    assert p.to_json()["from"].endswith("Z")


def test_grace_takes_durations_and_zero() -> None:
    assert parse_grace("10s") == 10_000
    assert parse_grace("2m") == 120_000
    assert parse_grace("0") == 0
    assert parse_grace("15") == 15_000
    with pytest.raises(BackfillError, match="--grace"):
        parse_grace("soon")


def _segment(root: Path, writer_id: str) -> Path:
    writer = ParquetLogWriter(root, CARD_TXN.layout(), writer_id=writer_id)
    writer.write([Row("card_txn", "c", NOW, (1, 1.0, 1.0, 1.0, "m", 1), 0, 1)])
    (path,) = writer.close()
    return path


def test_previous_segments_are_this_ranges_only_never_the_live_writers_or_other_ranges(
    tmp_path: Path,
) -> None:
    p = plan(FakeTopic({0: every_minute(NOW - 30 * HOUR, NOW)}))
    other = replace(p, to_ms=p.to_ms - 1)
    mine = [_segment(tmp_path, f"{writer_prefix(p)}p{i}") for i in range(2)]
    _segment(tmp_path, "p0")  # the live flow
    _segment(tmp_path, f"{writer_prefix(other)}p0")
    v2 = replace(p, version=2)

    assert sorted(previous_segments(tmp_path, p)) == sorted(mine)
    assert previous_segments(tmp_path, v2) == []
    assert writer_prefix(p) == f"bf{p.from_ms}-{p.to_ms}-"


def test_two_runs_of_one_range_cannot_overlap(tmp_path: Path) -> None:
    p = plan(FakeTopic({0: every_minute(NOW - 30 * HOUR, NOW)}))

    with range_lock(tmp_path, p):
        with (
            pytest.raises(BackfillFailed, match="another backfill of card_txn@1"),
            range_lock(tmp_path, p),
        ):
            pass
        with range_lock(tmp_path, replace(p, version=2)):  # another version: its own log
            pass
    with range_lock(tmp_path, p):  # released
        pass
    assert (log_dir(tmp_path, "card_txn") / f".{writer_prefix(p)}lock").exists()


def test_tallies_of_worker_processes_add_up() -> None:
    a = Tally(consumed=10, rows_offline=4, rows_online=4, records_online_won=2, seconds=1.5)
    a.dead("late", 2)
    b = Tally(consumed=5, rows_offline=1, rows_online=1, records_online_won=1, seconds=2.0)
    b.dead("late")
    b.dead("undecodable")

    total = Tally.merge([a.to_json(), b.to_json()])

    assert (total.consumed, total.rows_offline, total.records_online_won) == (15, 5, 3)
    assert total.dead_letters == {"late": 3, "undecodable": 1}
    assert total.seconds == 2.0


def test_partition_plan_messages_never_negative() -> None:
    assert PartitionPlan(0, 10, 5, 0, 20).messages == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope", "--from", "-1h"], "unknown view 'nope'; known: card_txn, card_txn_json"),
        (["card_txn@9", "--from", "-1h"], "unknown version 9 of view 'card_txn'"),
        (["card_txn", "--from", "yesterday"], "'yesterday' is not a time"),
        (["card_txn", "--from", "-1h", "--grace", "soon"], "--grace='soon' is not a duration"),
        (["card_txn"], "Missing option '--from'"),
    ],
)
def test_the_command_refuses_bad_arguments_before_touching_kafka(
    args: list[str], message: str
) -> None:
    from click.testing import CliRunner

    from freshet.cli import cli

    env = {"FRESHET_KAFKA_BOOTSTRAP": "127.0.0.1:1"}  # nothing listens: it must not be asked
    result = CliRunner(env=env).invoke(cli, ["backfill", *args])

    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
