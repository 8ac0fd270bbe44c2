"""The streaming dataflow behind ``freshet run``: Kafka -> decode -> engine -> Redis + Parquet.

One sub-flow per view, reading top to bottom in :func:`build_flow`::

    Kafka partitions ──> decode (batch) ──> group by shard ──> engine shard (stateful_batch)
                              │ dead letters                      │ Changes: rows, late
                              v                                   ├──> Redis (newer-wins, freshness)
                         dead-letter topic <── late events ───────┤
                                                                  └──> Parquet segments

Shards, not one key per entity: a shard's state (``crc32(entity) % shards``, default 256)
holds a dict of entity states. Bytewax scans every key with a pending timer on every activation
and snapshots every touched key at every epoch, so fewer, fatter keys win. A shard keeps one
timer (the earliest ``next_expiry`` of its entities, from a heap) and pickles only what
changed: an entity's state is pickled after it changed, and its bytes are reused while it stays
clean; resuming unpickles an entity only when it is next touched. An entity left alone for
``FlowOptions.pickle_ahead_ms`` (200 ms) is pickled during the epoch rather than at its
snapshot, which then pickles only the recently changed ones: Bytewax snapshots every shard at
once, and the flow stops reading until the epoch's snapshots are written (its backpressure),
so the snapshot's length is a stall in freshness (at 5,000 events/s over 100,000 cards: 2 s
ahead left ~9,000 states for the snapshot, 90-150 ms; 200 ms ahead, ~1,000). The
measurements behind these choices, and the flow's speed, are in ``tests/bench/README.md``.

Where the pickled states live (:mod:`freshet.stream.state_store`): with
``FlowOptions.state_dir`` (``freshet run --recovery-dir`` sets it), in append-only segment
files of the shard's own, and Bytewax's snapshot is a small pointer into them, so an epoch
writes only the entities that changed in it; an entity with nothing left to expire then leaves
memory once its state is saved, and is read back when its next event arrives. Without it, the
snapshot is the shard's whole dict of pickled states.

Usage (``freshet run`` does this with :class:`freshet.stream.connectors.KafkaIO`)::

    flow = build_flow([view], io, FlowOptions(shards=256, persist_state=True))
    bytewax.run.cli_main(flow, workers_per_process=1)

Exactly-once through the readers. Resume = the last snapshot's Kafka offsets + engine state;
rows emitted after it are emitted again. Redis is newer-wins on ``(as_of, offset)``, so
replays are no-ops. Each Parquet sink partition flushes its buffer into a segment at every
snapshot (nothing acknowledged lives only in memory) and the offline reader drops replayed
duplicates.

Clocks. Event time drives windows; expiry timers are wall clock (``ViewEngine.next_expiry``),
so idle entities' windows drain on time. The engine's rows never depend on when timers fire:
they are a function of each entity's event sequence (Kafka keeps per-key order), never of
batch boundaries, worker count or timer timing, so replaying on-time input reproduces the live
rows exactly.
"""

from __future__ import annotations

import heapq
import logging
import pickle
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, NamedTuple, Protocol

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import Sink

from freshet.decode.decoder import decoder_for, shard_groups
from freshet.decode.messages import DeadLetter
from freshet.decode.schema_registry import SchemaRegistry
from freshet.dsl.definitions import FeatureView
from freshet.engine.view_engine import EntityState, ViewEngine
from freshet.sinks.clock import now_ms
from freshet.sinks.events import Event
from freshet.sinks.faults import crash_point
from freshet.sinks.rows import Row
from freshet.stream import metrics
from freshet.stream.deadletter import late_letter
from freshet.stream.shutdown import STOP
from freshet.stream.state_store import DictStates, SegmentStore, StatePointer

__all__ = [
    "DEFAULT_SHARDS",
    "Changes",
    "FlowIO",
    "FlowOptions",
    "ShardLogic",
    "build_flow",
    "flow_clock",
    "rows_between",
    "shard_keys",
    "shard_of",
]

