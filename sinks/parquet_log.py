"""The offline feature log: append-only, immutable Parquet segments, and their reader.

Layout (one directory per view version, one per UTC date of ``as_of``)::

    <root>/<view>/date=YYYY-MM-DD/<writer>-<seq>.parquet     committed segment (never changed)
    <root>/<view>/date=YYYY-MM-DD/.<writer>-<seq>.parquet.tmp  being written (renamed when done)

``<view>`` is the view's name for version 1 and ``<name>.v<N>`` for version N >= 2
(:func:`log_dir`), so a new version of a view starts a log of its own beside the old one.

Columns: ``entity`` (string), ``as_of`` (timestamp ms, UTC), one column per feature with its
``ViewLayout`` type (int64 | float64 | string), ``partition`` (int32) and ``offset`` (int64) of
the source event, ``written_at`` (timestamp ms, UTC: when the segment was committed, or its
row group written, see "Row groups"). Rows within a segment (within each row group, for a
writer with ``row_group_rows``) are sorted by ``(entity, as_of, offset)``; zstd compression.

A view keyed by several fields (DESIGN "Entities") also has one column per key field, named
as the field, right after ``entity``: its value decoded from ``entity``
(:func:`freshet.sinks.layout.decode_entity`) when the rows are written, int64 for a long key
field, string otherwise. ``entity`` keeps the encoded key, so joins and the dedupe key work
on one column whatever the key. A one-field view has no such column.

Writing. :class:`ParquetLogWriter` buffers rows in memory and *commits* them — one segment per
date present, written to the temporary name, fsynced, renamed — when ``max_rows`` rows are
buffered (a segment never holds more), when the oldest buffered row is ``max_age_s`` old
(checked on every :meth:`~ParquetLogWriter.write` and by
:meth:`~ParquetLogWriter.roll_if_due`), and on :meth:`~ParquetLogWriter.snapshot` and
:meth:`~ParquetLogWriter.close`. Each commit takes the next sequence number ``seq`` of the
writer, so segment names are deterministic: ``<writer>-<seq:010d>.parquet``. With
``background=True`` (the flow's sink) commits run in order on the writer's own thread, at most
two in flight; ``snapshot``/``close``/``flush`` wait for them, so a snapshot still covers only
rows that are on disk. That thread also converts each write's rows to Arrow as they arrive
(the conversion holds the GIL, and is ~40 % cheaper while the rows are still in the CPU cache).
A synchronous commit of ~75,000 rows held the flow ~0.2-0.3 s, so every event arriving
meanwhile was that much later in Redis.

Row groups (background writers with ``row_group_rows``): the segment being filled is written
while rows arrive, one row group (sorted by ``(entity, as_of, offset)`` within itself) every
``row_group_rows`` rows or ``row_group_age_s`` seconds, to its temporary file; a commit then
only writes the rows since the last row group and the footer, then fsyncs and renames. A flow
stops reading at each snapshot until the snapshot returns (Bytewax's backpressure), so this
is what keeps the snapshot short: 0.11-0.26 s for a 10 s epoch at 5,000 events/s written at
the snapshot, ~10 ms this way. Rows within a segment are then sorted per row group, not across
it; ``written_at`` is when the row group was written (at most one commit interval before the
rename makes it visible).

Exactly once, two ways (both always on):

1. **Resume state (Bytewax recovery).** :meth:`~ParquetLogWriter.snapshot` commits the buffer
   and returns :class:`WriterState` ``(next_seq)``; everything before it is durable. A writer
   built with that state deletes its own segments with ``seq >= next_seq`` (committed after the
   snapshot; the replay that follows a resume writes those rows again) and its leftover
   ``.tmp`` files. Used as the snapshot of a ``FixedPartitionedSink`` partition whose name is the
   ``writer_id``, no row is ever on disk twice. So rows stay durable, the buffer is committed at
   every snapshot: with recovery, segments roll at least once per snapshot interval. (Segments
   committed by a run that crashed before its *first* snapshot look like an earlier run's to
   a writer starting with no state; the reader's dedupe covers them. ``WriterState(0)``
   removes all of a writer's segments: use it only if the writer id is private to the
   recovery store.)
2. **Reader dedupe.** :func:`read_log` keeps one row per ``(entity, as_of, partition, offset)``.
   Rows are a deterministic function of each entity's events (DESIGN "Determinism"), so a row
   written twice — by an at-least-once sink, a restart without recovery that re-reads the topic,
   or a backfill over a range already logged — is the same row, and the reader shows it once.

A writer started without resume state continues after its highest existing ``seq`` and never
overwrites a segment. One writer id must have one live writer at a time (give each
sink partition / process its own id). ``.tmp`` files are never read; a crashed writer's are
removed when a writer with the same id starts.
"""

