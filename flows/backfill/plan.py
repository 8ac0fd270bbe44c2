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

Replay (:func:`run_replay`). A bounded source of its own (:class:`ReplaySource`: plain
``assign``, no consumer group, no commits, no recovery store) reads each partition from its
start offset to its end offset and then ends, so the engine's ``on_eof`` flushes every expiry
boundary ``<= T`` (``FlowOptions.flush_until_ms``). The live flow's offsets and recovery state
are never touched. Rows with ``as_of`` outside ``[F, T]`` are dropped before the sinks; dead
letters are only counted (the live flow already sent them).

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

Workers. ``workers`` Bytewax processes form one cluster (one worker each: threads share the
GIL); engine shards are exchanged between them as in ``freshet run -p``. Each writes progress
(next offset, records consumed) per partition into a work directory, read by the parent's
progress display, and a tally at the end.

Errors: :class:`BackfillError` (a ``ValueError``) for unusable times and ranges,
:class:`BackfillFailed` (a ``RuntimeError``) when Kafka cannot be planned or a worker fails.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from freshet.dsl.definitions import Aggregation, DefinitionError, FeatureView, parse_duration
from freshet.dsl.registry import get_view
from freshet.sinks.parquet_log import log_dir, segment_paths
from freshet.sinks.settings import Settings
from freshet.stream.shutdown import STOP, block_stop_signals

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
    "Workers",
    "history_ms",
    "iso_time",
    "parse_grace",
    "parse_time",
    "plan_backfill",
    "previous_segments",
    "range_lock",
    "read_progress",
    "run_replay",
    "writer_prefix",
]

DEFAULT_GRACE_MS = 10_000
_METADATA_TIMEOUT_S = 15.0
_SECONDS_LIKE = 100_000_000_000  # epoch ms below this are before 1973: probably seconds
_RELATIVE_RE = re.compile(r"^(?:now)?\s*-\s*(\d+[smhd])$")
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