log = logging.getLogger(__name__)

DEFAULT_SHARDS = 256

StartAt = Literal["earliest", "latest"] | int  # int: epoch milliseconds
# With a state dir, a shard writes the states pickled ahead once this many bytes wait.
FLUSH_AHEAD_BYTES = 4096


@dataclass(frozen=True, kw_only=True)
class FlowOptions:
    """How a flow runs (the views say what it computes).

    ``persist_state``: snapshots are kept (recovery on); when off, shards skip pickling.
    ``state_dir``: with ``persist_state``, where shards keep their entity states (segment
    files, one directory per view); the snapshots only point into it. None: each snapshot
    holds the shard's whole dict of states.
    ``late_to_dead_letters``: late events go to the dead-letter topic too (they are always
    counted). ``flush_until_ms``: a bounded replay's end — at end of input every boundary up
    to it is emitted (``ViewEngine.flush``); None for live runs. ``rows_between``: a replay's
    ``(from, to)`` — only rows with ``as_of`` in ``[from, to]`` leave the engine (the ones
    before are its window history). ``clock_offset_ms``: the engine's wall clock is ``now -
    clock_offset_ms`` (see :func:`flow_clock`).
    """

    shards: int = DEFAULT_SHARDS
    persist_state: bool = False
    late_to_dead_letters: bool = True
    flush_until_ms: int | None = None
    rows_between: tuple[int, int] | None = None
    clock_offset_ms: int = 0
    # Avro views read the Confluent wire format with writer schemas from this registry.
    schema_registry_url: str | None = None
    # With recovery: pickle an entity's state once it has been left alone this long (wall ms),
    # instead of all changed entities at the epoch's snapshot (None: only at the snapshot).
    pickle_ahead_ms: int | None = 200
    state_dir: Path | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.shards <= 65_536:
            raise ValueError(f"shards={self.shards} must be between 1 and 65536")
        if self.pickle_ahead_ms is not None and self.pickle_ahead_ms < 0:
            raise ValueError(f"pickle_ahead_ms={self.pickle_ahead_ms} must be >= 0")


class Changes(NamedTuple):
    """What one engine shard emits per activation.

    ``kafka_ts[i]`` is the Kafka timestamp (ms) of the event that caused ``rows[i]``, -1 for
    expiry rows (they have no source record): the Redis sink turns it into freshness.
    """

    rows: list[Row]
    kafka_ts: list[int]
    late: list[DeadLetter]


class FlowIO(Protocol):
    """Where a flow reads and writes: in production a
    :class:`freshet.stream.connectors.KafkaIO`; unit tests pass ``TestingSource``/``TestingSink``
    and a tmp Parquet dir."""

    def source(self, view: FeatureView) -> Source[Any]:
        """Items: ``KafkaSourceMessage``-like records (``freshet.decode.decoder.SourceMessage``)."""
        ...

    def online_sink(self, view: FeatureView) -> Sink[tuple[str, Changes]]: ...

    def offline_sink(self, view: FeatureView) -> Sink[tuple[str, list[Row]]]: ...

    def dead_letter_sink(self, view: FeatureView) -> Sink[DeadLetter]: ...


def shard_keys(shards: int) -> tuple[str, ...]:
    """The shard keys of a flow with ``shards`` shards (zero-padded, so they sort)."""
    width = len(str(shards - 1))
    return tuple(f"{i:0{width}d}" for i in range(shards))


def shard_of(entity: str, shards: int) -> int:
    """The shard of ``entity``: crc32, the same in every process and run (``hash`` is not)."""
    return zlib.crc32(entity.encode("utf-8", "surrogateescape")) % shards


class _Batch(NamedTuple):
    """One decoded poll: events grouped by shard, and the records that could not be used."""

    groups: list[tuple[str, list[Event]]]
    dead: list[DeadLetter]


