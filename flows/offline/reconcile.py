"""Online/offline consistency: compare Redis with the offline log (verify), repair it (reconcile).

Both sides hold one view *version* (Redis keys and the log are per view and version). The
reference for an entity is its **latest log row** by ``(as_of, offset, partition)`` — the row
the Redis writer's newer-wins check keeps — read with DuckDB from the committed segments
(copies of a row are one row, see :mod:`freshet.offline.historical`).

Outcomes of :func:`classify`, per entity (``O`` = latest log row, ``R`` = Redis record; both
compared by their ``(as_of, offset)`` version). Every kind but ``match``, ``expired`` and
``in_flight`` means the two stores disagree, and fails :func:`verify`:

===================  ===========================================================================
``match``            ``R`` has ``O``'s version and values.
``online_newer``     ``R`` is newer than ``O``: the log lacks rows Redis got (a flow killed
                     before its log buffer was committed). ``reconcile`` cannot repair it: the
                     log is rebuilt by ``freshet backfill`` over that time range.
``missing_offline``  Redis has a record, the log has no row of the entity at all (same cause).
``missing_online``   ``O`` is not expired and Redis has no record.
``online_stale``     ``O`` is not expired and ``R`` is older than ``O``.
``values_differ``    ``R`` has ``O``'s version but other values. Rows are deterministic, so this
                     is a bug (or a tampered store), whatever the TTL.
``expired``          ``O`` is older than the view's TTL (``as_of + ttl < now``) and ``R`` is
                     absent or older: the record is legitimately gone (Redis keys expire
                     ``ttl`` after their write, and the reader serves an older record as
                     ``expired`` anyway). Not a failure.
``in_flight``        The entity differed (one of the four kinds before ``values_differ``),
                     then the store that was behind caught up while :func:`verify` re-checked
                     it: a running flow's row on its way. Not a failure.
===================  ===========================================================================

``missing_online``/``online_stale`` and ``values_differ`` are repaired by :func:`reconcile`,
which writes each entity's latest log row through
:class:`freshet.sinks.redis_store.RedisFeatureWriter` (newer-wins: a value newer in Redis is never
replaced; rows already expired are skipped).

Rows in flight
--------------
A running flow writes each row to Redis at once and to the log when its segment buffer rolls
(``freshet run --segment-age``, 60 s by default), so the two stores legitimately differ for
rows younger than that. :func:`verify` takes ``allow_lag_s``: a difference of a kind above
(not ``values_differ``: that is never in flight) whose newer row is younger than
``allow_lag_s`` is *re-checked* (every ``poll_s``) until the store that was behind reaches the
version first seen on the other side (``in_flight``) or the row reaches that age (then it
fails with its current kind). A flow that is still running therefore passes, and a stopped
one never does: its rows never arrive, so verify waits at most ``allow_lag_s`` and fails.
``allow_lag_s=0`` (the default of :func:`verify`) fails every difference at once.

A row's age counts from when the store that has it got it: its Redis write when Redis is
ahead (Redis sets the view's TTL at each write, so ``PTTL`` dates it; a view without a TTL
falls back to the row's ``as_of``, its event time), its segment's commit (``written_at``)
when the log is ahead. The log is ahead of Redis only between a commit and the Redis sink's
write of the same batch, so those rows get at most :data:`LOG_AHEAD_LAG_MS` (10 s).

Values compare as Python values after JSON: ints and floats by value (``3 == 3.0``), NaN
equal to null (orjson writes NaN as null).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import pyarrow as pa

from freshet.offline.historical import connect_duckdb, log_rows_sql
from freshet.sinks import clock
from freshet.sinks.layout import ViewLayout
from freshet.sinks.parquet_log import segment_paths
from freshet.sinks.redis_store import RedisFeatureWriter, decode_record, record_key, scan_entities
from freshet.sinks.rows import Row

__all__ = [
    "FAILING",
    "LOG_AHEAD",
    "LOG_AHEAD_LAG_MS",
    "REDIS_AHEAD",
    "Example",
    "Outcome",
    "ReconcileReport",
    "Record",
    "VerifyReport",
    "classify",
    "in_flight_deadline",
    "recheck",
    "reconcile",
    "verify",
]

_BATCH = 1000
# Segment files are renamed into place right after their commit; their mtime may precede
# ``written_at`` by the write itself.
_MTIME_MARGIN_MS = 60_000


class Outcome(StrEnum):
    """How an entity's Redis record compares with its latest log row (module docstring)."""

    MATCH = "match"
    ONLINE_NEWER = "online_newer"
    MISSING_OFFLINE = "missing_offline"
    MISSING_ONLINE = "missing_online"
    ONLINE_STALE = "online_stale"
    VALUES_DIFFER = "values_differ"
    EXPIRED = "expired"
    IN_FLIGHT = "in_flight"