from __future__ import annotations

import os
import re
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import itemgetter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from freshet.sinks.clock import now_ms
from freshet.sinks.durable import fsync_dir
from freshet.sinks.faults import crash_point
from freshet.sinks.layout import KEY_SEPARATOR, ViewLayout
from freshet.sinks.rows import Row

__all__ = [
    "DEDUPE_KEY",
    "ParquetLogError",
    "ParquetLogWriter",
    "WriterState",
    "log_dir",
    "log_schema",
    "read_log",
    "segment_paths",
]

DEDUPE_KEY = ("entity", "as_of", "partition", "offset")
# Columns every segment has (and the hive partition ``date``): no key field may take a name.
_RESERVED = ("entity", "as_of", "partition", "offset", "written_at", "date")
_SORT_KEY = [("entity", "ascending"), ("as_of", "ascending"), ("offset", "ascending")]
_DAY_MS = 86_400_000
_TS = pa.timestamp("ms", tz="UTC")
_SCALAR_TYPES = {"int64": pa.int64(), "float64": pa.float64(), "string": pa.string()}
# Every feature value type (ViewLayout's ValueType) as stored: last_k values as lists (newest
# first), top_k values as lists of {value, count} structs (most frequent first).
_ARROW_TYPES: dict[str, pa.DataType] = {
    **_SCALAR_TYPES,
    **{f"list<{name}>": pa.list_(t) for name, t in _SCALAR_TYPES.items()},
    **{
        f"top_k<{name}>": pa.list_(pa.struct([("value", t), ("count", pa.int64())]))
        for name, t in _SCALAR_TYPES.items()
    },
}
_WRITER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_SEGMENT = re.compile(r"^(?P<writer>.+)-(?P<seq>\d{10})\.parquet$")
_PARTITIONING = ds.partitioning(pa.schema([("date", pa.string())]), flavor="hive")
_VIEW_OF = itemgetter(0)  # Row.view
_MAX_PENDING = 2  # background commits in flight at most (bounds the rows held in memory)


class ParquetLogError(ValueError):
    """Rows or settings the offline log cannot take; the message names the bad value."""


@dataclass(frozen=True, slots=True)
class WriterState:
    """A writer's resume state: the sequence number its next segment will get."""

    next_seq: int


def log_schema(layout: ViewLayout) -> pa.Schema:
    """The Arrow schema of ``layout``'s segments."""
    fields = [pa.field("entity", pa.string(), nullable=False)]
    fields += [pa.field(name, arrow_type, False) for name, arrow_type in _key_columns(layout)]
    fields.append(pa.field("as_of", _TS, False))
    fields += [pa.field(f.name, _ARROW_TYPES[f.type]) for f in layout.features]
    fields += [
        pa.field("partition", pa.int32(), nullable=False),
        pa.field("offset", pa.int64(), nullable=False),
        pa.field("written_at", _TS, nullable=False),
    ]
    return pa.schema(
        fields,
        metadata={"freshet.view": layout.name, "freshet.view.version": str(layout.version)},
    )