class _Decode:
    """Decodes a poll of Kafka records and groups the events by shard (entity -> crc32)."""

    def __init__(self, view: FeatureView, shards: int, registry_url: str | None = None) -> None:
        registry = SchemaRegistry(registry_url) if registry_url else None
        self._decoder = decoder_for(view, registry=registry)
        self._keys = shard_keys(shards)
        self._shards = shards
        self._events_in = metrics.EVENTS_IN.labels(view=view.name)
        self._decoded = metrics.EVENTS_DECODED.labels(view=view.name)

    def __call__(self, messages: list[Any]) -> list[_Batch]:
        self._events_in.inc(len(messages))
        decoded = self._decoder.decode(messages)
        self._decoded.inc(len(decoded.events))
        groups = shard_groups(decoded.events, self._shards)
        keys = self._keys
        return [_Batch([(keys[s], g) for s, g in groups.items()], decoded.dead)]


def _groups(batch: _Batch) -> list[tuple[str, list[Event]]]:
    return batch.groups


def _dead(batch: _Batch) -> list[DeadLetter]:
    return batch.dead


def _rows(changes: Changes) -> list[Row] | None:
    return changes.rows or None


def _late(keyed: tuple[str, Changes]) -> list[DeadLetter]:
    return keyed[1].late


def rows_between(
    rows: list[Row], kafka_ts: list[int], lo: int, hi: int
) -> tuple[list[Row], list[int]]:
    """The rows with ``as_of`` in ``[lo, hi]``, with their Kafka timestamps."""
    keep = [i for i, row in enumerate(rows) if lo <= row[2] <= hi]  # row[2]: Row.as_of
    if len(keep) == len(rows):
        return rows, kafka_ts
    return [rows[i] for i in keep], [kafka_ts[i] for i in keep]


def flow_clock(offset_ms: int) -> Callable[[], int]:
    """The flow's wall clock: real time minus the time the flow was down.

    Entities' watermarks advance with this clock while they are idle. After a crash, ``freshet
    run`` resumes it where the last snapshot left it (``offset_ms`` = downtime), so the replay
    sees the idle times the first run saw: an event on time then is on time now, and the
    resumed flow computes the rows an uninterrupted run computes.
    """
    if offset_ms == 0:
        return now_ms
    return lambda: now_ms() - offset_ms


# A shard's snapshot without a state dir: entity -> (its next expiry in wall-clock ms or None,
# pickled EntityState); with one, a StatePointer into the shard's segment files.
ShardSnapshot = dict[str, tuple[int | None, bytes]]
ShardResume = ShardSnapshot | StatePointer | None


