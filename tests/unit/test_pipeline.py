"""freshet.stream.pipeline: the dataflow wired end to end in-process (TestingSource in, Parquet +
lists out).

The flow's rows are checked against ``ViewEngine`` run directly over each entity's events: the
wiring (decode, sharding, timers, sinks, snapshots) must neither lose, duplicate nor reorder
an entity's rows.
"""

from __future__ import annotations

import gc
import io
import json
import os
import pickle
import random
import subprocess
import sys
import time
import weakref
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
import pytest
from bytewax.inputs import AbortExecution, FixedPartitionedSource, StatefulSourcePartition
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, run_main
from fastavro import parse_schema, schemaless_writer

from freshet.cli.run import (
    _child_argv,
    parse_start,
    run,
)
from freshet.decode.messages import DeadLetter, RawMessage
from freshet.dsl.definitions import SCHEMAS_DIR
from freshet.dsl.registry import get_view
from freshet.engine.view_engine import ViewEngine
from freshet.sinks.parquet_log import WriterState, read_log, segment_paths
from freshet.sinks.rows import Row
from freshet.stream import metrics
from freshet.stream.connectors import ParquetSink
from freshet.stream.pipeline import (
    Changes,
    FlowOptions,
    ShardLogic,
    build_flow,
    shard_keys,
    shard_of,
)
from freshet.stream.runtime import (
    RecoveryDirError,
    clock_offset,
    freeze_gc_survivors,
    init_recovery,
)

VIEW = get_view("card_txn")
SCHEMA = parse_schema(json.loads((SCHEMAS_DIR / "transaction.avsc").read_text()))
T0 = 1_714_521_600_000  # 2024-05-01T00:00:00Z
LATENESS_MS = VIEW.allowed_lateness_seconds * 1000


def avro(card: str, amount: float, merchant: str, ts: int) -> bytes:
    buf = io.BytesIO()
    schemaless_writer(
        buf, SCHEMA, {"card_id": card, "amount": amount, "merchant": merchant, "ts": ts}
    )
    return buf.getvalue()