def _key_columns(layout: ViewLayout) -> list[tuple[str, pa.DataType]]:
    """The key field columns of a composite view (none for a one-field key), checked not to
    collide with the log's own columns nor with a feature."""
    if not layout.is_composite:
        return []
    taken = dict.fromkeys(_RESERVED, "a column of the log")
    taken.update((name, "a feature of the view") for name in layout.feature_names)
    columns = []
    for i, name in enumerate(layout.keys):
        if name in taken:
            raise ParquetLogError(
                f"key field {name!r} of view {layout.name!r} has the name of {taken[name]} "
                f"({', '.join(sorted(taken))} are taken); rename the key field"
            )
        taken[name] = "another key field"
        key_type = layout.key_types[i] if i < len(layout.key_types) else "string"
        columns.append((name, pa.int64() if key_type == "int64" else pa.string()))
    return columns


def _decode_keys(layout: ViewLayout, entity: pa.Array) -> list[pa.Array]:
    """The key field columns of a composite view's ``entity`` column (vectorized
    :func:`~freshet.sinks.layout.decode_entity`); raises ParquetLogError naming an entity
    that does not decode, or whose long key field is not an integer."""
    columns = _key_columns(layout)
    if not columns:
        return []
    parts = pc.split_pattern(entity, KEY_SEPARATOR)
    wrong = pc.not_equal(pc.list_value_length(parts), len(columns))
    if pc.any(wrong).as_py():
        bad = entity.filter(wrong)[0].as_py()
        raise ParquetLogError(
            f"entity {bad!r} of view {layout.name!r} is not a key of {len(columns)} fields "
            f"({', '.join(layout.keys)}): the encoding of freshet.sinks.layout.encode_entity"
        )
    out = []
    for i, (name, arrow_type) in enumerate(columns):
        text = pc.list_element(parts, i)
        text = pc.replace_substring(text, "%7C", "|")
        text = pc.replace_substring(text, "%25", "%")
        if arrow_type == pa.int64():
            try:
                text = text.cast(pa.int64())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise ParquetLogError(
                    f"key field {name!r} of view {layout.name!r} is a long; an entity holds "
                    f"a value that is not an integer: {exc}"
                ) from exc
        out.append(text)
    return out


