"""Engine shards with a state directory (``FlowOptions.state_dir``): snapshots are pointers
into per-shard segment files, an epoch writes only the entities that changed, a resume ignores
what was written after the committed pointer, idle entities leave memory and come back with the
same rows, compaction loses nothing."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import Any

import pytest

from freshet.dsl.definitions import Aggregation, Entity, Feature, FeatureView, Source
from freshet.engine.view_engine import ViewEngine
from freshet.sinks.rows import Row
from freshet.stream import pipeline, state_store
from freshet.stream.pipeline import FlowOptions, ShardLogic, shard_keys, shard_of
from freshet.stream.state_store import SegmentStore, StatePointer

T0 = 1_714_521_600_000  # 2024-05-01T00:00:00Z
SHARDS = 1
SHARD = shard_keys(SHARDS)[0]

# Windows of a few seconds plus lifetime aggregates: drained states cannot be dropped, so they
# stay in the store and must come back from it.
VIEW = FeatureView(
    name="store_view",
    version=1,
    entity=Entity(name="card", key="card_id"),
    source=Source(
        topic="transactions", encoding="avro", schema="transaction.avsc", event_time_field="ts"
    ),
    features=(
        Feature("n_4s", Aggregation.COUNT, window="4s", hop="1s"),
        Feature("sum_6s", Aggregation.SUM, "amount", window="6s", hop="2s"),
        Feature("n_life", Aggregation.COUNT),
        Feature("sum_life", Aggregation.SUM, "amount"),
        Feature("last", Aggregation.LAST, "merchant"),
    ),
    allowed_lateness_seconds=1,
)


class FakeClock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def event(card: str, t: int, offset: int, amount: float = 10.0) -> tuple[Any, ...]:
    return (card, t, (amount, "m1"), 0, offset, t)


def logic(clock: FakeClock, state_dir: Path | None, resume: Any = None) -> ShardLogic:
    options = FlowOptions(
        shards=SHARDS, persist_state=True, state_dir=state_dir, pickle_ahead_ms=1_000
    )
    return ShardLogic(VIEW, ViewEngine(VIEW, clock=clock), options, resume, clock_ms=clock)


def rows(out: Any) -> list[Row]:
    return [row for changes in out[0] for row in changes.rows]


def segment_files(state_dir: Path) -> list[Path]:
    return sorted((state_dir / VIEW.name).glob("*.seg"))


def test_an_epoch_writes_only_the_entities_that_changed(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    shard = logic(clock, tmp_path)
    shard.on_batch([[event(f"c{i}", T0, i) for i in range(200)]])
    first = shard.snapshot()
    assert isinstance(first, StatePointer)
    assert len(first) == 200
    per_entity = first.end / 200
    clock.now += 500
    shard.on_batch([[event(f"c{i}", T0 + 500, 200 + i) for i in range(3)]])
    second = shard.snapshot()
    assert isinstance(second, StatePointer)
    assert len(second) == 200
    assert 0 < second.end - first.end < 3 * per_entity * 1.5
    # A snapshot is a few dozen bytes, however many entities the shard holds.
    assert len(pickle.dumps(second)) < 200


def test_resume_truncates_what_an_uncommitted_epoch_wrote(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    crashed = logic(clock, tmp_path)
    reference = logic(clock, None)
    first = [[event("a", T0, 0), event("b", T0, 1)]]
    crashed.on_batch(first)
    reference.on_batch(first)
    committed = crashed.snapshot()
    reference_snapshot = reference.snapshot()
    # The next epoch's records reach the files, but Bytewax never commits its snapshot.
    crashed.on_batch([[event("a", T0 + 100, 2, amount=99.0), event("z", T0 + 100, 3)]])
    crashed.snapshot()
    assert isinstance(committed, StatePointer)
    assert segment_files(tmp_path)[0].stat().st_size > committed.end

    resumed = logic(clock, tmp_path, resume=pickle.loads(pickle.dumps(committed)))
    assert segment_files(tmp_path)[0].stat().st_size == committed.end
    again = logic(clock, None, resume=reference_snapshot)
    clock.now += 200
    replay = [[event("a", T0 + 200, 2, amount=5.0), event("b", T0 + 200, 3)]]
    assert rows(resumed.on_batch(replay)) == rows(again.on_batch(replay))
    assert resumed.notify_at() == again.notify_at()
    assert sorted(resumed._saved.entities()) == ["a", "b"]


def test_states_pickled_ahead_are_written_ahead_and_the_snapshot_writes_only_the_rest(
    tmp_path: Path,
) -> None:
    """Entities left alone for ``pickle_ahead_ms`` reach the file during the epoch (once
    ``FLUSH_AHEAD_BYTES`` wait); a resume from the previous pointer still truncates them."""
    clock = FakeClock(T0)
    shard = logic(clock, tmp_path)
    shard.on_batch([[event("seed", T0, 0)]])
    committed = shard.snapshot()
    assert isinstance(committed, StatePointer)
    cards = [f"c{i}" for i in range(200)]
    shard.on_batch([[event(card, T0, 1 + i) for i, card in enumerate(cards)]])
    clock.now += 1_000  # left alone for pickle_ahead_ms: pickled and written by the next batch
    shard.on_batch([[event("late-comer", T0 + 1_000, 500)]])
    (path,) = segment_files(tmp_path)
    ahead = path.stat().st_size - committed.end
    assert ahead > 200 * 100  # the 200 states are in the file before any snapshot
    assert shard._saved.pending_bytes < pipeline.FLUSH_AHEAD_BYTES

    second = shard.snapshot()
    assert isinstance(second, StatePointer)
    assert len(second) == 202
    assert second.end - committed.end - ahead < 1_000  # the snapshot wrote one state

    resumed = logic(clock, tmp_path, resume=committed)  # that epoch was never committed
    assert path.stat().st_size == committed.end
    assert sorted(resumed._saved.entities()) == ["seed"]


def test_pending_bytes_count_each_entitys_latest_record_once(tmp_path: Path) -> None:
    store = SegmentStore(tmp_path, "s0")
    store.open(None)
    store.put("a", 5, b"x" * 10)
    store.put("a", 6, b"y" * 30)  # replaces the first
    store.put("b", None, b"z" * 7)
    store.put("b", None, None)  # dropped before it was ever written: nothing to write
    assert store.pending_bytes == 16 + 1 + 30
    assert store.flush() == 47
    assert store.pending_bytes == 0


def test_idle_entities_leave_memory_and_come_back_with_the_same_rows(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    stored = logic(clock, tmp_path)
    kept = logic(clock, None)  # no state dir: every state stays in memory
    batch = [[event("a", T0, 0, amount=3.0), event("a", T0 + 10, 1), event("b", T0, 2)]]
    stored.on_batch(batch)
    kept.on_batch(batch)
    # Past the longest window + lateness: every expiry row is out, only lifetime state is left.
    for now in range(T0 + 1_000, T0 + 20_000, 1_000):
        clock.now = now
        assert rows(stored.on_notify()) == rows(kept.on_notify())
    assert stored.notify_at() is None
    stored.snapshot()
    kept.snapshot()
    assert not stored._states
    assert set(kept._states) == {"a", "b"}
    clock.now = T0 + 30_000
    later = [[event("a", T0 + 30_000, 3, amount=7.0)]]
    back = rows(stored.on_batch(later))
    assert back == rows(kept.on_batch(later))
    assert back[-1].values[2:4] == (3, 20.0)  # n_life, sum_life: the history came back


def test_compaction_keeps_every_state_and_deletes_old_generations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(state_store, "COMPACT_MIN_BYTES", 1)
    clock = FakeClock(T0)
    shard = logic(clock, tmp_path)
    reference = logic(clock, None)
    pointer: Any = None
    offset = 0
    for epoch in range(30):
        clock.now = T0 + epoch * 500
        batch = [[event(f"c{(epoch + i) % 7}", clock.now, offset + i) for i in range(5)]]
        offset += 5
        assert rows(shard.on_batch(batch)) == rows(reference.on_batch(batch))
        pointer = shard.snapshot()
        reference.snapshot()
        running = shard._saved._compaction
        if running is not None:  # epochs are seconds apart: the background copy is done
            running.future.result()
    assert pointer.generation >= 2
    # The current generation, the one before it (a resume may still point there) and a copy
    # that is done but not switched to yet (the shard's next activation would).
    assert len(segment_files(tmp_path)) <= 3
    resumed = logic(clock, tmp_path, resume=pointer)
    assert segment_files(tmp_path) == [
        tmp_path / VIEW.name / f"{SHARD}.{pointer.generation:06d}.seg"
    ]
    clock.now += 500
    batch = [[event(f"c{i}", clock.now, offset + i) for i in range(7)]]
    assert rows(resumed.on_batch(batch)) == rows(reference.on_batch(batch))


class HeldExecutor(Executor):
    """Runs a submitted call only when the test says so (the compaction thread, paused)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Future[Any], Callable[[], Any]]] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self.calls.append((future, lambda: fn(*args, **kwargs)))
        return future

    def run_all(self) -> None:
        for future, call in self.calls:
            future.set_result(call())
        self.calls.clear()