# Redis holds a row the log lacks / the log holds a row Redis lacks: either can be in flight.
REDIS_AHEAD = frozenset({Outcome.ONLINE_NEWER, Outcome.MISSING_OFFLINE})
LOG_AHEAD = frozenset({Outcome.MISSING_ONLINE, Outcome.ONLINE_STALE})
# How long after its commit a log row may still be on its way to Redis (the Redis sink writes
# each batch as it comes; the log commits later, when its segment rolls).
LOG_AHEAD_LAG_MS = 10_000
# Outcomes that fail verify: the stores disagree.
FAILING = REDIS_AHEAD | LOG_AHEAD | {Outcome.VALUES_DIFFER}


@dataclass(frozen=True, slots=True)
class Record:
    """One side's version of an entity: ``(as_of, offset)`` and the values in feature order."""

    as_of: int
    offset: int
    values: tuple[Any, ...]

    @property
    def version(self) -> tuple[int, int]:
        return (self.as_of, self.offset)

    def to_json(self) -> dict[str, Any]:
        return {"as_of": self.as_of, "offset": self.offset, "values": list(self.values)}


@dataclass(frozen=True, slots=True)
class Example:
    """An entity with a given outcome, both sides shown. For ``in_flight``, ``detail`` is the
    kind it had when first seen (``online_newer`` …) and the sides are those of the re-check."""

    entity: str
    outcome: Outcome
    offline: Record | None
    online: Record | None
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "entity": self.entity,
            "outcome": self.outcome.value,
            "detail": self.detail,
            "offline": None if self.offline is None else self.offline.to_json(),
            "online": None if self.online is None else self.online.to_json(),
        }