def stream(n: int, *, cards: int = 40, seed: int = 1) -> list[RawMessage]:
    """``n`` records on 3 partitions (a card always on one): mostly in order, ~3 % a little
    out of order (on time), every 97th one 10 minutes late, every 101st one malformed."""
    rng = random.Random(seed)
    out: list[RawMessage] = []
    offsets = [0, 0, 0]
    for i in range(n):
        card = f"card_{rng.randrange(cards):03d}"
        partition = zlib.crc32(card.encode()) % 3
        ts = T0 + i * 250
        if rng.random() < 0.03:
            ts -= rng.randrange(1, LATENESS_MS // 2)
        if i % 97 == 96:
            ts -= 600_000
        value = (
            b"\x00not avro"
            if i % 101 == 100
            else avro(card, rng.randrange(1, 50_000) / 100, f"m{rng.randrange(30)}", ts)
        )
        out.append(
            RawMessage(
                card.encode(), value, "transactions", partition, offsets[partition], (1, ts + 20)
            )
        )
        offsets[partition] += 1
    return out


def engine_reference(
    messages: list[RawMessage],
) -> tuple[dict[str, list[Row]], dict[str, list[Row]], int]:
    """Per entity: the rows of ``apply`` over its events in partition order, the rows a final
    flush adds (boundaries a live flow may or may not have passed yet), and the late count."""
    engine = ViewEngine(VIEW, clock=lambda: 0)
    from freshet.decode.decoder import decoder_for

    events = decoder_for(VIEW).decode(messages).events
    states: dict[str, Any] = {}
    applied: dict[str, list[Row]] = defaultdict(list)
    late = 0
    for entity, t, fields, partition, offset, _ in sorted(events, key=lambda e: (e[3], e[4])):
        state = states.setdefault(entity, engine.new_state())
        rows = engine.apply(state, entity, t, fields, partition, offset)
        if rows is None:
            late += 1
        else:
            applied[entity].extend(rows)
    flushed = {e: engine.flush(s, e, T0 + 10 * 86_400_000) for e, s in states.items()}
    return dict(applied), flushed, late


@dataclass
class MemoryIO:
    """A FlowIO without network: records from a list, rows to a list and a tmp Parquet dir."""

    messages: list[Any]
    root: Path
    online: list[tuple[str, Changes]] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    batch_size: int = 200

    def source(self, view: Any) -> TestingSource[Any]:
        return TestingSource(self.messages, batch_size=self.batch_size)

    def online_sink(self, view: Any) -> TestingSink[Any]:
        return TestingSink(self.online)

    def offline_sink(self, view: Any) -> ParquetSink:
        return ParquetSink(self.root, view, partitions=2, max_rows=5_000)

    def dead_letter_sink(self, view: Any) -> TestingSink[Any]:
        return TestingSink(self.dead)

    def online_rows(self) -> list[Row]:
        return [row for _, changes in self.online for row in changes.rows]


def offline_rows(root: Path) -> list[Row]:
    table = read_log(root, VIEW.name, sort=True)
    names = VIEW.layout().feature_names
    out = []
    for r in table.to_pylist():
        values = tuple(r[n] for n in names)
        out.append(
            Row(
                VIEW.name,
                r["entity"],
                int(r["as_of"].timestamp() * 1000),
                values,
                r["partition"],
                r["offset"],
            )
        )
    return out


def by_entity(rows: list[Row]) -> dict[str, list[Row]]:
    out: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        out[row.entity].append(row)
    return dict(out)


def assert_rows_follow_the_engine(
    rows: list[Row], messages: list[RawMessage], *, log: bool = False
) -> None:
    """Each entity's rows are the engine's apply rows plus a prefix of its expiry rows (those
    the wall-clock timers reached): none lost, none invented. Rows compare as sets: the engine
    may emit an expiry row identical to an event row, which the offline reader shows once.
    ``log``: ``rows`` were read from the offline log, which keeps no ``valid_until``."""
    applied, flushed, _ = engine_reference(messages)
    if log:
        applied = {e: [r._replace(valid_until=-1) for r in rs] for e, rs in applied.items()}
        flushed = {e: [r._replace(valid_until=-1) for r in rs] for e, rs in flushed.items()}
    got = by_entity(rows)
    assert set(got) == set(applied)
    for entity, expected in applied.items():
        mine = set(got[entity])
        assert set(expected) <= mine, entity
        extra = mine - set(expected)
        expiries = [r for r in flushed[entity] if r not in set(expected)]
        assert extra == set(expiries[: len(extra)]), entity


def metric(counter: Any, **labels: str) -> float:
    return float(counter.labels(**labels)._value.get())


def test_flow_rows_equal_the_engine_over_each_entitys_events(tmp_path: Path) -> None:
    messages = stream(3_000)
    io_ = MemoryIO(messages, tmp_path)
    run_main(build_flow([VIEW], io_, FlowOptions(shards=8)))
    assert_rows_follow_the_engine(io_.online_rows(), messages)
    # The offline log holds the same rows (identical coalescable rows once, by the reader).
    # The log keeps no valid_until (it is point-in-time; only Redis records carry it).
    online = {r._replace(valid_until=-1) for r in io_.online_rows()}
    assert sorted(set(offline_rows(tmp_path))) == sorted(online)


def test_rows_do_not_depend_on_batch_size_or_shard_count(tmp_path: Path) -> None:
    messages = stream(2_000, seed=5)
    a = MemoryIO(messages, tmp_path / "a", batch_size=1)
    b = MemoryIO(messages, tmp_path / "b", batch_size=1000)
    run_main(build_flow([VIEW], a, FlowOptions(shards=1)))
    run_main(build_flow([VIEW], b, FlowOptions(shards=256)))
    applied, _, _ = engine_reference(messages)
    for io_ in (a, b):
        got = by_entity(io_.online_rows())
        assert {e: rows[: len(applied[e])] for e, rows in got.items()} == applied


def test_malformed_and_late_records_become_dead_letters_and_are_counted(tmp_path: Path) -> None:
    messages = stream(3_000, seed=2)
    _, _, late = engine_reference(messages)
    before = {r: metric(metrics.EVENTS_IN, view=VIEW.name) for r in ("in",)}
    late_before = metric(metrics.EVENTS_LATE, view=VIEW.name)
    io_ = MemoryIO(messages, tmp_path)
    run_main(build_flow([VIEW], io_, FlowOptions(shards=8)))
    reasons = [d.reason for d in io_.dead]
    assert reasons.count("undecodable") == 3_000 // 101
    assert reasons.count("late") == late > 0
    assert metric(metrics.EVENTS_IN, view=VIEW.name) - before["in"] == 3_000
    assert metric(metrics.EVENTS_LATE, view=VIEW.name) - late_before == late
    late_letter = next(d for d in io_.dead if d.reason == "late")
    assert "watermark" in late_letter.error
    assert late_letter.view == VIEW.name


def test_late_events_are_only_counted_when_not_sent_to_dead_letters(tmp_path: Path) -> None:
    io_ = MemoryIO(stream(1_000, seed=3), tmp_path)
    run_main(build_flow([VIEW], io_, FlowOptions(shards=4, late_to_dead_letters=False)))
    assert {d.reason for d in io_.dead} == {"undecodable"}


class _CrashingPartition(StatefulSourcePartition[Any, int]):
    def __init__(self, source: CrashingSource, position: int) -> None:
        self._source = source
        self._position = position

    def next_batch(self) -> list[Any]:
        source, start = self._source, self._position
        if start in source.crash_at:
            source.crash_at.remove(start)
            raise AbortExecution()
        if start >= len(source.items):
            raise StopIteration()
        end = min([start + source.batch_size, *[c for c in source.crash_at if c > start]])
        self._position = min(end, len(source.items))
        return source.items[start : self._position]

    def snapshot(self) -> int:
        return self._position


@dataclass
class CrashingSource(FixedPartitionedSource[Any, int]):
    """A list source that aborts the execution once at each index of ``crash_at``.

    (``TestingSource.ABORT`` markers shift its resume index by one after the first resume.)
    """

    items: list[Any]
    crash_at: set[int]
    batch_size: int = 100

    def list_parts(self) -> list[str]:
        return ["0"]

    def build_part(
        self, step_id: str, for_part: str, resume_state: int | None
    ) -> _CrashingPartition:
        return _CrashingPartition(self, resume_state or 0)


@dataclass
class CrashingIO(MemoryIO):
    crash_at: set[int] = field(default_factory=set)

    def source(self, view: Any) -> Any:
        return CrashingSource(self.messages, self.crash_at, self.batch_size)


def test_crash_and_resume_from_snapshot_loses_and_duplicates_no_offline_row(tmp_path: Path) -> None:
    messages = stream(4_000, seed=4)
    clean = MemoryIO(messages, tmp_path / "clean")
    run_main(build_flow([VIEW], clean, FlowOptions(shards=8)))

    recovery = tmp_path / "recovery"
    recovery.mkdir()
    init_db_dir(recovery, 1)
    io_ = CrashingIO(messages, tmp_path / "crashed", batch_size=100, crash_at={1_500, 2_900})
    flow = build_flow([VIEW], io_, FlowOptions(shards=8, persist_state=True))
    for _ in range(3):  # two crashes, then to the end
        run_main(flow, epoch_interval=timedelta(0), recovery_config=RecoveryConfig(str(recovery)))
    assert not io_.crash_at
    # Replays added no copy of any row and lost none: the log equals the engine's rows (up to
    # the expiry rows wall-clock timers emitted, which differ with the run's duration).
    crashed = offline_rows(tmp_path / "crashed")
    assert len(crashed) == len(set(crashed))
    assert_rows_follow_the_engine(crashed, messages, log=True)
    assert_rows_follow_the_engine(offline_rows(tmp_path / "clean"), messages, log=True)


class FakeClock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def event(card: str, t: int, offset: int, amount: float = 10.0) -> tuple[Any, ...]:
    return (card, t, (amount, "m1"), 0, offset, t)


def shard_logic(
    clock: FakeClock, options: FlowOptions | None = None, resume: Any = None
) -> ShardLogic:
    engine = ViewEngine(VIEW, clock=clock)
    return ShardLogic(
        VIEW, engine, options or FlowOptions(persist_state=True), resume, clock_ms=clock
    )


def test_shard_timer_is_the_earliest_expiry_and_fires_expiry_rows() -> None:
    clock = FakeClock(T0)
    logic = shard_logic(clock)
    (out,), _ = logic.on_batch([[event("a", T0, 0)]])
    clock.now += 30_000  # b's event arrives 30 s later, in event time as in wall time
    logic.on_batch([[event("b", T0 + 30_000, 1)]])
    assert [r.entity for r in out.rows] == ["a"]
    assert out.kafka_ts == [T0]
    first = logic.notify_at()
    assert first is not None
    # The 5-minute count of card a expires first: its tile [T0, T0+10s) leaves at T0+5m10s.
    clock.now = int(first.timestamp() * 1000)
    (expired,), discard = logic.on_notify()
    assert [(r.entity, r.as_of) for r in expired.rows] == [("a", T0 + 310_000)]
    assert expired.rows[0].values[0] == 0
    assert expired.kafka_ts == [-1]
    assert not discard
    later = logic.notify_at()
    assert later is not None
    assert later > first
    clock.now = int(later.timestamp() * 1000)
    (expired,), _ = logic.on_notify()
    assert [(r.entity, r.as_of) for r in expired.rows] == [("b", T0 + 340_000)]


def _rows_at(logic: ShardLogic, clock: FakeClock, now_ms: int) -> list[tuple[str, int]]:
    clock.now = now_ms
    changes, _ = logic.on_notify()
    return [(r.entity, r.as_of) for c in changes for r in c.rows]


# Card a's first 5-minute tile [T0, T0+10s) leaves the window at T0+310s of event time. An idle
# entity's watermark is max_t - 5 s + (now - wall), so the expiry row is due at wall time
# T0+310s - max_t + 5 s + wall + 1 ms (ViewEngine.next_expiry).


def test_an_expiry_that_moves_later_fires_at_its_new_time_only() -> None:
    clock = FakeClock(T0)
    logic = shard_logic(clock)
    logic.on_batch([[event("a", T0, 0)]])
    first_due = T0 + 315_001
    assert logic.notify_at() == datetime.fromtimestamp(first_due / 1000, tz=UTC)
    # 200 s of wall time later, an event 1 ms newer in event time: the watermark restarts from
    # max_t, so the same tile now leaves 200 s later in wall time.
    clock.now = T0 + 200_000
    logic.on_batch([[event("a", T0 + 1, 1)]])
    moved_due = T0 + 310_000 - (T0 + 1) + 5_000 + (T0 + 200_000) + 1
    # A wake-up at the old time (or any time before the new one) emits nothing...
    assert _rows_at(logic, clock, first_due) == []
    assert _rows_at(logic, clock, moved_due - 1) == []
    # ...and the timer is still armed for the new time, where the row comes, once.
    assert logic.notify_at() == datetime.fromtimestamp(moved_due / 1000, tz=UTC)
    assert _rows_at(logic, clock, moved_due) == [("a", T0 + 310_000)]
    assert _rows_at(logic, clock, moved_due + 1) == []


def test_an_expiry_that_moves_earlier_fires_at_the_earlier_time() -> None:
    clock = FakeClock(T0)
    logic = shard_logic(clock)
    logic.on_batch([[event("a", T0, 0)]])
    # 1 s of wall time later an event 100 s newer in event time (a catch-up): the watermark
    # jumps with max_t, so the first tile leaves 99 s earlier in wall time.
    clock.now = T0 + 1_000
    logic.on_batch([[event("a", T0 + 100_000, 1)]])
    earlier_due = T0 + 310_000 - (T0 + 100_000) + 5_000 + (T0 + 1_000) + 1
    assert logic.notify_at() == datetime.fromtimestamp(earlier_due / 1000, tz=UTC)
    assert _rows_at(logic, clock, earlier_due - 1) == []
    assert _rows_at(logic, clock, earlier_due) == [("a", T0 + 310_000)]
    # The old, later heap entry is stale: it wakes the shard at most, with no row.
    assert _rows_at(logic, clock, T0 + 315_001) == []


def test_drained_entities_are_forgotten_and_an_empty_shard_discards_itself() -> None:
    clock = FakeClock(T0)
    logic = shard_logic(clock)
    logic.on_batch([[event("a", T0, 0)]])
    clock.now = T0 + 2 * 86_400_000  # every window of card a has expired
    changes, discard = logic.on_notify()
    assert changes
    assert changes[0].rows[-1].values[:4] == (0, 0.0, None, None)
    assert logic.notify_at() is None
    assert logic.snapshot() == {}
    assert discard is True


def test_snapshot_pickles_only_entities_that_changed() -> None:
    clock = FakeClock(T0)
    logic = shard_logic(clock)
    logic.on_batch([[event("a", T0, 0), event("b", T0, 1)]])
    first = logic.snapshot()
    assert first is not None
    assert set(first) == {"a", "b"}
    logic.on_batch([[event("a", T0 + 1_000, 2)]])
    second = logic.snapshot()
    assert second is not None
    assert second["b"][1] is first["b"][1]  # reused, not re-pickled
    assert second["a"][1] != first["a"][1]
    # Resuming loads entities lazily and continues exactly where the snapshot was.
    resumed = shard_logic(clock, resume=pickle.loads(pickle.dumps(second)))
    (out,), _ = resumed.on_batch([[event("b", T0 + 2_000, 3)]])
    (same,), _ = logic.on_batch([[event("b", T0 + 2_000, 3)]])
    assert out.rows == same.rows
    assert out.rows[-1].values[0] == 2
    assert resumed.notify_at() == logic.notify_at()


def pickled_total() -> float:
    return metrics.STATE_ENTITIES_PICKLED.labels(view=VIEW.name)._value.get()


def test_states_left_alone_are_pickled_ahead_and_the_snapshot_stays_exact() -> None:
    """With ``pickle_ahead_ms``, an entity untouched that long is pickled during the epoch, so
    the snapshot pickles only the recently changed ones, and still holds every entity's
    latest state (one changed again after its early pickle is pickled again)."""
    clock = FakeClock(T0)
    ahead = shard_logic(clock, FlowOptions(persist_state=True, pickle_ahead_ms=1_000))
    at_end = shard_logic(clock, FlowOptions(persist_state=True, pickle_ahead_ms=None))
    batches = [
        (0, [event("a", T0, 0), event("b", T0, 1)]),
        (1_500, [event("c", T0 + 1_500, 2)]),  # a and b left alone 1.5 s: pickled ahead
        (1_600, [event("a", T0 + 1_600, 3)]),  # a changes after its early pickle
    ]
    counts = []
    for now, events in batches:
        clock.now = T0 + now
        before = pickled_total()
        ahead.on_batch([events])
        at_end.on_batch([events])
        counts.append(pickled_total() - before)
    assert counts == [0, 2, 0]
    before = pickled_total()
    snapshot = ahead.snapshot()
    assert pickled_total() - before == 2  # c and a again; b's early bytes are kept
    expected = at_end.snapshot()
    assert snapshot is not None
    assert expected is not None
    assert snapshot.keys() == expected.keys() == {"a", "b", "c"}
    for entity in expected:
        next_at, state = snapshot[entity]
        assert (next_at, pickle.loads(state)) == (
            expected[entity][0],
            pickle.loads(expected[entity][1]),
        )


def test_without_recovery_shards_skip_pickling() -> None:
    logic = shard_logic(FakeClock(T0), FlowOptions(persist_state=False))
    logic.on_batch([[event("a", T0, 0)]])
    assert logic.snapshot() is None


@pytest.mark.parametrize("seed", ["1", "2"])
def test_an_entity_has_the_same_shard_in_every_process(seed: str) -> None:
    # Every process of a cluster, and every restart, must route an entity to the same state.
    code = (
        "from freshet.stream.pipeline import shard_of; "
        "print([shard_of(f'card_{i}', 256) for i in range(50)])"
    )
    env = {**os.environ, "PYTHONHASHSEED": seed}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == str([shard_of(f"card_{i}", 256) for i in range(50)])
    keys = shard_keys(256)
    assert keys[0] == "000"
    assert keys[255] == "255"
    assert len(set(keys)) == 256


def test_flow_options_reject_a_shard_count_out_of_range() -> None:
    with pytest.raises(ValueError, match="shards=0"):
        FlowOptions(shards=0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("earliest", "earliest"),
        ("latest", "latest"),
        ("1714521600000", 1_714_521_600_000),
        ("2024-05-01T00:00:00Z", 1_714_521_600_000),
        ("2024-05-01T02:00:00+02:00", 1_714_521_600_000),
        ("2024-05-01", 1_714_521_600_000),
    ],
)
def test_start_positions(text: str, expected: object) -> None:
    assert parse_start(text) == expected