class ParquetLogWriter:
    """Appends one view's rows to the log as immutable segments (see the module docstring).

    The constructor prepares the view directory and, given ``resume_state``, removes what was
    committed after that state was taken; it fails fast if ``root`` is not writable.
    """

    def __init__(
        self,
        root: Path | str,
        layout: ViewLayout,
        *,
        max_rows: int = 100_000,
        max_age_s: float = 60.0,
        writer_id: str = "w0",
        resume_state: WriterState | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock_ms: Callable[[], int] = now_ms,
        background: bool = False,
        on_commit: Callable[[list[Path]], None] | None = None,
        row_group_rows: int | None = None,
        row_group_age_s: float = 1.0,
    ) -> None:
        if not isinstance(max_rows, int) or max_rows < 1:
            raise ParquetLogError(f"max_rows={max_rows!r} must be an int >= 1")
        if not max_age_s > 0:
            raise ParquetLogError(f"max_age_s={max_age_s!r} must be > 0 seconds")
        if row_group_rows is not None and (
            not background or not isinstance(row_group_rows, int) or row_group_rows < 1
        ):
            raise ParquetLogError(
                f"row_group_rows={row_group_rows!r} needs background=True and an int >= 1"
            )
        if not _WRITER_ID.match(writer_id):
            raise ParquetLogError(
                f"writer_id={writer_id!r} must be 1-100 of [A-Za-z0-9_.-], not starting with . or -"
            )
        self._dir = log_dir(root, layout.name, layout.version)
        self._layout = layout
        self._schema = log_schema(layout)
        self._written_at = self._schema.get_field_index("written_at")
        self._types = [_ARROW_TYPES[f.type] for f in layout.features]
        # A Row as pyarrow converts it in one call; int64 values go through float64 (_table).
        self._row_type = pa.struct(
            [
                ("view", pa.string()),
                ("entity", pa.string()),
                ("as_of", pa.int64()),
                (
                    "values",
                    pa.struct(
                        [
                            (f"v{i}", pa.float64() if t == pa.int64() else t)
                            for i, t in enumerate(self._types)
                        ]
                    ),
                ),
                ("partition", pa.int32()),
                ("offset", pa.int64()),
                ("valid_until", pa.int64()),  # read, not stored: the log is point-in-time
            ]
        )
        self._max_rows = max_rows
        self._max_age_s = max_age_s
        self._writer_id = writer_id
        self._clock = clock
        self._wall_clock_ms = wall_clock_ms
        # Rows written, not yet committed: ``_n`` of them, kept in ``_buffer`` (synchronous
        # writer) or only as converted tables (``_tables``, background writer: the rows
        # themselves are released as soon as they are converted).
        self._n = 0
        self._buffer: list[Row] = []
        self._first_at = 0.0
        self._dir.mkdir(parents=True, exist_ok=True)
        self._check_writable()
        self._next_seq = self._recover(resume_state)
        self.segments_committed = 0
        self._on_commit = on_commit  # called with each commit's segments, on its thread
        # Background commits (``background=True``): in order, one thread, at most
        # _MAX_PENDING in flight; each with its rows (for ``buffered``).
        self._executor = (
            ThreadPoolExecutor(1, thread_name_prefix=f"parquet-{writer_id}") if background else None
        )
        self._pending: deque[tuple[Future[list[Path]], int]] = deque()
        # Background only: the buffer's rows as Arrow tables, converted on the writer's thread
        # as they are written (a 10,000-row write converts while its rows are still in the CPU
        # cache: ~1.2 us per row, against ~2.1 for the 100,000-row buffer of a commit). Each
        # entry: (table future, rows of it already committed, its row count), in buffer order.
        self._tables: deque[tuple[Future[pa.Table], int, int]] = deque()
        self._failed: BaseException | None = None
        # Background only: the segment being filled (see "Row groups" in the module
        # docstring): its sequence number (None: none open) and the rows handed to it;
        # ``_unstaged_at``: when the oldest row not yet handed to it was written.
        self._row_group_rows = row_group_rows
        self._row_group_age_s = row_group_age_s
        self._open_seq: int | None = None
        self._open_rows = 0
        self._unstaged_at = 0.0
        # The writer's thread only: the open segment's files by day, and the first error of
        # a row group written there (raised by the next call on the flow's side).
        self._open_files: dict[int, tuple[pq.ParquetWriter, Path, Path]] = {}
        self._thread_error: BaseException | None = None

    def _check_writable(self) -> None:
        """Create and remove a hidden file in the view directory: a read-only offline dir
        fails here, at start, naming the directory, rather than at the first commit."""
        probe = self._dir / f".{self._writer_id}-probe-{os.getpid()}"
        try:
            probe.touch()
            probe.unlink()
        except OSError as exc:
            raise type(exc)(
                exc.errno,
                f"the offline log directory {str(self._dir)!r} of view {self._layout.name!r} "
                f"is not writable ({exc.strerror}); make it writable for the flow",
            ) from exc

    @property
    def buffered(self) -> int:
        """Rows written but not yet committed to a segment (background commits included)."""
        return self._n + self._open_rows + sum(n for _, n in self._pending)

    def write(self, rows: Sequence[Row]) -> list[Path]:
        """Buffer ``rows``; commit segments that are due. Returns the segments committed
        (in the background: those whose commit has finished since the last call)."""
        if self._failed is None and self._thread_error is not None:
            self._failed = self._thread_error
        if self._failed is not None:
            raise self._failed
        if not rows:
            return self.roll_if_due()
        name = self._layout.name
        views = set(map(_VIEW_OF, rows))
        if views != {name}:
            other = next(v for v in views if v != name)
            raise ParquetLogError(f"row of view {other!r} given to the log writer of {name!r}")
        if not self._n:
            self._unstaged_at = self._clock()
            if not self._open_rows:
                self._first_at = self._unstaged_at
        self._n += len(rows)
        if self._executor is None:
            self._buffer.extend(rows)
        else:
            batch = list(rows)
            self._tables.append((self._executor.submit(self._table, batch), 0, len(batch)))
        committed: list[Path] = []
        while self._n + self._open_rows >= self._max_rows:
            committed += self._commit(self._max_rows - self._open_rows)
            self._first_at = self._clock()
        return committed + self.roll_if_due()

    def roll_if_due(self) -> list[Path]:
        """Commit the buffer if its oldest row is ``max_age_s`` old, or start writing a row
        group that is due (call on a timer)."""
        if (self._n or self._open_rows) and self._clock() - self._first_at >= self._max_age_s:
            return self.roll()
        if (
            self._row_group_rows is not None
            and self._n
            and (
                self._n >= self._row_group_rows
                or self._clock() - self._unstaged_at >= self._row_group_age_s
            )
        ):
            self._stage(self._n)
        return []

    def roll(self) -> list[Path]:
        """Commit whatever is buffered now (in the background: started; :meth:`flush`
        waits for it)."""
        if self._n or self._open_rows:
            return self._commit(self._n)
        return self._finished(wait=False)

    def _commit(self, n: int) -> list[Path]:
        """Write the first ``n`` buffered rows as segments; on failure they stay buffered
        (nothing is dropped).

        In the background, the commit takes the next sequence number now and runs on the
        writer's thread (Arrow conversion, sort, write, fsync, rename: the Parquet encoding
        and file I/O release the GIL, so they overlap the flow's Python work). A failure there
        is raised by the next call, and the writer refuses every later one: its rows are not
        kept (a flow stops on it and replays them from its last snapshot).
        """
        if self._executor is None:
            rows, self._buffer = self._buffer[:n], self._buffer[n:]
            self._n -= n
            seq = self._next_seq
            self._next_seq += 1
            try:
                return self._commit_segments(rows, seq)
            except BaseException:
                self._buffer[:0] = rows
                self._n += n
                raise
        done = self._finished(wait=False)
        while len(self._pending) >= _MAX_PENDING:
            done += self._wait_oldest()
        if n:
            self._stage(n)
        open_rows = self._open_rows
        self._open_seq, self._open_rows = None, 0
        self._pending.append((self._executor.submit(self._close_segment), open_rows))
        return done

    def _stage(self, n: int) -> None:
        """Hand the buffer's first ``n`` rows to the open segment (opened with the next
        sequence number if none is): the writer's thread writes them as one row group."""
        assert self._executor is not None
        if self._open_seq is None:
            self._open_seq = self._next_seq
            self._next_seq += 1
        parts = self._take_tables(n)
        self._n -= n
        self._open_rows += n
        self._unstaged_at = self._clock()
        self._executor.submit(self._append_tables, parts, self._open_seq)

    def _take_tables(self, n: int) -> list[tuple[Future[pa.Table], int, int]]:
        """The converted tables holding the buffer's first ``n`` rows, as ``(future, start,
        length)`` slices; a table only partly taken stays for the next commit."""
        parts = []
        while n:
            future, start, size = self._tables[0]
            take = min(n, size - start)
            parts.append((future, start, take))
            n -= take
            if start + take == size:
                self._tables.popleft()
            else:
                self._tables[0] = (future, start + take, size)
        return parts

    def _append_tables(self, parts: list[tuple[Future[pa.Table], int, int]], seq: int) -> None:
        """On the writer's thread: write ``parts`` to segment ``seq`` as a row group per day
        (the files are opened on first use); an error is kept for the flow's side."""
        if self._thread_error is not None:
            return  # the segment is lost already: its commit raises
        try:
            # The conversions were submitted before to the same one-thread executor, so
            # they are done (or failed, raising here).
            tables = [future.result().slice(start, length) for future, start, length in parts]
            table = self._stamped(tables[0] if len(tables) == 1 else pa.concat_tables(tables))
            for day, part in self._by_day(table):
                self._open_file(day, seq).write_table(part.sort_by(_SORT_KEY))
        except BaseException as exc:
            self._thread_error = exc
            raise

    def _open_file(self, day: int, seq: int) -> pq.ParquetWriter:
        entry = self._open_files.get(day)
        if entry is None:
            date_dir, name = self._segment_name(day, seq)
            date_dir.mkdir(exist_ok=True)
            tmp = date_dir / f".{name}.tmp"
            # Created here first so that an unwritable directory fails with Python's own
            # error naming the file ("[Errno 13] Permission denied: '<path>'"); then written
            # through Arrow's own file (not a Python one): a writer abandoned by a crash leaves
            # no unclosed Python file behind, only the .tmp file the next writer removes.
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
            writer = pq.ParquetWriter(str(tmp), self._schema, compression="zstd")
            entry = self._open_files[day] = (writer, tmp, date_dir / name)
        return entry[0]

    def _close_segment(self) -> list[Path]:
        """On the writer's thread: finish the open segment's files (footer, fsync, rename)."""
        files, self._open_files = self._open_files, {}
        if self._thread_error is not None:
            for writer, tmp, _ in files.values():
                try:
                    writer.close()
                finally:
                    tmp.unlink(missing_ok=True)
            raise self._thread_error
        paths = []
        for day in sorted(files):
            writer, tmp, final = files[day]
            writer.close()
            paths.append(_publish(tmp, final))
        return self._committed(paths)

    def _wait_oldest(self) -> list[Path]:
        future, _ = self._pending[0]
        try:
            paths = future.result()
        except BaseException as exc:
            self._failed = exc
            raise
        self._pending.popleft()
        return paths

    def _finished(self, *, wait: bool) -> list[Path]:
        """The segments of the background commits that have finished (all of them, waiting,
        with ``wait``); raises the error of a failed one."""
        if self._failed is not None:
            raise self._failed
        paths: list[Path] = []
        while self._pending and (wait or self._pending[0][0].done()):
            paths += self._wait_oldest()
        return paths

    def flush(self) -> list[Path]:
        """Commit the buffer and wait until every commit is on disk; returns the segments
        committed since the last call."""
        return self.roll() + self._finished(wait=True)

    def snapshot(self) -> WriterState:
        """Commit the buffer and return the state to resume from (Bytewax sink snapshot):
        every row written before is on disk."""
        self.flush()
        return WriterState(self._next_seq)

    def close(self) -> list[Path]:
        """Commit the buffer (end of input) and wait for it; the writer can still be used
        afterwards."""
        return self.flush()

    def _recover(self, state: WriterState | None) -> int:
        """Remove this writer's leftovers; return the next sequence number."""
        highest = -1
        for date_dir in self._dir.glob("date=*"):
            for path in date_dir.iterdir():
                name = path.name
                if name.startswith(f".{self._writer_id}-") and name.endswith(".tmp"):
                    path.unlink(missing_ok=True)  # a crashed commit of this writer
                    continue
                match = _SEGMENT.match(name)
                if match is None or match["writer"] != self._writer_id:
                    continue
                seq = int(match["seq"])
                if state is not None and seq >= state.next_seq:
                    path.unlink()  # committed after the snapshot: the replay writes it again
                else:
                    highest = max(highest, seq)
        if state is not None:
            return state.next_seq
        return highest + 1

    def _commit_segments(self, rows: list[Row], seq: int) -> list[Path]:
        return self._commit_table(self._table(rows), seq)

    def _commit_table(self, table: pa.Table, seq: int) -> list[Path]:
        return self._committed(
            [
                self._write_segment(part.sort_by(_SORT_KEY), day, seq)
                for day, part in self._by_day(self._stamped(table))
            ]
        )

    def _committed(self, paths: list[Path]) -> list[Path]:
        """Counts a commit's segments (one thread commits at a time) and reports them."""
        self.segments_committed += len(paths)
        if self._on_commit is not None:
            self._on_commit(paths)
        return paths

    def _stamped(self, table: pa.Table) -> pa.Table:
        """``table`` with ``written_at`` now, whenever its rows were converted."""
        at = self._written_at
        stamp = pa.scalar(self._wall_clock_ms(), _TS)
        return table.set_column(at, self._schema.field(at), pa.repeat(stamp, table.num_rows))

    @staticmethod
    def _by_day(table: pa.Table) -> list[tuple[int, pa.Table]]:
        """``table``'s rows by UTC day of ``as_of`` (days since the epoch), in day order."""
        days = pc.divide(table["as_of"].cast(pa.int64()), _DAY_MS)
        unique_days = sorted(pc.unique(days).to_pylist())
        if len(unique_days) == 1:
            return [(unique_days[0], table)]
        return [(day, table.filter(pc.equal(days, day))) for day in unique_days]

    def _segment_name(self, day: int, seq: int) -> tuple[Path, str]:
        date = datetime.fromtimestamp(day * 86_400, tz=UTC).strftime("%Y-%m-%d")
        return self._dir / f"date={date}", f"{self._writer_id}-{seq:010d}.parquet"

    def _table(self, rows: list[Row]) -> pa.Table:
        """Rows -> columns in one pyarrow call (Rows are tuples: a struct array of them).

        int64 features are read as float64 and cast back safely: pyarrow would silently
        truncate a float 1.5 given for an int64 column, the safe cast refuses it (int64
        feature values must therefore stay within ±2**53, ample for counts).
        """
        try:
            struct = pa.array(rows, self._row_type)
            values = struct.field("values")
            features = [
                values.field(i).cast(arrow_type, safe=True)
                for i, arrow_type in enumerate(self._types)
            ]
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            self._explain_bad_rows(rows)
            raise
        entity = struct.field("entity")
        columns = [
            entity,
            *_decode_keys(self._layout, entity),
            struct.field("as_of").cast(_TS),
            *features,
            struct.field("partition"),
            struct.field("offset"),
            pa.nulls(len(rows), _TS),  # written_at: set by the commit
        ]
        return pa.Table.from_arrays(columns, schema=self._schema)

    def _explain_bad_rows(self, rows: list[Row]) -> None:
        """Raise a :class:`ParquetLogError` naming the feature that does not fit (slow path)."""
        features = self._layout.features
        for r in rows:
            if not isinstance(r.values, tuple) or len(r.values) != len(features):
                raise ParquetLogError(
                    f"rows of view {self._layout.name!r} have {len(r.values)} values; "
                    f"its features are {', '.join(self._layout.feature_names)}"
                )
        transposed = list(zip(*[r.values for r in rows], strict=True))
        for column, column_values, arrow_type in zip(
            features, transposed, self._types, strict=True
        ):
            try:
                pa.array(column_values).cast(arrow_type, safe=True)
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
                raise ParquetLogError(
                    f"feature {column.name!r} of view {self._layout.name!r} is "
                    f"{column.type}; a row holds a value that is not: {exc}"
                ) from exc
        raise ParquetLogError(
            f"rows of view {self._layout.name!r} do not fit its log schema "
            "(entity a string, as_of/offset int64, partition int32)"
        )

    def _write_segment(self, table: pa.Table, day: int, seq: int) -> Path:
        date_dir, name = self._segment_name(day, seq)
        date_dir.mkdir(exist_ok=True)
        tmp = date_dir / f".{name}.tmp"
        with open(tmp, "wb") as f:
            pq.write_table(table, f, compression="zstd")
        return _publish(tmp, date_dir / name)