class ShardLogic(StatefulBatchLogic[list[Event], Changes, ShardResume]):
    """The engine for the entities of one shard, with one wall-clock timer for all of them."""

    def __init__(
        self,
        view: FeatureView,
        engine: ViewEngine,
        options: FlowOptions,
        resume: ShardResume,
        *,
        clock_ms: Callable[[], int],
    ) -> None:
        self._view = view
        self._engine = engine
        self._options = options
        self._clock_ms = clock_ms  # the engine's clock too
        self._offset_ms = options.clock_offset_ms
        self._states: dict[str, EntityState] = {}
        # Clean entities' pickled states, reused by the next snapshot (and resume state).
        self._saved: DictStates | SegmentStore = DictStates(None)
        self._store_dir = (
            options.state_dir / view.name if options.persist_state and options.state_dir else None
        )
        if self._store_dir is None:
            if isinstance(resume, StatePointer):
                raise ValueError(
                    f"shard {resume.shard} of view {view.name!r} resumes from a state directory "
                    "snapshot; run it with FlowOptions.state_dir"
                )
            self._saved = DictStates(resume)
        elif isinstance(resume, StatePointer):
            self._saved = self._open_store(resume.shard, resume)
        elif resume:  # a whole-dict snapshot of an earlier version: moved into the store
            self._saved = self._open_store(self._shard_key(next(iter(resume))), None)
            for entity, (next_at, saved) in resume.items():
                self._saved.put(entity, next_at, saved)
            self._saved.flush()
        # else: the store is opened by the first batch, which names the shard
        self._store_unopened = self._store_dir is not None and isinstance(self._saved, DictStates)
        # Recovery: entities changed since their state was last pickled, least recently
        # changed first (entity -> flow-clock ms of its last change).
        self._dirty: dict[str, int] = {}
        # Timers. ``_next_at``: entity -> its next expiry (wall ms). The heap holds at most one
        # live entry per entity, ``_heaped[entity]``, at or before that time: an expiry that
        # moves later (every event moves it with the wall clock) is not pushed again; its entry
        # is re-pushed when it comes due early. Entries of entities whose time moved earlier or
        # went away are stale and skipped (lazy deletion).
        self._next_at: dict[str, int] = {}
        self._heaped: dict[str, int] = {}
        self._heap: list[tuple[int, str]] = []
        for entity, next_at in self._saved.timers():
            self._next_at[entity] = next_at
            self._heaped[entity] = next_at
            self._heap.append((next_at, entity))
        heapq.heapify(self._heap)
        self._late_counter = metrics.EVENTS_LATE.labels(view=view.name)
        self._rows_counter = metrics.ROWS_EMITTED.labels(view=view.name)
        self._pickled_counter = metrics.STATE_ENTITIES_PICKLED.labels(view=view.name)
        self._bytes_counter = metrics.STATE_BYTES_WRITTEN.labels(view=view.name)

    def _shard_key(self, entity: str) -> str:
        shards = self._options.shards
        return shard_keys(shards)[shard_of(entity, shards)]

    def _open_store(self, shard: str, pointer: StatePointer | None) -> SegmentStore:
        assert self._store_dir is not None
        store = SegmentStore(self._store_dir, shard)
        store.open(pointer)
        return store

    @classmethod
    def builder(
        cls, view: FeatureView, options: FlowOptions
    ) -> Callable[[ShardResume], ShardLogic]:
        clock = flow_clock(options.clock_offset_ms)
        engine = ViewEngine(view, clock=clock)
        return lambda resume: cls(view, engine, options, resume, clock_ms=clock)

    def _state(self, entity: str) -> EntityState:
        state = self._states.get(entity)
        if state is None:
            saved = self._saved.get(entity)
            state = self._engine.new_state() if saved is None else pickle.loads(saved)
            self._states[entity] = state
        return state

    def _schedule(self, entity: str, state: EntityState) -> None:
        next_at = self._engine.next_expiry(state)
        if next_at is None:
            self._next_at.pop(entity, None)
            return
        self._next_at[entity] = next_at
        heaped = self._heaped.get(entity)
        if heaped is None or next_at < heaped:
            self._arm(entity, next_at)

    def _arm(self, entity: str, at: int) -> None:
        """Make ``at`` the entity's live heap entry (any earlier one becomes stale)."""
        self._heaped[entity] = at
        heapq.heappush(self._heap, (at, entity))

    def on_batch(self, values: list[list[Event]]) -> tuple[Iterable[Changes], bool]:
        rows: list[Row] = []
        kafka_ts: list[int] = []
        late_events: list[Event] = []
        touched: dict[str, EntityState] = {}
        if self._store_unopened:
            first = next((events[0][0] for events in values if events), None)
            if first is not None:  # a shard without resume state: a new generation of files
                self._saved = self._open_store(self._shard_key(first), None)
                self._store_unopened = False
        # The engine's compiled loop over a batch: no Python call per event.
        apply_batch = self._engine.apply_batch
        states = self._states
        for events in values:
            apply_batch(states, events, self._state, rows, kafka_ts, late_events, touched)
        # A late letter names the entity's watermark after the batch (at least the one that
        # refused the event: watermarks never go back).
        late = [self._late_letter(states[event[0]], event) for event in late_events]
        # Once per entity and batch: a hot entity's expiry is looked up once, not per event.
        for entity, state in touched.items():
            self._schedule(entity, state)
        if self._options.persist_state:
            self._changed(touched)
            self._saved.maybe_compact()
        return self._emit(rows, kafka_ts, late), StatefulBatchLogic.RETAIN

    def _changed(self, entities: Iterable[str]) -> None:
        """Marks ``entities`` changed now, then pickles the states left alone for
        ``pickle_ahead_ms`` (see :meth:`snapshot`)."""
        now = self._clock_ms()
        dirty = self._dirty
        pop = dirty.pop
        for entity in entities:
            pop(entity, None)  # to the end: the order is by last change
            dirty[entity] = now
        ahead = self._options.pickle_ahead_ms
        if ahead is None:
            return
        cutoff = now - ahead
        ready = []
        for entity, at in dirty.items():
            if at > cutoff:
                break
            ready.append(entity)
        for entity in ready:
            del dirty[entity]
        self._save(ready)
        # Written ahead too: records past the pointer of the last snapshot are harmless (a
        # resume truncates them), and the snapshot then only writes the last moment's.
        if self._saved.pending_bytes >= FLUSH_AHEAD_BYTES:
            self._bytes_counter.inc(self._saved.flush())

    def _save(self, entities: Iterable[str]) -> None:
        """Pickles ``entities``' states into ``_saved`` (or drops the drained ones).

        With a state dir, a saved entity with nothing left to expire leaves memory: its state
        is read back from the store when its next event arrives."""
        put = self._saved.put
        states = self._states
        next_at = self._next_at
        evict = self._store_dir is not None
        n = 0
        for entity in entities:
            state = states.get(entity)
            if state is None:
                put(entity, None, None)  # drained and dropped
            else:
                at = next_at.get(entity)
                put(entity, at, pickle.dumps(state, protocol=5))
                if evict and at is None:
                    del states[entity]
            n += 1
        if n:
            self._pickled_counter.inc(n)

    def _late_letter(self, state: EntityState, event: Event) -> DeadLetter:
        self._late_counter.inc()
        # The engine refused the event because it is below the entity's watermark ``wm``.
        return late_letter(self._view, event, watermark_ms=state.wm)

    def _emit(self, rows: list[Row], kafka_ts: list[int], late: list[DeadLetter]) -> list[Changes]:
        if rows and self._options.rows_between is not None:
            rows, kafka_ts = rows_between(rows, kafka_ts, *self._options.rows_between)
        if rows:
            self._rows_counter.inc(len(rows))
        if not self._options.late_to_dead_letters:
            late = []
        if rows or late:
            return [Changes(rows, kafka_ts, late)]
        return []

    def on_notify(self) -> tuple[Iterable[Changes], bool]:
        now = self._clock_ms()
        rows: list[Row] = []
        expired: list[str] = []
        heap = self._heap
        heaped_of = self._heaped
        while heap and heap[0][0] <= now:
            due, entity = heapq.heappop(heap)
            if heaped_of.get(entity) != due:
                continue  # stale entry: the entity's expiry moved earlier or went away
            del heaped_of[entity]
            next_at = self._next_at.get(entity)
            if next_at is None:
                continue  # nothing to expire any more
            if next_at > now:  # moved later since it was pushed: wait for the new time
                self._arm(entity, next_at)
                continue
            del self._next_at[entity]
            state = self._state(entity)
            rows.extend(self._engine.advance(state, entity, now))
            expired.append(entity)
            if self._engine.is_drained(state):
                # Nothing left to expire or serve from state: forget the entity.
                del self._states[entity]
            else:
                self._schedule(entity, state)
        if self._options.persist_state:
            self._changed(expired)
            self._saved.maybe_compact()
        changes = self._emit(rows, [-1] * len(rows), [])
        return changes, self._discard_if_empty()

    def on_eof(self) -> tuple[Iterable[Changes], bool]:
        until = self._options.flush_until_ms
        if until is None or STOP.requested:
            # A live flow's future boundaries belong to its next run; a replay stopped by a
            # signal has not read the events that precede its boundaries.
            return [], StatefulBatchLogic.RETAIN
        rows: list[Row] = []
        entities = sorted(set(self._saved.entities()) | set(self._states))
        for entity in entities:
            state = self._state(entity)
            rows.extend(self._engine.flush(state, entity, until))
            self._schedule(entity, state)
        if self._options.persist_state:
            self._changed(entities)
        return self._emit(rows, [-1] * len(rows), []), StatefulBatchLogic.RETAIN

    def _discard_if_empty(self) -> bool:
        if self._states or self._next_at or len(self._saved):
            return StatefulBatchLogic.RETAIN
        self._saved.close()
        return StatefulBatchLogic.DISCARD

    def notify_at(self) -> datetime | None:
        heap = self._heap
        heaped = self._heaped
        while heap and heaped.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)
        if not heap:
            return None
        return datetime.fromtimestamp((heap[0][0] + self._offset_ms) / 1000, tz=UTC)

    def snapshot(self) -> ShardResume:
        if not self._options.persist_state:
            self._dirty.clear()
            return None
        started = time.perf_counter()
        self._save(self._dirty)
        self._dirty.clear()
        written = self._saved.flush()
        if written:
            self._bytes_counter.inc(written)
        # Killed here, the store holds records past the pointer Bytewax last committed: the
        # resume truncates them (freshet.stream.state_store).
        crash_point("engine.shard_snapshot")
        snapshot = self._saved.snapshot()
        metrics.STATE_SNAPSHOT_SECONDS.observe(self._view.name, time.perf_counter() - started)
        return snapshot


