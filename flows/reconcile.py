"""Online/offline consistency: compare Redis with the offline log (verify), repair it (reconcile).

Both sides hold one view *version* (Redis keys and the log are per view and version). The
reference for an entity is its **latest log row** by ``(as_of, offset, partition)`` — the row
the Redis writer's newer-wins check keeps — read with DuckDB from the committed segments
(copies of a row are one row, see :mod:`flows.historical`).

Outcomes of :func:`classify`, per entity (``O`` = latest log row, ``R`` = Redis record; both
compared by their ``(as_of, offset)`` version):

========================  ===================================================================
``match``                 ``R`` has ``O``'s version and values.
``mismatch``              ``R`` is older than ``O`` (``stale``) or has ``O``'s version but
                          other values (``differs``). Reconcile repairs ``stale``; ``differs``
                          needs a look (rows are deterministic, so it means a bug).
``missing_online``        ``O`` exists and is not expired, Redis has no record.
``missing_offline``       Redis has a record, the log has no row of the entity (usually the
                          log writer's uncommitted buffer: segments roll by rows or age).
``expired``               ``O`` is older than the view's TTL (``as_of + ttl < now``) and ``R``
                          is absent or not newer: Redis serves ``expired`` either way.
``online_newer``          ``R`` is newer than ``O``: the log has not caught up (its buffer);
                          not an error.
========================  ===================================================================

:func:`verify` fails (``VerifyReport.ok`` false) on ``mismatch`` or ``missing_online``: then
Redis serves something other than the log's latest value, which :func:`reconcile` repairs by
writing each entity's latest log row through :class:`sinks.redis_store.RedisFeatureWriter`
(newer-wins: a value newer in Redis is never replaced). Rows already expired are skipped
(they would be served as ``expired`` anyway).

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

from flows.historical import connect_duckdb, log_rows_sql
from sinks.layout import ViewLayout
from sinks.redis_store import RedisFeatureWriter, decode_record, record_key, scan_entities
from sinks.rows import Row

__all__ = [
    "Example",
    "Outcome",
    "ReconcileReport",
    "Record",
    "VerifyReport",
    "classify",
    "reconcile",
    "verify",
]

_BATCH = 1000


class Outcome(StrEnum):
    """How an entity's Redis record compares with its latest log row (module docstring)."""

    MATCH = "match"
    MISMATCH = "mismatch"
    MISSING_ONLINE = "missing_online"
    MISSING_OFFLINE = "missing_offline"
    EXPIRED = "expired"
    ONLINE_NEWER = "online_newer"


# Outcomes that make verify fail: Redis serves something other than the log's latest value.
FAILING = frozenset({Outcome.MISMATCH, Outcome.MISSING_ONLINE})


@dataclass(frozen=True, slots=True)
class Record:
    """One side's version of an entity: ``(as_of, offset)`` and the values in feature order."""

    as_of: int
    offset: int
    values: tuple[Any, ...]

    def to_json(self) -> dict[str, Any]:
        return {"as_of": self.as_of, "offset": self.offset, "values": list(self.values)}


@dataclass(frozen=True, slots=True)
class Example:
    """An entity with a given outcome, both sides shown (``detail``: ``stale``/``differs``)."""

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
    return None if isinstance(value, float) and math.isnan(value) else value