def _normal(value: Any) -> Any:
    """One form for a value from Redis (JSON) and from the log (Parquet/DuckDB): NaN as null,
    last_k lists and top_k pairs (JSON ``[value, count]``, Parquet ``{value, count}``) as
    lists."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, list | tuple):
        return [_normal(v) for v in value]
    if isinstance(value, dict) and set(value) == {"value", "count"}:
        return [_normal(value["value"]), value["count"]]
    return value


def _same_values(a: Record, b: Record) -> bool:
    return len(a.values) == len(b.values) and all(
        _normal(x) == _normal(y) for x, y in zip(a.values, b.values, strict=True)
    )


def classify(
    offline: Record | None, online: Record | None, *, ttl_seconds: int, now_ms: int
) -> Outcome:
    """The outcome for one entity (never ``in_flight``: that takes a re-check, :func:`recheck`)."""
    if offline is None:
        if online is None:
            raise ValueError("classify needs a log row or a Redis record (got neither)")
        return Outcome.MISSING_OFFLINE
    if online is not None:
        if online.version > offline.version:
            return Outcome.ONLINE_NEWER
        if online.version == offline.version:
            return Outcome.MATCH if _same_values(online, offline) else Outcome.VALUES_DIFFER
    if ttl_seconds and offline.as_of + ttl_seconds * 1000 < now_ms:
        return Outcome.EXPIRED  # Redis holds nothing or an older record: served "expired"
    return Outcome.MISSING_ONLINE if online is None else Outcome.ONLINE_STALE


def recheck(
    first: Example,
    offline: Record | None,
    online: Record | None,
    *,
    ttl_seconds: int,
    now_ms: int,
) -> Outcome | None:
    """Re-check an entity that differed as ``first``.

    ``in_flight`` if the store that was behind has since reached the version the other one
    had (or the entity now matches, or Redis was behind and the log's row has expired);
    ``values_differ`` if the versions now agree and the values do not; None while it is still
    behind (keep waiting)."""
    current = (
        None
        if offline is None and online is None  # both gone: Redis expired, log never had it
        else classify(offline, online, ttl_seconds=ttl_seconds, now_ms=now_ms)
    )
    if current is Outcome.VALUES_DIFFER:
        return current
    if current is Outcome.MATCH or (current is Outcome.EXPIRED and first.outcome in LOG_AHEAD):
        return Outcome.IN_FLIGHT  # (an expired Redis record does not give the log its row)
    if first.outcome in REDIS_AHEAD:
        target, behind = first.online, offline
    else:
        target, behind = first.offline, online
    if target is not None and behind is not None and behind.version >= target.version:
        return Outcome.IN_FLIGHT
    return None


def in_flight_deadline(
    outcome: Outcome,
    offline: Record | None,
    online: Record | None,
    *,
    received_ms: int | None,
    allow_lag_ms: int,
    now_ms: int,
) -> int | None:
    """Until when (wall ms) a difference of kind ``outcome`` may still be a row in flight, or
    None if it cannot be (it fails now).

    The newer row's age counts from ``received_ms``, when the store holding it got it (its
    Redis write, or its segment's commit), else from its ``as_of``; an ``as_of`` in the future
    counts from now, so no deadline is more than ``allow_lag_ms`` away. Redis is written
    before the log commits, so the log is ahead only until the Redis sink writes the same
    batch: a row the log has and Redis lacks gets at most :data:`LOG_AHEAD_LAG_MS`."""
    if allow_lag_ms <= 0 or outcome not in REDIS_AHEAD | LOG_AHEAD:
        return None
    if outcome in REDIS_AHEAD:
        newer, lag = online, allow_lag_ms
    else:
        newer, lag = offline, min(allow_lag_ms, LOG_AHEAD_LAG_MS)
    if newer is None:
        raise ValueError(f"a {outcome.value} difference needs its newer side (got None)")
    since = received_ms if received_ms is not None else newer.as_of
    deadline = min(since, now_ms) + lag
    return deadline if deadline > now_ms else None


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """Counts per :class:`Outcome` and up to ``examples`` examples of each non-match."""

    view: str
    version: int
    counts: dict[Outcome, int]
    examples: dict[Outcome, tuple[Example, ...]]
    offline_entities: int  # entities in the log (all of them, even when sampling)
    checked_offline: int  # of those, how many were compared (all, or the sample)
    checked_online: int  # Redis records scanned for missing_offline
    sample: int | None = None
    allow_lag_s: float = 0.0
    waited_s: float = field(default=0.0, compare=False)  # re-checking rows in flight
    elapsed_s: float = field(default=0.0, compare=False)

    @property
    def ok(self) -> bool:
        return not any(self.counts[o] for o in FAILING)

    @property
    def failing(self) -> dict[Outcome, int]:
        """The failing kinds found, with their counts."""
        return {o: n for o, n in self.counts.items() if o in FAILING and n}

    def to_json(self) -> dict[str, Any]:
        return {
            "view": self.view,
            "version": self.version,
            "ok": self.ok,
            "failing": {o.value: n for o, n in self.failing.items()},
            "sample": self.sample,
            "allow_lag_s": self.allow_lag_s,
            "offline_entities": self.offline_entities,
            "checked_offline": self.checked_offline,
            "checked_online": self.checked_online,
            "counts": {o.value: n for o, n in self.counts.items()},
            "examples": {
                o.value: [e.to_json() for e in ex] for o, ex in self.examples.items() if ex
            },
            "waited_s": round(self.waited_s, 3),
            "elapsed_s": round(self.elapsed_s, 3),
        }


@dataclass(frozen=True, slots=True)
class ReconcileReport:
    """What :func:`reconcile` did: ``written`` rows sent, ``won`` accepted by Redis (newer or
    equal to its record), ``kept_newer`` refused because Redis held a newer one,
    ``skipped_expired`` latest rows older than the TTL (not written)."""

    view: str
    version: int
    offline_entities: int
    written: int
    won: int
    kept_newer: int
    skipped_expired: int
    elapsed_s: float = field(default=0.0, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "view": self.view,
            "version": self.version,
            "offline_entities": self.offline_entities,
            "written": self.written,
            "won": self.won,
            "kept_newer": self.kept_newer,
            "skipped_expired": self.skipped_expired,
            "elapsed_s": round(self.elapsed_s, 3),
        }


class _LatestLog:
    """Each entity's latest log row, held in a DuckDB temp table while the context is open."""

    def __init__(self, root: Path | str, layout: ViewLayout) -> None:
        self._root = root
        self._layout = layout
        self._con = connect_duckdb()
        self.total = 0

    def __enter__(self) -> _LatestLog:
        sql = log_rows_sql(
            self._con, self._root, self._layout, self._layout.feature_names, latest_per_entity=True
        )
        self._con.execute(f"CREATE TEMP TABLE latest AS {sql}")
        self.total = int(self._con.execute("SELECT count(*) FROM latest").fetchall()[0][0])
        return self

    def __exit__(self, *exc: object) -> None:
        self._con.close()

    def batches(
        self, *, sample: int | None = None, seed: int = 0, batch: int = _BATCH
    ) -> Iterator[list[tuple[str, Record, int]]]:
        """``(entity, record, partition)`` of every entity's latest row, or of a seeded
        pseudo-random sample of ``sample`` entities, in entity order, ``batch`` at a time."""
        source = "latest"
        if sample is not None and sample < self.total:
            # A seeded hash order, not USING SAMPLE: the temp table's row order (and so a
            # reservoir sample) varies with DuckDB's threads; entity hashes do not.
            source = (
                f"(SELECT * FROM latest ORDER BY hash(__freshet_entity, {int(seed)}), "
                f"__freshet_entity LIMIT {int(sample)})"
            )
        features = self._layout.feature_names
        cols = ", ".join(
            ["__freshet_entity", "__freshet_as_of", '"offset"', '"partition"']
            + [f'"{f}"' for f in features]
        )
        relation = self._con.sql(f"SELECT {cols} FROM {source} ORDER BY __freshet_entity")
        # DuckDB 2 renamed fetch_arrow_reader to to_arrow_reader.
        to_reader = getattr(relation, "to_arrow_reader", None) or relation.fetch_arrow_reader
        for record_batch in to_reader(batch):
            yield _log_records(record_batch, len(features))

    def unknown(self, entities: Sequence[str]) -> list[str]:
        """Those of ``entities`` that have no row in the log, sorted."""
        self._con.register("__freshet_scanned", pa.table({"e": pa.array(entities, pa.string())}))
        try:
            rows = self._con.execute(
                "SELECT e FROM __freshet_scanned ANTI JOIN latest "
                "ON e = latest.__freshet_entity ORDER BY e"
            ).fetchall()
        finally:
            self._con.unregister("__freshet_scanned")
        return [r[0] for r in rows]


def _log_records(record_batch: pa.RecordBatch, width: int) -> list[tuple[str, Record, int]]:
    """``(entity, record, partition)`` per row of a batch of :meth:`_LatestLog.batches`."""
    columns = [record_batch.column(i).to_pylist() for i in range(4 + width)]
    entities, as_ofs, offsets, partitions = columns[:4]
    values = list(zip(*columns[4:], strict=True)) if width else [()] * len(entities)
    return [
        (e, Record(a, o, tuple(v)), p)
        for e, a, o, p, v in zip(entities, as_ofs, offsets, partitions, values, strict=True)
    ]


def _online(client: Any, layout: ViewLayout, entities: Sequence[str]) -> list[Record | None]:
    if not entities:
        return []
    getter = client.mget_nonatomic if hasattr(client, "mget_nonatomic") else client.mget
    raws = getter([record_key(layout, e) for e in entities])
    out: list[Record | None] = []
    for raw in raws:
        if raw is None:
            out.append(None)
        else:
            as_of, offset, values = decode_record(raw)
            out.append(Record(as_of, offset, tuple(values)))
    return out


def _latest_of(root: Path | str, layout: ViewLayout, entities: Sequence[str]) -> dict[str, Record]:
    """The latest log row of each of ``entities`` that has one, read afresh (new segments)."""
    con = connect_duckdb()
    try:
        sql = log_rows_sql(con, root, layout, layout.feature_names, latest_per_entity=True)
        con.register("__freshet_pending", pa.table({"e": pa.array(entities, pa.string())}))
        cols = ", ".join(
            ["__freshet_entity", "__freshet_as_of", '"offset"']
            + [f'"{f}"' for f in layout.feature_names]
        )
        rows = con.execute(
            f"SELECT {cols} FROM ({sql}) AS l SEMI JOIN __freshet_pending AS p "
            "ON l.__freshet_entity = p.e"
        ).fetchall()
    finally:
        con.close()
    return {r[0]: Record(r[1], r[2], tuple(r[3:])) for r in rows}


def _written_ms(
    client: Any, layout: ViewLayout, entities: Sequence[str], now_ms: int
) -> list[int | None]:
    """When each entity's Redis record was last written (wall ms), from its remaining TTL
    (the writer sets ``PX ttl`` at every write); None when the view has no TTL or the record
    is gone."""
    ttl_ms = layout.ttl_seconds * 1000
    if not ttl_ms or not entities:
        return [None] * len(entities)
    pipe = client.pipeline(transaction=False)
    for entity in entities:
        pipe.pttl(record_key(layout, entity))
    return [
        None if left is None or left < 0 else now_ms - max(0, ttl_ms - int(left))
        for left in pipe.execute()
    ]


def _committed_ms(
    root: Path | str, layout: ViewLayout, rows: Sequence[tuple[str, Record]], *, since_ms: int
) -> dict[str, int]:
    """When the log committed each ``(entity, row)`` (its segment's ``written_at``), for rows
    committed since ``since_ms``: only segments modified since then (less a margin) are read,
    so after a quiet spell this reads nothing."""
    paths = [
        str(p)
        for p in segment_paths(root, layout.name, layout.version)
        if p.stat().st_mtime * 1000 >= since_ms - _MTIME_MARGIN_MS
    ]
    if not rows or not paths:
        return {}
    con = connect_duckdb()
    try:
        con.register(
            "__freshet_rows",
            pa.table(
                {
                    "e": pa.array([e for e, _ in rows], pa.string()),
                    "a": pa.array([r.as_of for _, r in rows], pa.int64()),
                    "o": pa.array([r.offset for _, r in rows], pa.int64()),
                }
            ),
        )
        found = con.execute(
            "SELECT r.e, min(epoch_ms(s.written_at)) FROM read_parquet(?, union_by_name = true, "
            "hive_partitioning = false) AS s JOIN __freshet_rows AS r "
            "ON CAST(s.entity AS VARCHAR) = r.e AND epoch_ms(s.as_of) = r.a "
            'AND CAST(s."offset" AS BIGINT) = r.o GROUP BY r.e',
            [paths],
        ).fetchall()
    finally:
        con.close()
    return {e: int(ms) for e, ms in found}


class _Tally:
    """Counts and examples per outcome, and the differences waiting to be re-checked."""

    def __init__(
        self, root: Path | str, layout: ViewLayout, *, examples: int, allow_lag_ms: int
    ) -> None:
        self.root = root
        self.layout = layout
        self.examples = examples
        self.allow_lag_ms = allow_lag_ms
        self.counts = dict.fromkeys(Outcome, 0)
        self.found: dict[Outcome, list[Example]] = {o: [] for o in Outcome}
        # entity -> (the difference as first seen, its in-flight deadline in wall ms)
        self.pending: dict[str, tuple[Example, int]] = {}

    def settle(self, example: Example) -> None:
        self.counts[example.outcome] += 1
        if example.outcome is not Outcome.MATCH and len(self.found[example.outcome]) < (
            self.examples
        ):
            self.found[example.outcome].append(example)

    def note(
        self,
        client: Any,
        rows: Sequence[tuple[str, Record | None, Record | None]],
        now_ms: int,
    ) -> None:
        """Classify ``(entity, offline, online)`` rows; differences that may be in flight
        wait in ``pending``, the rest are settled."""
        ttl = self.layout.ttl_seconds
        outcomes = [classify(off, on, ttl_seconds=ttl, now_ms=now_ms) for _, off, on in rows]
        received: dict[int, int | None] = {}
        if self.allow_lag_ms > 0:
            ahead = [i for i, o in enumerate(outcomes) if o in REDIS_AHEAD]
            written = _written_ms(client, self.layout, [rows[i][0] for i in ahead], now_ms)
            received.update(zip(ahead, written, strict=True))
            behind = [(i, rows[i][0], rows[i][1]) for i, o in enumerate(outcomes) if o in LOG_AHEAD]
            committed = _committed_ms(
                self.root,
                self.layout,
                [(e, off) for _, e, off in behind if off is not None],
                since_ms=now_ms - LOG_AHEAD_LAG_MS,
            )
            received.update((i, committed.get(e)) for i, e, _ in behind)
        for i, ((entity, offline, online), outcome) in enumerate(zip(rows, outcomes, strict=True)):
            example = Example(entity, outcome, offline, online)
            deadline = in_flight_deadline(
                outcome,
                offline,
                online,
                received_ms=received.get(i),
                allow_lag_ms=self.allow_lag_ms,
                now_ms=now_ms,
            )
            if deadline is None:
                self.settle(example)
            else:
                self.pending[entity] = (example, deadline)

    def report(self, **fields: Any) -> VerifyReport:
        return VerifyReport(
            view=self.layout.name,
            version=self.layout.version,
            counts=self.counts,
            examples={o: tuple(ex) for o, ex in self.found.items()},
            allow_lag_s=self.allow_lag_ms / 1000,
            **fields,
        )


def verify(
    client: Any,
    root: Path | str,
    layout: ViewLayout,
    *,
    sample: int | None = None,
    seed: int = 0,
    examples: int = 5,
    allow_lag_s: float = 0.0,
    poll_s: float = 1.0,
    on_wait: Callable[[int, float], None] | None = None,
    now_ms: Callable[[], int] = clock.now_ms,
    sleep: Callable[[float], None] = time.sleep,
    batch: int = _BATCH,
) -> VerifyReport:
    """Compare ``layout``'s Redis records (``client``: a redis-py client built with
    ``decode_responses=False``) with the latest log rows under ``root``.

    Without ``sample`` every log entity is looked up (one ``MGET`` per ``batch``) and every
    Redis record of the view version is scanned for entities the log lacks; with ``sample``,
    ``sample`` log entities (a seeded pseudo-random sample) and at most ``sample`` scanned
    records. Differences younger than ``allow_lag_s`` are re-checked every ``poll_s`` until
    they catch up or reach that age (module docstring, "Rows in flight"); ``on_wait(n,
    seconds)`` is told before that wait starts.
    """
    if sample is not None and sample < 1:
        raise ValueError(f"sample={sample!r} must be >= 1 (or None for all entities)")
    if allow_lag_s < 0:
        raise ValueError(f"allow_lag_s={allow_lag_s!r} must be >= 0 seconds")
    started = time.perf_counter()
    tally = _Tally(root, layout, examples=examples, allow_lag_ms=round(allow_lag_s * 1000))
    now = now_ms()
    with _LatestLog(root, layout) as log:
        checked = 0
        for rows in log.batches(sample=sample, seed=seed, batch=batch):
            entities = [entity for entity, _, _ in rows]
            online = _online(client, layout, entities)
            tally.note(
                client,
                [(e, off, on) for (e, off, _), on in zip(rows, online, strict=True)],
                now,
            )
            checked += len(rows)
        scanned = _scan_missing_offline(
            client,
            log,
            layout,
            limit=sample,
            batch=batch,
            note=lambda r: tally.note(client, r, now),
        )
        offline_entities = log.total
    waited = _await_in_flight(
        client, root, tally, poll_s=poll_s, on_wait=on_wait, now_ms=now_ms, sleep=sleep, batch=batch
    )
    return tally.report(
        offline_entities=offline_entities,
        checked_offline=checked,
        checked_online=scanned,
        sample=sample,
        waited_s=waited,
        elapsed_s=time.perf_counter() - started,
    )


def _await_in_flight(
    client: Any,
    root: Path | str,
    tally: _Tally,
    *,
    poll_s: float,
    on_wait: Callable[[int, float], None] | None,
    now_ms: Callable[[], int],
    sleep: Callable[[float], None],
    batch: int,
) -> float:
    """Re-check ``tally.pending`` until each difference settles or passes its deadline.
    Returns the seconds waited."""
    pending = tally.pending
    if not pending:
        return 0.0
    started = time.perf_counter()
    layout, ttl = tally.layout, tally.layout.ttl_seconds
    if on_wait is not None:
        on_wait(len(pending), max(0, max(d for _, d in pending.values()) - now_ms()) / 1000)
    poll = poll_s
    while pending:
        now = now_ms()
        first_deadline = min(d for _, d in pending.values())
        sleep(max(0.0, min(poll, (first_deadline - now) / 1000)))
        round_started = time.perf_counter()
        now = now_ms()
        entities = sorted(pending)
        for start in range(0, len(entities), batch):
            chunk = entities[start : start + batch]
            offline = _latest_of(root, layout, chunk)
            online = _online(client, layout, chunk)
            for entity, on in zip(chunk, online, strict=True):
                first, deadline = pending[entity]
                off = offline.get(entity)
                settled = recheck(first, off, on, ttl_seconds=ttl, now_ms=now)
                if settled is Outcome.IN_FLIGHT:
                    tally.settle(Example(entity, settled, off, on, first.outcome.value))
                elif settled is not None:
                    tally.settle(Example(entity, settled, off, on))
                elif now >= deadline:  # still behind at its age limit: not in flight
                    current = first.outcome
                    if off is not None or on is not None:
                        current = classify(off, on, ttl_seconds=ttl, now_ms=now)
                    tally.settle(Example(entity, current, off, on))
                else:
                    continue
                del pending[entity]
        # A big log makes a re-check slow: never spend more than half the time re-checking.
        poll = max(poll_s, time.perf_counter() - round_started)
    return time.perf_counter() - started


def _scan_missing_offline(
    client: Any,
    log: _LatestLog,
    layout: ViewLayout,
    *,
    limit: int | None,
    batch: int,
    note: Callable[[list[tuple[str, Record | None, Record | None]]], None],
) -> int:
    """Scan the view version's Redis records (at most ``limit``); ``note`` those whose entity
    the log lacks. Returns how many distinct records were scanned."""
    seen: set[str] = set()
    pending: list[str] = []

    def flush() -> None:
        missing = log.unknown(pending) if pending else []
        note(
            [
                (entity, None, record)
                for entity, record in zip(missing, _online(client, layout, missing), strict=True)
                if record is not None  # None: expired or deleted since the scan saw it
            ]
        )
        pending.clear()

    for entity in scan_entities(client, layout, count=batch):
        if entity in seen:
            continue
        if limit is not None and len(seen) >= limit:
            break
        seen.add(entity)
        pending.append(entity)
        if len(pending) >= batch:
            flush()
    flush()
    return len(seen)


def reconcile(
    client: Any,
    root: Path | str,
    layout: ViewLayout,
    *,
    now_ms: Callable[[], int] = clock.now_ms,
    batch: int = _BATCH,
    writer: RedisFeatureWriter | None = None,
) -> ReconcileReport:
    """Write each entity's latest log row to Redis through the newer-wins writer.

    Never regresses a value: Redis keeps a record whose ``(as_of, offset)`` is newer. Rows
    older than the view's TTL are skipped. ``writer`` defaults to a
    :class:`~freshet.sinks.redis_store.RedisFeatureWriter` on ``client`` (retrying while Redis is
    unreachable).
    """
    started = time.perf_counter()
    writer = writer if writer is not None else RedisFeatureWriter(client, {layout.name: layout})
    ttl_ms = layout.ttl_seconds * 1000
    now = now_ms()
    written = won = skipped = 0
    with _LatestLog(root, layout) as log:
        for batch_rows in log.batches(batch=batch):
            rows = []
            for entity, record, partition in batch_rows:
                if ttl_ms and record.as_of + ttl_ms < now:
                    skipped += 1
                    continue
                rows.append(
                    Row(layout.name, entity, record.as_of, record.values, partition, record.offset)
                )
            written += len(rows)
            won += writer.write(rows)
        total = log.total
    return ReconcileReport(
        view=layout.name,
        version=layout.version,
        offline_entities=total,
        written=written,
        won=won,
        kept_newer=written - won,
        skipped_expired=skipped,
        elapsed_s=time.perf_counter() - started,
    )