def test_relative_start_positions_count_back_from_now() -> None:
    before = time.time_ns() // 1_000_000
    start = parse_start("-2h")
    assert isinstance(start, int)
    assert before - 2 * 3_600_000 <= start <= time.time_ns() // 1_000_000 - 2 * 3_600_000


@pytest.mark.parametrize("text", ["yesterday", "2024-05-01T00:00:00", "1714521600"])
def test_bad_start_positions_name_the_value(text: str) -> None:
    with pytest.raises(click.BadParameter, match=text[:10]):
        parse_start(text)


def test_child_processes_get_every_option_but_the_process_count() -> None:
    ctx = run.make_context(
        "run",
        ["card_txn", "-p", "2", "-w", "2", "--stop-at-end", "--no-late-to-dlq", "--from", "latest"],
    )
    argv = _child_argv(ctx)
    assert argv[0] == "card_txn"
    assert "-p" not in argv
    assert "--processes" not in argv
    assert argv[argv.index("--workers") + 1] == "2"
    assert "--stop-at-end" in argv
    assert "--no-late-to-dlq" in argv
    assert argv[argv.index("--from") + 1] == "latest"


def test_a_resumed_flow_clock_skips_the_downtime() -> None:
    # Crashed at flow time 1,000,000 (newest of two processes), restarted 60 s later, 10 s
    # snapshots: the clock resumes 10 s before the crash, 70 s behind real time.
    assert clock_offset([990_000, 1_000_000], 1_060_000, 10) == 70_000
    assert clock_offset([], 1_060_000, 10) == 0


