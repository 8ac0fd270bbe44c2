"""Backfill by replay: the offset plan of a time range and its replay through the streaming flow.

``freshet backfill VIEW --from F --to T`` recomputes a view's rows with ``as_of`` in ``[F, T]``
from its Kafka topic, through the same dataflow as ``freshet run``
(:func:`freshet.stream.pipeline.build_flow`: decode, engine shards, sinks), and writes them to the
view version's offline log and, newer-wins, to Redis.

Plan (:func:`plan_backfill`). Windows need history: the replay starts at record time
``F - H - grace``, where ``H`` is the view's longest ``window + hop`` (:func:`history_ms`; a
value as of ``T`` aggregates events in ``[floor_h(T - W), T]``, at most ``W + h`` back), and
ends at record time ``T + L + grace`` (``L`` the allowed lateness): events with event time
``<= T`` that reach Kafka up to ``L + grace`` later are on time for the live flow and must be
seen. Per partition, ``offsets_for_times`` turns both times into offsets; a time past the end
of a partition clamps to its high watermark, one before its start to its low watermark. Times
are record timestamps, which are assumed not to precede event times (a producer's
``CreateTime`` or ``LogAppendTime``). ``T`` is clamped to ``now - L - grace``: later expiry
boundaries belong to the live flow, which may still receive events before them.

Replay (:mod:`freshet.backfill.replay`). The live flow's code with the range as options:
its Kafka source (plain ``assign``, no consumer group, no commits, no recovery store) reads
each partition from the first record stamped at or after ``F - H - grace`` and ends before the
first one at or after ``T + L + grace`` (the plan's offsets, resolved by the worker that reads
the partition), so the engine's ``on_eof`` flushes every expiry boundary ``<= T``
(``FlowOptions.flush_until_ms``). The live flow's offsets and recovery state are never
touched. Rows with ``as_of`` outside ``[F, T]`` never leave the engine
(``FlowOptions.rows_between``); the sinks are the live ones; dead letters are only counted
(the live flow already sent them).

Clock. Rows never depend on when expiry timers fire (the engine's determinism), so the only
way the wall clock can change a replay is lateness: a timer that advances an idle entity's
watermark by wall time marks that entity's later events late if they are less than the
elapsed time above ``max event time - L``. ``FlowOptions.clock_offset_ms`` does not help (the
engine only uses clock *differences*; a constant offset changes nothing), so the replay keeps
``clock_offset_ms=0`` and relies on pace: it reads the records between two events of an
entity far faster than they arrived live (thousands of events/s per worker against the
topic's live rate), so its wall clock moves less between them than the live flow's did, and
on-time input gives exactly the live rows (the integration tests compare them). Only a
replay stalled for longer than an event's margin to its watermark (the demo stream: > 3 s)
could refuse it. A ``FlowOptions`` switch that stops the wall clock in replays (no timers;
watermarks from event time only, drained entities kept until the end) would remove even
that; it belongs in :mod:`freshet.stream.pipeline`.

Idempotence, offline. Each worker writes through a ``freshet.sinks.parquet_log.ParquetLogWriter``
whose writer id is deterministic per range and worker, ``bf<F>-<T>-p<i>``, distinct from the
live writers (``p<i>``). Before replaying, the segments of earlier runs of the same range are
listed; after every worker finished, they are deleted, so running the same backfill again
replaces its segments (and a run that fails leaves the earlier ones in place). Where a
backfill overlaps what the live flow (or a backfill of another range) logged, the rows are
the same rows and the log reader shows each once: it dedupes on
``freshet.sinks.parquet_log.DEDUPE_KEY`` = ``(entity, as_of, partition, offset)``. A lock file per
range keeps two runs of one range apart.

Idempotence, online. Rows go through ``freshet.sinks.redis_store.RedisFeatureWriter``, newer-wins on
``(as_of, offset)``: a backfill beside the live flow never regresses a fresher value.

Lifetime aggregates other than ``last`` cannot be rebuilt from a range (they would count the
replayed history only); the plan warns about them.

Processes. ``processes`` Bytewax processes (``workers`` threads each; threads share the
GIL) form one cluster, as ``freshet run -p`` / ``-i -a`` do: Bytewax spreads the partitions
over the workers and exchanges engine shards between them. Each process reports progress
(records read of its partitions' plan) as metrics and into a work directory, read by the
parent's progress display, and a tally at the end.

Errors: :class:`BackfillError` (a ``ValueError``) for unusable times and ranges,
:class:`BackfillFailed` (a ``RuntimeError``) when Kafka cannot be planned or a worker fails.
"""

