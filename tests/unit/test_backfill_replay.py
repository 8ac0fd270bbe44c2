"""A backfill process runs freshet run's flow with the range as options: the IO and options it
builds, the bounded Kafka partition, the engine's row filter, the progress it prints and the
command line of a cluster member — without Kafka or Redis."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from freshet.backfill.plan import (
    BackfillPlan,
    PartitionPlan,
    ReplayJob,
    progress_line,
    read_progress,
    writer_prefix,
)
from freshet.backfill.replay import replay_io, replay_options
from freshet.cli import cli
from freshet.dsl.views import CARD_TXN
from freshet.sinks.rows import Row
from freshet.sinks.settings import Settings
from freshet.stream import connectors, kafka_clients, metrics
from freshet.stream.pipeline import rows_between

NOW = 1_750_000_000_000
HOUR = 3_600_000

PLAN = BackfillPlan(
    view="card_txn",
    version=1,
    topic="transactions",
    from_ms=NOW - 3 * HOUR,
    to_ms=NOW - 2 * HOUR,
    replay_from_ms=NOW - 28 * HOUR,
    replay_until_ms=NOW - 2 * HOUR + 15_000,
    partitions=(PartitionPlan(0, 10, 90, 0, 100), PartitionPlan(1, 5, 5, 5, 5)),
    requested_to_ms=NOW - 2 * HOUR,
)


def test_a_replay_is_freshet_runs_io_and_options_bounded_to_the_plan() -> None:
    job = ReplayJob(plan=PLAN, workers=2, processes=3, batch_size=777)
    settings = Settings.from_env({"FRESHET_OFFLINE_DIR": "/tmp/offline"})

    io = replay_io(job, settings)
    options = replay_options(job, settings)

    assert isinstance(io, connectors.KafkaIO)
    assert (io.start, io.end, io.tail) == (PLAN.replay_from_ms, PLAN.replay_until_ms, False)
    assert io.kafka_batch_size == 777
    assert io.parquet_partitions == io.redis_partitions == 6
    source = io.source(CARD_TXN)
    assert isinstance(source, connectors.StartingKafkaSource)
    sink = io.offline_sink(CARD_TXN)
    assert sink.list_parts() == [f"{writer_prefix(PLAN)}p{i}" for i in range(6)]
    assert not sink.commit_at_snapshot
    assert io.dead_letter_sink(CARD_TXN).topic is None  # counted only: the live flow sent them
    assert not io.online_sink(CARD_TXN).freshness  # hours-old rows are not a freshness
    assert options.rows_between == (PLAN.from_ms, PLAN.to_ms)
    assert options.flush_until_ms == PLAN.to_ms
    assert not options.persist_state


def _row(entity: str, as_of: int) -> Row:
    return Row("card_txn", entity, as_of, (), 0, as_of)


def test_the_engine_lets_out_only_rows_of_the_range_with_their_kafka_timestamps() -> None:
    rng = random.Random(3)
    rows = [_row(f"c{rng.randrange(5)}", rng.randrange(0, 100)) for _ in range(500)]
    stamps = [rng.randrange(-1, 10**6) for _ in rows]

    kept, kept_stamps = rows_between(rows, stamps, 30, 60)

    pairs = [(r, ts) for r, ts in zip(rows, stamps, strict=True) if 30 <= r.as_of <= 60]
    assert list(zip(kept, kept_stamps, strict=True)) == pairs
    assert 0 < len(kept) < len(rows)
    assert rows_between(rows, stamps, 0, 100) == (rows, stamps)  # nothing to drop: as it was


class _Message:
    def __init__(self, offset: int) -> None:
        self._offset = offset

    def error(self) -> None:
        return None

    def offset(self) -> int:
        return self._offset


class _Consumer:
    """A partition holding offsets ``low..high-1``, read from where it was assigned."""

    def __init__(self, low: int, high: int) -> None:
        self._high = high
        self._next = low
        self.polls = 0

    def assign(self, partitions: list[Any]) -> None:
        self._next = partitions[0].offset

    def consume(self, n: int, timeout: float) -> list[_Message]:
        self.polls += 1
        batch = [_Message(o) for o in range(self._next, min(self._next + n, self._high))]
        self._next += len(batch)
        return batch

    def close(self) -> None:
        pass


def _read_all(part: Any, *, bound: int = 1000) -> list[int]:
    offsets = []
    for _ in range(bound):
        try:
            offsets += [m.offset() for m in part.next_batch()]
        except StopIteration:
            return offsets
    raise AssertionError(f"the partition did not end in {bound} polls")


@pytest.mark.parametrize(("start", "end", "batch"), [(100, 120, 7), (100, 121, 7), (100, 107, 7),
                                                     (100, 100, 7), (100, 130, 50)])  # fmt: skip
def test_a_bounded_partition_reads_exactly_start_to_end_and_reports_its_progress(
    monkeypatch: pytest.MonkeyPatch, start: int, end: int, batch: int
) -> None:
    consumer = _Consumer(0, 130)
    monkeypatch.setattr(kafka_clients, "consumer", lambda config: consumer)
    topic = f"t-{start}-{end}-{batch}"

    part = connectors._KafkaPartition("step", {}, topic, 4, start, batch_size=batch, end=end)
    offsets = _read_all(part)

    assert offsets == list(range(start, min(end, 130)))
    planned = metrics.REPLAY_PLANNED.labels(topic=topic, partition=4)
    done = metrics.REPLAY_DONE.labels(topic=topic, partition=4)
    samples = {m.name: s.value for g in (planned, done) for m in g.collect() for s in m.samples}
    assert samples == {
        "freshet_replay_records_planned": end - start,
        "freshet_replay_records_done": end - start,
    }
    assert part.snapshot() == min(end, 130)


def test_progress_lines_show_done_of_planned_rate_and_eta() -> None:
    assert progress_line(1_200, 4_000, 2_500.4, 1.2) == (
        "replayed 1,200 of 4,000 records (30%), 2,500 ev/s, ETA 0:00:01"
    )
    assert progress_line(0, 4_000, 0.0, None).endswith("0 ev/s, ETA -")
    assert progress_line(0, 0, 0.0, 0.0).startswith("replayed 0 of 0 records (100%)")


def test_the_parent_reads_the_progress_its_processes_wrote(tmp_path: Path) -> None:
    (tmp_path / "progress-0").write_text("40 80 0")
    (tmp_path / "progress-2").write_text("5 5 1")
    (tmp_path / ".progress-1.tmp").write_text("1 2 0")  # being written

    found = read_progress(tmp_path)

    assert {p: (s.consumed, s.planned, s.done) for p, s in found.items()} == {
        0: (40, 80, False),
        2: (5, 5, True),
    }


def test_the_job_keeps_its_cluster_shape_through_json() -> None:
    job = ReplayJob(plan=PLAN, workers=2, processes=3)

    assert ReplayJob.from_json(job.to_json()) == job
    assert job.total_workers == 6


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-i", "0"], "-i needs -a"),
        (["-p", "2", "-i", "0", "-a", "h:1;h:2"], "use either -p"),
        (["-i", "2", "-a", "h:1;h:2", "--to", "2024-05-02"], "-i 2 is not below the 2 addresses"),
        (["-i", "0", "-a", "h:1;h:2", "--to", "2024-05-02"], "--from '-1h' is relative to now"),
        (["-i", "1", "-a", "h:1;h:2"], "with -i/-a give --to"),
    ],
)
def test_a_cluster_member_needs_addresses_and_an_absolute_range_before_touching_kafka(
    args: list[str], message: str
) -> None:
    env = {"FRESHET_KAFKA_BOOTSTRAP": "127.0.0.1:1"}  # nothing listens: it must not be asked
    if "--to" in args:
        base = ["backfill", "card_txn", "--from", "-1h"]
    else:
        base = ["backfill", "card_txn", "--from", "2024-05-01"]

    result = CliRunner(env=env).invoke(cli, [*base, *args])

    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())


def test_a_flow_pods_cluster_settings_are_named_when_a_backfill_there_would_join_them() -> None:
    env = {
        "FRESHET_KAFKA_BOOTSTRAP": "127.0.0.1:1",
        "BYTEWAX_PROCESS_ID": "0",
        "BYTEWAX_ADDRESSES": "freshet-flow-0.freshet-flow:2101;freshet-flow-1.freshet-flow:2101",
    }

    result = CliRunner(env=env).invoke(cli, ["backfill", "card_txn", "--from", "-2h"])

    assert result.exit_code == 2, result.output
    assert "unset them to run a backfill on its own" in " ".join(result.output.split())