def classify(
    offline: Record | None, online: Record | None, *, ttl_seconds: int, now_ms: int
) -> tuple[Outcome, str]:
    """The outcome for one entity, and a detail for mismatches (``stale`` or ``differs``)."""
    if offline is None:
        if online is None:
            raise ValueError("classify needs a log row or a Redis record (got neither)")
        return Outcome.MISSING_OFFLINE, ""
    off_version = (offline.as_of, offline.offset)
    on_version = None if online is None else (online.as_of, online.offset)
    if on_version is not None and on_version > off_version:
        return Outcome.ONLINE_NEWER, ""
    if ttl_seconds and offline.as_of + ttl_seconds * 1000 < now_ms:
        return Outcome.EXPIRED, ""
    if online is None or on_version is None:
        return Outcome.MISSING_ONLINE, ""
    if on_version < off_version:
        return Outcome.MISMATCH, "stale"
    same = len(online.values) == len(offline.values) and all(
        _normal(a) == _normal(b) for a, b in zip(online.values, offline.values, strict=True)
    )
    return (Outcome.MATCH, "") if same else (Outcome.MISMATCH, "differs")


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
    elapsed_s: float = field(default=0.0, compare=False)

    @property
    def ok(self) -> bool:
        return not any(self.counts[o] for o in FAILING)

    def to_json(self) -> dict[str, Any]:
        return {
            "view": self.view,
            "version": self.version,
            "ok": self.ok,
            "sample": self.sample,
            "offline_entities": self.offline_entities,
            "checked_offline": self.checked_offline,
            "checked_online": self.checked_online,
            "counts": {o.value: n for o, n in self.counts.items()},
            "examples": {
                o.value: [e.to_json() for e in ex] for o, ex in self.examples.items() if ex
            },
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


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


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


def verify(
    client: Any,
    root: Path | str,
    layout: ViewLayout,
    *,
    sample: int | None = None,
    seed: int = 0,
    examples: int = 5,
    now_ms: Callable[[], int] = _wall_clock_ms,
    batch: int = _BATCH,
) -> VerifyReport:
    """Compare ``layout``'s Redis records (``client``: a redis-py client built with
    ``decode_responses=False``) with the latest log rows under ``root``.

    Without ``sample`` every log entity is looked up (one ``MGET`` per ``batch``) and every
    Redis record of the view version is scanned for entities the log lacks; with ``sample``,
    ``sample`` log entities (a seeded pseudo-random sample) and at most ``sample`` scanned records.
    """
    if sample is not None and sample < 1:
        raise ValueError(f"sample={sample!r} must be >= 1 (or None for all entities)")
    started = time.perf_counter()
    counts = dict.fromkeys(Outcome, 0)
    found: dict[Outcome, list[Example]] = {o: [] for o in Outcome}
    now = now_ms()

    def note(entity: str, offline: Record | None, online: Record | None) -> None:
        outcome, detail = classify(offline, online, ttl_seconds=layout.ttl_seconds, now_ms=now)
        counts[outcome] += 1
        if outcome is not Outcome.MATCH and len(found[outcome]) < examples:
            found[outcome].append(Example(entity, outcome, offline, online, detail))

    with _LatestLog(root, layout) as log:
        checked = 0
        for rows in log.batches(sample=sample, seed=seed, batch=batch):
            online = _online(client, layout, [entity for entity, _, _ in rows])
            for (entity, offline, _), record in zip(rows, online, strict=True):
                note(entity, offline, record)
            checked += len(rows)
        scanned = _scan_missing_offline(client, log, layout, limit=sample, batch=batch, note=note)
        offline_entities = log.total
    return VerifyReport(
        view=layout.name,
        version=layout.version,
        counts=counts,
        examples={o: tuple(ex) for o, ex in found.items()},
        offline_entities=offline_entities,
        checked_offline=checked,
        checked_online=scanned,
        sample=sample,
        elapsed_s=time.perf_counter() - started,
    )


def _scan_missing_offline(
    client: Any,
    log: _LatestLog,
    layout: ViewLayout,
    *,
    limit: int | None,
    batch: int,
    note: Callable[[str, Record | None, Record | None], None],
) -> int:
    """Scan the view version's Redis records (at most ``limit``); ``note`` those whose entity
    the log lacks. Returns how many distinct records were scanned."""
    seen: set[str] = set()
    pending: list[str] = []

    def flush() -> None:
        missing = log.unknown(pending) if pending else []
        for entity, record in zip(missing, _online(client, layout, missing), strict=True):
            if record is not None:  # None: expired or deleted since the scan saw it
                note(entity, None, record)
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
    now_ms: Callable[[], int] = _wall_clock_ms,
    batch: int = _BATCH,
    writer: RedisFeatureWriter | None = None,
) -> ReconcileReport:
    """Write each entity's latest log row to Redis through the newer-wins writer.

    Never regresses a value: Redis keeps a record whose ``(as_of, offset)`` is newer. Rows
    older than the view's TTL are skipped. ``writer`` defaults to a
    :class:`~sinks.redis_store.RedisFeatureWriter` on ``client`` (retrying while Redis is
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