from __future__ import annotations

import contextlib
import fcntl
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from freshet.dsl.definitions import Aggregation, DefinitionError, FeatureView, parse_duration
from freshet.dsl.registry import get_view
from freshet.sinks.parquet_log import log_dir, segment_paths

__all__ = [
    "DEFAULT_GRACE_MS",
    "BackfillError",
    "BackfillFailed",
    "BackfillPlan",
    "KafkaOffsets",
    "OffsetLookup",
    "PartitionPlan",
    "PartitionProgress",
    "ReplayJob",
    "Tally",
    "history_ms",
    "iso_time",
    "parse_grace",
    "plan_backfill",
    "previous_segments",
    "progress_line",
    "range_lock",
    "read_progress",
    "writer_prefix",
]

DEFAULT_GRACE_MS = 10_000
_METADATA_TIMEOUT_S = 15.0
# librdkafka settings of every backfill consumer: no group membership, nothing committed.
_CONSUMER_CONFIG = {
    "group.id": "freshet-backfill",  # required by librdkafka; never joined (assign only)
    "enable.auto.commit": "false",
    "enable.auto.offset.store": "false",
    "enable.partition.eof": "true",
}


class BackfillError(ValueError):
    """A time, range or option a backfill cannot use; the message names it."""


class BackfillFailed(RuntimeError):
    """Kafka could not be planned, or a replay worker failed (the message says which)."""


# --- times ---------------------------------------------------------------------------------


def parse_grace(text: str) -> int:
    """Milliseconds of a ``--grace`` duration (``10s``, ``2m``, seconds, or ``0``)."""
    value = text.strip()
    if value in ("0", "0s", "0m", "0h", "0d"):
        return 0
    try:
        return parse_duration(int(value) if value.isdigit() else value, what="--grace") * 1000
    except DefinitionError as exc:
        raise BackfillError(str(exc)) from None


def iso_time(ms: int) -> str:
    """``ms`` as an ISO-8601 UTC time with milliseconds (``2024-05-01T12:00:00.000Z``)."""
    stamp = datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def history_ms(view: FeatureView) -> int:
    """How far before ``--from`` the replay must start: the longest ``window + hop`` of the
    view's windowed features (0 when it has none)."""
    return max(
        (
            (f.window_seconds + f.hop_seconds) * 1000
            for f in view.features
            if f.window_seconds is not None and f.hop_seconds is not None
        ),
        default=0,
    )


def _lifetime_partials(view: FeatureView) -> list[str]:
    return [
        f.name for f in view.features if f.window_seconds is None and f.agg is not Aggregation.LAST
    ]


# --- the plan ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PartitionPlan:
    """One partition's replay: offsets ``[start, end)`` and the partition's watermarks."""

    partition: int
    start: int
    end: int
    low: int
    high: int

    @property
    def messages(self) -> int:
        """Records to replay (an upper bound on compacted or transactional topics)."""
        return max(0, self.end - self.start)