def parse_time(text: str, *, now_ms: int, what: str = "time") -> int:
    """Epoch milliseconds of ``text``: ``now``, relative ``-2h`` / ``now-90m`` (s, m, h, d),
    integer epoch milliseconds, an ISO-8601 time with a UTC offset (``2024-05-01T12:00:00Z``)
    or an ISO date (``2024-05-01``, midnight UTC)."""
    value = text.strip()
    if value == "now":
        return now_ms
    if match := _RELATIVE_RE.match(value):
        try:
            return now_ms - parse_duration(match.group(1), what=what) * 1000
        except DefinitionError as exc:
            raise BackfillError(str(exc)) from None
    if value.isdigit():
        ms = int(value)
        if ms < _SECONDS_LIKE:
            raise BackfillError(
                f"{what} {text!r} looks like epoch seconds; give epoch milliseconds "
                f"({ms * 1000}) or an ISO-8601 time"
            )
        return ms
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)
        parsed = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        raise BackfillError(
            f"{what} {text!r} is not a time; use an ISO-8601 time such as "
            "2024-05-01T12:00:00Z, a date, epoch milliseconds, 'now' or '-2h'"
        ) from None
    if parsed.tzinfo is None:
        raise BackfillError(f"{what} {text!r} has no UTC offset; add 'Z' or '+00:00'")
    return int(parsed.timestamp() * 1000)


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
    """How far a partition's replay is: records consumed and whether it reached its end."""

    partition: int
    consumed: int
    done: bool


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def read_progress(workdir: Path) -> dict[int, PartitionProgress]:
    """The partitions' progress as the workers last wrote it."""
    out = {}
    for path in workdir.glob("progress-*"):
        try:
            consumed, done = path.read_text().split()
            partition = int(path.name.removeprefix("progress-"))
        except (OSError, ValueError):
            continue  # being replaced
        out[partition] = PartitionProgress(partition, int(consumed), done == "1")
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
    """Everything a worker process needs besides the environment's settings."""

    plan: BackfillPlan
    workers: int = 1
    shards: int = 256
    batch_size: int = 10_000  # records per poll, as `freshet run --batch-size` (default)
    segment_rows: int = 100_000
    epoch_seconds: float = 60.0

    def to_json(self) -> dict[str, Any]:
        return {
            "plan": self.plan.to_json(),
            "workers": self.workers,
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


def run_replay(
    job: ReplayJob,
    settings: Settings,
    *,
    workdir: Path | None = None,
    process_id: int | None = None,
    addresses: Sequence[str] | None = None,
) -> Tally:
    """Replay ``job`` in this process (one Bytewax worker; a cluster member with
    ``process_id``/``addresses``); returns what it did. Progress goes to ``workdir``."""
    from bytewax.run import cli_main
    from freshet.backfill.replay import BackfillIO
    from freshet.stream.pipeline import FlowOptions, build_flow

    view = job.view()
    tally = Tally()
    io = BackfillIO(job=job, settings=settings, tally=tally, workdir=workdir)
    options = FlowOptions(
        shards=job.shards,
        persist_state=False,
        late_to_dead_letters=True,  # counted by the backfill's own sink, never produced
        flush_until_ms=job.plan.to_ms,
        clock_offset_ms=0,  # constant offsets cannot change rows; see the module docstring
        schema_registry_url=settings.schema_registry_url,
    )
    flow = build_flow([view], io, options, flow_id=f"freshet-backfill-{view.name}")
    cli_main(  # type: ignore[no-untyped-call]
        flow,
        workers_per_process=1,
        process_id=process_id,
        addresses=list(addresses) if addresses else None,
        epoch_interval=timedelta(seconds=job.epoch_seconds),
        recovery_config=None,
    )
    # From the first record read to every row written: the replay's own time, without the
    # process and Bytewax start-up.
    if tally.first_record_at is not None:
        tally.seconds = time.perf_counter() - tally.first_record_at
    if STOP.requested:
        tally.stopped_by = STOP.reason
    if workdir is not None:
        _write_atomic(workdir / f"tally-{process_id or 0}.json", json.dumps(tally.to_json()))
    return tally


def worker_main(argv: Sequence[str] | None = None) -> None:
    """Entry point of a spawned worker: ``JOB_FILE WORKDIR PROCESS_ID ADDRESSES``."""
    job_file, workdir, process_id, addresses = list(sys.argv[1:] if argv is None else argv)
    _die_with_parent()
    STOP.install()  # the parent forwards its signals: stop reading, commit what was read
    job = ReplayJob.from_json(json.loads(Path(job_file).read_text()))
    run_replay(
        job,
        Settings.from_env(),
        workdir=Path(workdir),
        process_id=int(process_id),
        addresses=addresses.split(";"),
    )


def _die_with_parent() -> None:
    """Get SIGKILL when the parent ``freshet backfill`` dies (Linux), so no worker outlives it."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Workers:
    """The worker processes of one backfill run (a Bytewax cluster), spawned and watched.

    ``poll()`` returns None while they run, else the first failing exit code or 0; ``stop()``
    ends them (SIGTERM, then SIGKILL). A context manager: leaving it stops what still runs.
    """

    def __init__(
        self, job: ReplayJob, *, workdir: Path, env: Mapping[str, str] | None = None
    ) -> None:
        self.workdir = workdir
        job_file = workdir / "job.json"
        job_file.write_text(json.dumps(job.to_json()))
        addresses = ";".join(f"127.0.0.1:{_free_port()}" for _ in range(job.workers))
        entry = "from freshet.backfill.plan import worker_main; worker_main()"
        self._logs = [open(workdir / f"worker-{i}.log", "wb") for i in range(job.workers)]  # noqa: SIM115 - closed in stop()
        self._procs = [
            subprocess.Popen(
                [sys.executable, "-c", entry, str(job_file), str(workdir), str(i), addresses],
                env=dict(os.environ if env is None else env),
                stdout=self._logs[i],
                stderr=subprocess.STDOUT,
                # Their own process group: a Ctrl-C in the terminal reaches them once, through
                # the parent's handler (a second signal means "exit at once").
                process_group=0,
                preexec_fn=block_stop_signals,
            )
            for i in range(job.workers)
        ]

    def poll(self) -> int | None:
        codes = [p.poll() for p in self._procs]
        failed = [c for c in codes if c not in (None, 0)]
        if failed:
            return failed[0]
        if all(c == 0 for c in codes):
            return 0
        return None

    def failure(self) -> str:
        """The tail of the first failed worker's output."""
        for i, proc in enumerate(self._procs):
            if proc.poll() not in (None, 0):
                text = (self.workdir / f"worker-{i}.log").read_text(errors="replace")
                return f"worker {i} exited with {proc.returncode}:\n{text[-3000:]}"
        return "no worker failed"

    def signal(self, signum: int) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    def stop(self, timeout: float = 10.0) -> None:
        self.signal(signal.SIGTERM)
        for proc in self._procs:
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in self._logs:
            log.close()

    def tallies(self) -> Tally:
        parts = []
        for path in sorted(self.workdir.glob("tally-*.json")):
            parts.append(json.loads(path.read_text()))
        return Tally.merge(parts)

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_backfill(
    job: ReplayJob,
    settings: Settings,
    *,
    on_progress: Callable[[dict[int, PartitionProgress]], None] | None = None,
    poll_s: float = 0.2,
    timeout_s: float | None = None,
) -> Tally:
    """Run ``job`` to the end in ``job.workers`` processes and replace the segments earlier
    runs of the same range wrote; returns the summed tally. Raises :class:`BackfillFailed`."""
    plan = job.plan
    root = settings.offline_dir
    if plan.messages == 0:
        return Tally()  # no events, no state: nothing to write
    with range_lock(root, plan), tempfile.TemporaryDirectory(prefix="freshet-backfill-") as tmp:
        earlier = previous_segments(root, plan)
        workdir = Path(tmp)
        started = time.monotonic()
        with Workers(job, workdir=workdir) as workers:

            def forward(signum: int, _frame: Any) -> None:
                # First signal: the workers stop reading and commit what they read. A second
                # one, forwarded too, ends them at once (and this run with their exit code).
                STOP.request(signal.Signals(signum).name)
                workers.signal(signum)

            previous_handlers = (
                {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
                if threading.current_thread() is threading.main_thread()
                else {}
            )
            try:
                while (code := workers.poll()) is None:
                    if on_progress is not None:
                        on_progress(read_progress(workdir))
                    if timeout_s is not None and time.monotonic() - started > timeout_s:
                        raise BackfillFailed(f"the replay did not finish in {timeout_s:g} s")
                    time.sleep(poll_s)
            finally:
                for s, handler in previous_handlers.items():
                    signal.signal(s, handler)
            if code != 0:
                raise BackfillFailed(workers.failure())
            if on_progress is not None:
                on_progress(read_progress(workdir))
            tally = workers.tallies()
        if STOP.requested or tally.stopped_by:
            # Part of the range (this process or a worker was signalled): keep the earlier
            # runs' segments (the reader dedupes the rows both hold); running the same
            # backfill again completes the range.
            tally.stopped_by = tally.stopped_by or STOP.reason
            return tally
        for path in earlier:
            path.unlink(missing_ok=True)
        return tally