def _publish(tmp: Path, final: Path) -> Path:
    """Make a written segment durable and visible: fsync it, rename it into place, fsync the
    directory (with the crash points the tests stop at)."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    crash_point("parquet.segment_tmp_written")
    os.replace(tmp, final)
    fsync_dir(final.parent)
    crash_point("parquet.segment_renamed")
    return final


def log_dir(root: Path | str, view: str, version: int = 1) -> Path:
    """The directory of a view version's log: ``<root>/<view>`` for version 1 (the layout
    before versions had their own logs), ``<root>/<view>.v<version>`` for later versions."""
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ParquetLogError(f"version={version!r} of view {view!r} must be an int >= 1")
    return Path(root) / (view if version == 1 else f"{view}.v{version}")


def segment_paths(root: Path | str, view: str, version: int = 1) -> list[Path]:
    """The committed segments of ``view``'s ``version``, in name order (temporary files
    excluded)."""
    return sorted(
        path
        for path in log_dir(root, view, version).glob("date=*/*.parquet")
        if not path.name.startswith(".")
    )


def read_log(
    root: Path | str,
    view: str,
    *,
    columns: Sequence[str] | None = None,
    filter: Any = None,  # pyarrow.dataset calls it so too
    sort: bool = False,
    dedupe: bool = True,
    layout: ViewLayout | None = None,
    version: int = 1,
) -> pa.Table:
    """Read ``view``'s log: each row once, optionally sorted by ``(entity, as_of, offset)``.

    ``filter`` is a ``pyarrow.compute`` expression over the columns and the ``date`` partition
    (a string ``YYYY-MM-DD``), e.g. ``(pc.field("date") >= "2024-05-01") & (pc.field("as_of") <
    pa.scalar(ms, pa.timestamp("ms", "UTC")))``; it prunes directories and row groups.
    ``layout`` fixes the schema (segments of older versions lacking a column read as nulls, and
    an empty log has the full schema); without it the schema comes from the segments.
    ``dedupe=False`` skips the duplicate check (rows written twice then show twice).
    ``version`` picks the view version's log (:func:`log_dir`); it is not taken from
    ``layout``, which may describe a newer schema to read older segments with.
    """
    paths = segment_paths(root, view, version)
    schema = log_schema(layout) if layout is not None else None
    if not paths:
        empty = schema if schema is not None else _base_schema()
        return _select(empty.empty_table(), columns)
    dataset = ds.dataset(
        [str(p) for p in paths],
        format="parquet",
        partitioning=_PARTITIONING,
        partition_base_dir=str(log_dir(root, view, version)),
        schema=schema.append(pa.field("date", pa.string())) if schema is not None else None,
    )
    wanted = list(columns) if columns is not None else list(dataset.schema.names)
    if columns is None and "date" in wanted:
        wanted.remove("date")
    unknown = [c for c in wanted if c not in dataset.schema.names]
    if unknown:
        raise ParquetLogError(
            f"unknown column(s) {', '.join(map(repr, unknown))} in the log of {view!r}; "
            f"columns: {', '.join(dataset.schema.names)}"
        )
    needed = list(wanted)
    for key in (*DEDUPE_KEY, "entity", "as_of", "offset") if dedupe or sort else ():
        if key not in needed:
            needed.append(key)
    table = dataset.to_table(columns=needed, filter=filter)
    if dedupe:
        table = _dedupe(table)
    if sort:
        table = table.sort_by(_SORT_KEY)
    return table.select(wanted)


def _base_schema() -> pa.Schema:
    return log_schema(ViewLayout(name="", version=1, entity="", features=(), ttl_seconds=0))


def _select(table: pa.Table, columns: Sequence[str] | None) -> pa.Table:
    return table if columns is None else table.select(list(columns))


def _dedupe(table: pa.Table) -> pa.Table:
    """Keep the first row of each ``DEDUPE_KEY``; a no-op (no copy) when there are no copies."""
    if table.num_rows < 2:
        return table
    indexed = table.select(list(DEDUPE_KEY)).append_column(
        "_row", pa.array(range(table.num_rows), pa.int64())
    )
    first = indexed.group_by(list(DEDUPE_KEY), use_threads=False).aggregate([("_row", "min")])
    if first.num_rows == table.num_rows:
        return table
    rows = first["_row_min"]
    return table.take(rows.take(pc.sort_indices(rows)))