@dataclass(frozen=True, slots=True)
class BackfillPlan:
    """What a backfill replays and writes (see the module docstring for the times)."""

    view: str
    version: int
    topic: str
    from_ms: int
    to_ms: int
    replay_from_ms: int
    replay_until_ms: int
    partitions: tuple[PartitionPlan, ...]
    requested_to_ms: int
    warnings: tuple[str, ...] = ()

    @property
    def messages(self) -> int:
        return sum(p.messages for p in self.partitions)

    @property
    def ref(self) -> str:
        """``name@version``, as ``get_view`` takes it."""
        return f"{self.view}@{self.version}"

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["messages"] = self.messages
        for key in ("from_ms", "to_ms", "replay_from_ms", "replay_until_ms", "requested_to_ms"):
            out[key.replace("_ms", "")] = iso_time(getattr(self, key))
        for part in out["partitions"]:
            part["messages"] = max(0, part["end"] - part["start"])
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BackfillPlan:
        names = {f for f in cls.__dataclass_fields__}  # noqa: C416 - a set of the field names
        fields = {k: v for k, v in data.items() if k in names}
        fields["partitions"] = tuple(
            PartitionPlan(**{k: p[k] for k in ("partition", "start", "end", "low", "high")})
            for p in data["partitions"]
        )
        fields["warnings"] = tuple(data.get("warnings", ()))
        return cls(**fields)


class OffsetLookup(Protocol):
    """What planning asks of Kafka (:class:`KafkaOffsets`; unit tests pass a fake)."""

    def partitions(self, topic: str) -> list[int]: ...

    def watermarks(self, topic: str, partition: int) -> tuple[int, int]: ...

    def offsets_for_time(self, topic: str, partitions: Sequence[int], ms: int) -> dict[int, int]:
        """Per partition, the earliest offset whose record timestamp is ``>= ms``; -1 if none."""
        ...


class KafkaOffsets:
    """:class:`OffsetLookup` on a real broker: one consumer that never joins a group."""

    def __init__(self, config: Mapping[str, str]) -> None:
        from freshet.stream import kafka_clients

        self._consumer = kafka_clients.consumer({**config, **_CONSUMER_CONFIG})

    def partitions(self, topic: str) -> list[int]:
        from confluent_kafka import KafkaException

        try:
            meta = self._consumer.list_topics(topic, timeout=_METADATA_TIMEOUT_S).topics[topic]
        except KafkaException as exc:
            raise BackfillFailed(f"cannot list the partitions of topic {topic!r}: {exc}") from exc
        if meta.error is not None:
            raise BackfillFailed(f"topic {topic!r}: {meta.error.str()}")
        return sorted(meta.partitions)

    def watermarks(self, topic: str, partition: int) -> tuple[int, int]:
        from confluent_kafka import KafkaException, TopicPartition

        try:
            low, high = self._consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=_METADATA_TIMEOUT_S
            )
        except KafkaException as exc:
            raise BackfillFailed(f"cannot read the offsets of {topic}[{partition}]: {exc}") from exc
        return int(low), int(high)

    def offsets_for_time(self, topic: str, partitions: Sequence[int], ms: int) -> dict[int, int]:
        from confluent_kafka import KafkaException, TopicPartition

        wanted = [TopicPartition(topic, p, ms) for p in partitions]
        try:
            found = self._consumer.offsets_for_times(wanted, timeout=_METADATA_TIMEOUT_S)
        except KafkaException as exc:
            raise BackfillFailed(
                f"offsets_for_times({topic}, {iso_time(ms)}) failed: {exc}"
            ) from exc
        out = {}
        for tp in found:
            if tp.error is not None:
                raise BackfillFailed(f"offsets_for_times({topic}[{tp.partition}]): {tp.error}")
            out[tp.partition] = int(tp.offset)
        return out

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> KafkaOffsets:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def plan_backfill(
    view: FeatureView,
    lookup: OffsetLookup,
    *,
    from_ms: int,
    to_ms: int | None,
    now_ms: int,
    grace_ms: int = DEFAULT_GRACE_MS,
    topic: str | None = None,
) -> BackfillPlan:
    """The offsets to replay for rows with ``as_of`` in ``[from_ms, to_ms]`` (``to_ms`` None:
    as late as allowed, ``now - L - grace``). See the module docstring for the times."""
    if grace_ms < 0:
        raise BackfillError(f"grace={grace_ms} ms must be >= 0")
    lateness = view.allowed_lateness_seconds * 1000
    latest = now_ms - lateness - grace_ms
    requested = latest if to_ms is None else to_ms
    until = min(requested, latest)
    if from_ms > until:
        if to_ms is not None and from_ms > to_ms:
            raise BackfillError(f"--from {iso_time(from_ms)} is after --to {iso_time(requested)}")
        raise BackfillError(
            f"--from {iso_time(from_ms)} is after {iso_time(latest)} (now - lateness "
            f"{lateness // 1000} s - grace {grace_ms / 1000:g} s): that recent range is the live "
            "flow's to write"
        )
    topic = topic or view.source.topic
    replay_from = from_ms - history_ms(view) - grace_ms
    replay_until = until + lateness + grace_ms
    partitions = lookup.partitions(topic)
    if not partitions:
        raise BackfillFailed(f"topic {topic!r} has no partitions")
    starts = lookup.offsets_for_time(topic, partitions, replay_from)
    ends = lookup.offsets_for_time(topic, partitions, replay_until)
    warnings = []
    parts = []
    for p in partitions:
        low, high = lookup.watermarks(topic, p)
        start = starts.get(p, -1)
        end = ends.get(p, -1)
        start = high if start < 0 else max(low, min(start, high))
        end = high if end < 0 else max(start, min(end, high))
        if start == low and low > 0 and end > start:
            warnings.append(
                f"partition {p}: replay starts at the oldest retained offset {low}; retention "
                f"may have removed history after {iso_time(replay_from)}"
            )
        parts.append(PartitionPlan(p, start, end, low, high))
    lifetime = _lifetime_partials(view)
    if lifetime:
        warnings.append(
            f"lifetime feature(s) {', '.join(lifetime)} count only the replayed history "
            f"(from {iso_time(replay_from)})"
        )
    return BackfillPlan(
        view=view.name,
        version=view.version,
        topic=topic,
        from_ms=from_ms,
        to_ms=until,
        replay_from_ms=replay_from,
        replay_until_ms=replay_until,
        partitions=tuple(parts),
        requested_to_ms=requested,
        warnings=tuple(warnings),
    )