def test_compaction_copies_in_the_background_while_the_shard_appends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records appended, replaced and dropped while the copy runs are all in the new
    generation after the switch; a store opened from its pointer holds the same states."""
    monkeypatch.setattr(state_store, "COMPACT_MIN_BYTES", 1)
    held = HeldExecutor()
    store = SegmentStore(tmp_path, "s0", compactor=held)
    store.open(None)
    expected: dict[str, bytes] = {}
    for round_ in range(3):  # mostly garbage: each entity written three times
        for i in range(50):
            expected[f"e{i}"] = f"r{round_}-{i}".encode() * 5
            store.put(f"e{i}", i, expected[f"e{i}"])
        store.flush()
    for _ in range(state_store.COMPACT_AFTER_SNAPSHOTS):
        old = store.snapshot()
    assert not store.maybe_compact()  # the copy is submitted, not run on this thread
    assert len(held.calls) == 1
    # The shard goes on while the copy waits: replaced, dropped and new entities.
    expected["e1"] = b"replaced during the copy"
    store.put("e1", 1, expected["e1"])
    store.put("e2", None, None)
    del expected["e2"]
    expected["new"] = b"added during the copy"
    store.put("new", None, expected["new"])
    store.flush()
    assert not store.maybe_compact()  # still copying: nothing switches
    assert store.snapshot().generation == old.generation

    held.run_all()
    assert store.maybe_compact()  # the switch, on the shard's next activation
    pointer = store.snapshot()
    assert pointer.generation == old.generation + 1
    assert {e: store.get(e) for e in store.entities()} == expected
    # Only live records and the tail appended during the copy (three of them) are left.
    live = sum(len(v) + len(e) + 16 for e, v in expected.items())
    assert pointer.end < live + 3 * 64
    reopened = SegmentStore(tmp_path, "s0")
    reopened.open(pointer)
    assert {e: reopened.get(e) for e in reopened.entities()} == expected
    assert dict(reopened.timers()) == {f"e{i}": i for i in range(50) if i != 2}
    store.close()
    reopened.close()


def test_a_kill_during_a_copy_resumes_from_the_older_generation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(state_store, "COMPACT_MIN_BYTES", 1)
    held = HeldExecutor()
    store = SegmentStore(tmp_path, "s0", compactor=held)
    store.open(None)
    for round_ in range(3):
        for i in range(10):
            store.put(f"e{i}", None, bytes([round_]) * 20)
        store.flush()
    for _ in range(state_store.COMPACT_AFTER_SNAPSHOTS):
        pointer = store.snapshot()
    store.maybe_compact()
    held.calls[0][1]()  # the copy ran; the process is killed before the shard switches
    assert len(list(tmp_path.glob("*.seg"))) == 2
    reopened = SegmentStore(tmp_path, "s0")
    reopened.open(pointer)
    assert {e: reopened.get(e) for e in reopened.entities()} == {
        f"e{i}": bytes([2]) * 20 for i in range(10)
    }
    assert [p.name for p in tmp_path.glob("*.seg")] == [f"s0.{pointer.generation:06d}.seg"]
    reopened.close()


def test_a_shard_started_again_without_resume_state_keeps_the_committed_files(
    tmp_path: Path,
) -> None:
    """A shard emptied and discarded, then started again by a new event in an epoch Bytewax
    never commits: the restart resumes the pointer before, whose file must still be there."""
    clock = FakeClock(T0)
    first = logic(clock, tmp_path)
    reference = logic(clock, None)
    batch = [[event("a", T0, 0)]]
    first.on_batch(batch)
    reference.on_batch(batch)
    committed = first.snapshot()
    reference_snapshot = reference.snapshot()
    again = logic(clock, tmp_path)  # builder(None): the shard's next life
    out = rows(again.on_batch([[event("a", T0 + 1, 1)]]))
    assert out[-1].values[2] == 1  # n_life counts only this life's event
    again.snapshot()
    resumed = logic(clock, tmp_path, resume=committed)
    assert len(segment_files(tmp_path)) == 1
    clock.now += 10
    batch = [[event("a", T0 + 10, 2)]]
    back = rows(resumed.on_batch(batch))
    assert back == rows(logic(clock, None, resume=reference_snapshot).on_batch(batch))
    assert back[-1].values[2] == 2


def test_a_whole_dict_snapshot_moves_into_the_store(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    old = logic(clock, None)
    old.on_batch([[event("a", T0, 0), event("b", T0, 1)]])
    snapshot = old.snapshot()
    assert isinstance(snapshot, dict)
    moved = logic(clock, tmp_path, resume=snapshot)
    pointer = moved.snapshot()
    assert isinstance(pointer, StatePointer)
    assert len(pointer) == 2
    assert pointer.shard == shard_keys(SHARDS)[shard_of("a", SHARDS)]
    clock.now += 100
    batch = [[event("a", T0 + 100, 2)]]
    assert rows(moved.on_batch(batch)) == rows(old.on_batch(batch))


def test_a_pointer_past_the_end_of_its_file_is_refused(tmp_path: Path) -> None:
    store = SegmentStore(tmp_path, SHARD)
    with pytest.raises(state_store.StateStoreError, match="new --recovery-dir"):
        store.open(StatePointer(SHARD, 0, 100, 1))