def build_flow(
    views: Sequence[FeatureView],
    io: FlowIO,
    options: FlowOptions | None = None,
    *,
    flow_id: str = "freshet",
) -> Dataflow:
    """The dataflow computing ``views``: one sub-flow per view, steps named ``<view>_<step>``."""
    if not views:
        raise ValueError("build_flow needs at least one view")
    names = [v.name for v in views]
    if len(set(names)) != len(names):
        raise ValueError(f"each view may run once per flow; got {names}")
    options = options or FlowOptions()
    flow = Dataflow(flow_id)
    for view in views:
        _add_view(flow, view, io, options)
    return flow


def _add_view(flow: Dataflow, view: FeatureView, io: FlowIO, options: FlowOptions) -> None:
    v = view.name
    records = op.input(f"{v}_kafka", flow, io.source(view))
    # KafkaSourceMessage(key, value, topic, partition, offset, timestamp, headers)
    batches = op.flat_map_batch(
        f"{v}_decode", records, _Decode(view, options.shards, options.schema_registry_url)
    )
    # _Batch(groups=[(shard, [Event, ...]), ...], dead=[DeadLetter, ...]), one per poll
    by_shard = op.flat_map(f"{v}_by_shard", batches, _groups)
    # (shard, [(entity, event_time_ms, fields, partition, offset, kafka_ts_ms), ...])
    bad = op.flat_map(f"{v}_undecodable", batches, _dead)
    # DeadLetter(reason, error, view, key, value, topic, partition, offset, headers)
    changes = op.stateful_batch(f"{v}_engine", by_shard, ShardLogic.builder(view, options))
    # (shard, Changes(rows=[Row, ...], kafka_ts=[int, ...], late=[DeadLetter, ...]))
    op.output(f"{v}_redis", changes, io.online_sink(view))
    rows = op.filter_map_value(f"{v}_rows", changes, _rows)
    # (shard, [Row(view, entity, as_of, values, partition, offset), ...])
    op.output(f"{v}_parquet", rows, io.offline_sink(view))
    late = op.flat_map(f"{v}_late", changes, _late)
    # DeadLetter(reason="late", ...)
    dead_letters = op.merge(f"{v}_dead_letters", bad, late)
    # DeadLetter
    op.output(f"{v}_dlq", dead_letters, io.dead_letter_sink(view))