# --- what a run writes where ---------------------------------------------------------------


def writer_prefix(plan: BackfillPlan) -> str:
    """The Parquet writer-id prefix of a range: ``bf<from>-<to>-`` (workers add ``p<i>``)."""
    return f"bf{plan.from_ms}-{plan.to_ms}-"


def previous_segments(root: Path, plan: BackfillPlan) -> list[Path]:
    """The committed segments earlier runs of this exact range wrote."""
    pattern = re.compile(re.escape(writer_prefix(plan)) + r"p\d+-\d{10}\.parquet$")
    return [p for p in segment_paths(root, plan.view, plan.version) if pattern.match(p.name)]


@contextlib.contextmanager
def range_lock(root: Path, plan: BackfillPlan) -> Iterator[None]:
    """Hold the lock of this range of this view version; fails if another run holds it."""
    directory = log_dir(root, plan.view, plan.version)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f".{writer_prefix(plan)}lock"
    with open(path, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BackfillFailed(
                f"another backfill of {plan.ref} {iso_time(plan.from_ms)}.."
                f"{iso_time(plan.to_ms)} is running (lock {str(path)!r})"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- progress and tallies (files in the run's work directory) ------------------------------


@dataclass(frozen=True, slots=True)
class PartitionProgress:
    """How far a partition's replay is: records read of ``planned``, and whether it ended."""

    partition: int
    consumed: int
    done: bool
    planned: int = 0


def progress_line(done: int, planned: int, rate: float, eta_s: float | None) -> str:
    """``replayed 1,200 of 4,000 records (30%), 2,500 ev/s, ETA 0:00:01``: what a backfill
    prints to the terminal (without a progress bar) and to its log."""
    share = f"{done / planned:.0%}" if planned else "100%"
    eta = "-" if eta_s is None else str(timedelta(seconds=round(max(0.0, eta_s))))
    return f"replayed {done:,} of {planned:,} records ({share}), {rate:,.0f} ev/s, ETA {eta}"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def read_progress(workdir: Path) -> dict[int, PartitionProgress]:
    """The partitions' progress as the workers last wrote it."""
    out = {}
    for path in workdir.glob("progress-*"):
        try:
            consumed, planned, done = path.read_text().split()
            partition = int(path.name.removeprefix("progress-"))
        except (OSError, ValueError):
            continue  # being replaced
        out[partition] = PartitionProgress(partition, int(consumed), done == "1", int(planned))
    return out


@dataclass(slots=True)
class Tally:
    """What one replay process did (summed over processes by :meth:`merge`)."""

    consumed: int = 0
    rows_offline: int = 0
    rows_online: int = 0
    records_online_won: int = 0
    dead_letters: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    first_record_at: float | None = None  # time.perf_counter() when the first record came
    # The signal that stopped the run before the end of its range (None: it completed).
    stopped_by: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            if self.first_record_at is None and counts.get("consumed"):
                self.first_record_at = time.perf_counter()
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)

    def dead(self, reason: str, n: int = 1) -> None:
        with self._lock:
            self.dead_letters[reason] = self.dead_letters.get(reason, 0) + n

    def to_json(self) -> dict[str, Any]:
        return {
            "consumed": self.consumed,
            "rows_offline": self.rows_offline,
            "rows_online": self.rows_online,
            "records_online_won": self.records_online_won,
            "dead_letters": dict(sorted(self.dead_letters.items())),
            "seconds": round(self.seconds, 3),
            "complete": self.stopped_by is None,
            "stopped_by": self.stopped_by,
        }

    @classmethod
    def merge(cls, parts: Sequence[Mapping[str, Any]]) -> Tally:
        total = cls()
        for part in parts:
            total.consumed += part["consumed"]
            total.rows_offline += part["rows_offline"]
            total.rows_online += part["rows_online"]
            total.records_online_won += part["records_online_won"]
            for reason, n in part["dead_letters"].items():
                total.dead(reason, n)
            total.seconds = max(total.seconds, part["seconds"])
            total.stopped_by = total.stopped_by or part.get("stopped_by")
        return total


# --- the replay (runs in each worker process) ----------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ReplayJob:
    """Everything a replay process needs besides the environment's settings: the plan, the
    cluster's shape (``processes`` of ``workers`` threads) and the flow's sizes."""

    plan: BackfillPlan
    workers: int = 1
    processes: int = 1
    shards: int = 256
    # Records per poll of a partition (at most: a poll takes what librdkafka has buffered). A
    # replay always has a backlog, so it allows 5x freshet run's 10,000; no difference was
    # measured on tests/bench/backfill's topic (tests/bench/README.md, "Backfill").
    batch_size: int = 50_000
    segment_rows: int = 100_000
    # Without recovery an epoch only paces the sinks' barriers (Redis drained, a Parquet roll).
    epoch_seconds: float = 60.0

    @property
    def total_workers(self) -> int:
        return self.workers * self.processes

    def to_json(self) -> dict[str, Any]:
        return {
            "plan": self.plan.to_json(),
            "workers": self.workers,
            "processes": self.processes,
            "shards": self.shards,
            "batch_size": self.batch_size,
            "segment_rows": self.segment_rows,
            "epoch_seconds": self.epoch_seconds,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ReplayJob:
        return cls(
            plan=BackfillPlan.from_json(data["plan"]),
            workers=data["workers"],
            processes=data.get("processes", 1),
            shards=data["shards"],
            batch_size=data["batch_size"],
            segment_rows=data["segment_rows"],
            epoch_seconds=data["epoch_seconds"],
        )

    def view(self) -> FeatureView:
        """The plan's view version, reading the plan's topic."""
        view = get_view(self.plan.view, self.plan.version)
        if view.source.topic != self.plan.topic:
            view = replace(view, source=replace(view.source, topic=self.plan.topic))
        return view