def test_the_flow_freezes_gc_survivors_and_still_collects_young_cycles() -> None:
    class Node:
        def __init__(self) -> None:
            self.me = self  # a reference cycle: only the cyclic GC can free it

    callback = freeze_gc_survivors()
    try:
        before = gc.get_freeze_count()
        survivors = [Node() for _ in range(100)]
        garbage = Node()
        dead = weakref.ref(garbage)
        del garbage
        gc.collect(0)
        # What survived the collection is frozen (never traversed again); the young cycle
        # that had died is collected.
        assert gc.get_freeze_count() >= before + len(survivors)
        assert dead() is None
    finally:
        gc.callbacks.remove(callback)
        gc.unfreeze()


def test_a_recovery_dir_refuses_another_shard_count(tmp_path: Path) -> None:
    layout = init_recovery(tmp_path, 2, {"shards": 256, "parquet_partitions": 2}, create=True)
    assert layout == {"shards": 256, "parquet_partitions": 2}
    assert len(list(tmp_path.glob("part-*.sqlite3"))) == 2
    # A later start with more workers keeps the first run's Parquet writer names.
    again = init_recovery(tmp_path, 4, {"shards": 256, "parquet_partitions": 4}, create=True)
    assert again["parquet_partitions"] == 2
    with pytest.raises(RecoveryDirError, match="--shards 128 differs from the 256"):
        init_recovery(tmp_path, 2, {"shards": 128, "parquet_partitions": 2}, create=True)


@pytest.mark.parametrize("recovery", [True, False])
def test_the_offline_sink_waits_for_its_snapshot_commit_only_with_recovery(
    tmp_path: Path, recovery: bool
) -> None:
    sink = ParquetSink(tmp_path, VIEW, commit_at_snapshot=recovery)
    part = sink.build_part("parquet", sink.list_parts()[0], None)
    row = Row(VIEW.name, "card_1", 1_714_564_800_000, (1, 2.5, 2.5, 2.5, "m1", 1), 0, 7)

    part.write_batch([[row]])
    state = part.snapshot()

    # With recovery the snapshot's state covers the row, so it is on disk when it returns;
    # without, no state is kept and the commit it started ends on the writer's thread.
    assert state == (WriterState(1) if recovery else None)
    part.close()
    assert len(segment_paths(tmp_path, VIEW.name)) == 1
    assert read_log(tmp_path, VIEW.name).num_rows == 1
