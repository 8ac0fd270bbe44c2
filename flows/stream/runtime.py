"""What a ``freshet run`` process does around its dataflow: checks before it starts, the
recovery directory, the flow clock kept across restarts, the GC policy and the line it logs
at the end.

    layout = init_recovery(recovery_dir, partitions, layout, create=True)
    clock = FlowClockFile(recovery_dir, process_id, snapshot_interval_s)
    freeze_gc_survivors()
    ...                       # build and run the flow (freshet.stream.pipeline)
    clock.stopped()
    log_end(views)            # "stopped on SIGTERM after a 0.2 s drain: ... rows emitted ..."

Errors are :class:`RecoveryDirError` (a recovery directory that cannot be used as asked) and
:class:`freshet.stream.kafka_clients.TopicError` (a topic Kafka refused to create), with
messages that say what to do; the command line reports them as one line.
"""

from __future__ import annotations

import fcntl
import gc
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from freshet.dsl.definitions import FeatureView
from freshet.sinks.clock import now_ms
from freshet.sinks.durable import write_durably
from freshet.sinks.settings import Settings
from freshet.stream import kafka_clients
from freshet.stream.shutdown import STOP

__all__ = [
    "FlowClockFile",
    "RecoveryDirError",
    "check_redis",
    "clock_offset",
    "ensure_dead_letter_topics",
    "freeze_gc_survivors",
    "init_recovery",
    "log_end",
    "rows_emitted_in",
]

log = logging.getLogger("freshet.run")

_RECOVERY_INIT_TIMEOUT_S = 60.0


class RecoveryDirError(ValueError):
    """A recovery directory that cannot be used as asked (the message says what to do)."""


_LAYOUT_FILE = "freshet-layout.json"


def init_recovery(
    directory: Path, partitions: int, layout: dict[str, int], *, create: bool
) -> dict[str, int]:
    """Create Bytewax's recovery partitions in ``directory`` unless it already has them.

    ``layout`` (shards, Parquet partitions) keys the saved state: it is written with the
    partitions and must match on every later start (state saved under 256 shards cannot be
    found under 128). Returns the layout in force.
    """
    from bytewax.recovery import init_db_dir

    directory.mkdir(parents=True, exist_ok=True)
    saved = directory / _LAYOUT_FILE
    if not create:
        deadline = time.monotonic() + _RECOVERY_INIT_TIMEOUT_S
        while not saved.exists():
            if time.monotonic() > deadline:
                raise RecoveryDirError(
                    f"recovery dir {str(directory)!r} is not initialised after "
                    f"{_RECOVERY_INIT_TIMEOUT_S:g} s; process 0 creates it"
                )
            time.sleep(0.2)
    else:
        with open(directory / ".freshet-init.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not any(directory.glob("part-*.sqlite3")):
                init_db_dir(directory, partitions)  # type: ignore[no-untyped-call]
                tmp = saved.with_suffix(".tmp")
                tmp.write_text(json.dumps(layout))
                tmp.replace(saved)
                log.info("initialised %d recovery partitions in %s", partitions, directory)
    in_force: dict[str, int] = json.loads(saved.read_text()) if saved.exists() else layout
    if in_force["shards"] != layout["shards"]:
        raise RecoveryDirError(
            f"--shards {layout['shards']} differs from the {in_force['shards']} shards the "
            f"state in {str(directory)!r} was saved with; pass --shards {in_force['shards']} "
            "or use a new --recovery-dir"
        )
    return in_force


_CLOCK_FILE_PERIOD_S = 1.0


def clock_offset(
    flow_times_ms: Sequence[int], now_ms: int, snapshot_interval_s: int, *, stopped: bool = False
) -> int:
    """How far the resumed flow clock runs behind real time: it continues one snapshot interval
    before the newest flow time any process recorded, or at that time when every process
    recorded a graceful stop (its final snapshot was taken then); 0 on a first start."""
    if not flow_times_ms:
        return 0
    behind = 0 if stopped else snapshot_interval_s * 1000
    return max(0, now_ms - (max(flow_times_ms) - behind))


class FlowClockFile:
    """Keeps the flow's clock across restarts (``offset_ms``: how far it runs behind real time).

    Every process rewrites ``<recovery dir>/freshet-clock-<id>`` with the flow time once a
    second, and with ``"<time> stopped"`` once its flow ended gracefully. On restart the flow
    clock continues from the newest such time, minus one snapshot interval unless every process
    stopped gracefully (a crash resumes the last snapshot, taken up to an interval before), so
    the downtime does not count as idle time of the entities
    (``freshet.stream.pipeline.flow_clock``).
    """

    def __init__(self, directory: Path, process_id: int, snapshot_interval_s: int) -> None:
        last, stopped = [], True
        for path in directory.glob("freshet-clock-*"):
            try:
                text = path.read_text().split()
                last.append(int(text[0]))
            except (OSError, ValueError, IndexError):
                continue
            stopped = stopped and text[1:] == ["stopped"]
        self.offset_ms = clock_offset(last, now_ms(), snapshot_interval_s, stopped=stopped)
        self._path = directory / f"freshet-clock-{process_id}"
        self._done = threading.Event()
        self._lock = threading.Lock()
        threading.Thread(target=self._beat, name="freshet-clock", daemon=True).start()
        if self.offset_ms:
            log.info("resuming the flow clock %.1f s behind real time", self.offset_ms / 1000)

    def _write(self, suffix: str = "") -> None:
        write_durably(self._path, f"{now_ms() - self.offset_ms}{suffix}")

    def _beat(self) -> None:
        while not self._done.is_set():
            with self._lock:
                if not self._done.is_set():
                    self._write()
            self._done.wait(_CLOCK_FILE_PERIOD_S)

    def stopped(self) -> None:
        """Record that the flow ended gracefully now (its final snapshot is taken)."""
        with self._lock:
            self._done.set()
            self._write(" stopped")


def freeze_gc_survivors() -> Callable[[str, dict[str, int]], None]:
    """Freeze what is alive now, and every object that survives a cyclic-GC collection.

    The engine keeps ~20 long-lived objects per entity. Left to the default policy, the
    cyclic GC traverses each new one in gen 0, again in gen 1 and in every gen 2 collection;
    frozen right after its first collection, an object is traversed once (the CPU this saves
    is in ``tests/bench/README.md``).

    Frozen objects are still freed by reference counting (entity states, rows and batches
    hold no cycles); only cyclic garbage that outlives a gen-0 collection is never collected
    (a few dozen objects per run). Returns the installed callback.
    """

    def freeze(phase: str, info: dict[str, int]) -> None:
        if phase == "stop":
            gc.freeze()

    gc.freeze()
    gc.callbacks.append(freeze)
    return freeze


def check_redis(url: str) -> None:
    """Fail before the flow starts when Redis does not answer (a ping inside Bytewax would
    fail too, with a Rust panic printed around the message); ``freshet.cli.main`` reports the
    connection error as one line."""
    from freshet.sinks.redis_store import connect

    client = connect(url)
    try:
        client.ping()
    finally:
        client.close()


def ensure_dead_letter_topics(settings: Settings, views: Sequence[FeatureView]) -> None:
    """Create each view's dead-letter topic if missing (1 partition), after checking that Kafka
    answers (``ensure_topics``)."""
    from freshet.stream.deadletter import dead_letter_topic

    topics = {dead_letter_topic(v): 1 for v in views}
    kafka_clients.ensure_topics(
        settings.kafka_client_config(), topics, timeout_s=settings.kafka_timeout_s
    )


def log_end(views: Sequence[FeatureView]) -> None:
    """One line with what the flow did, once its sinks committed everything."""
    from prometheus_client import REGISTRY

    def total(metric: str) -> int:
        return int(
            sum(
                s.value
                for v in views
                for m in REGISTRY.collect()
                for s in m.samples
                if s.name == metric and s.labels.get("view") == v.name
            )
        )

    counts = (
        f"{total('freshet_events_in_total'):,} records read, "
        f"{total('freshet_rows_emitted_total'):,} rows emitted (written to Redis and committed "
        f"to the offline log), {total('freshet_events_late_total'):,} late, "
        f"{total('freshet_dead_letters_total'):,} dead letters sent"
    )
    if STOP.requested:
        drained = time.monotonic() - (STOP.requested_at or time.monotonic())
        log.info("stopped on %s after a %.1f s drain: %s", STOP.reason, drained, counts)
    else:
        log.info("reached the end of every partition: %s", counts)


_END_LINE = re.compile(r"(?:stopped on SIG\w+ after a [\d.]+ s drain|reached the end of every "
                       r"partition): [\d,]+ records read, ([\d,]+) rows emitted")  # fmt: skip


def rows_emitted_in(log_text: str) -> int | None:
    """The rows a flow emitted, from the last end line (:func:`log_end`) in its log."""
    found = _END_LINE.findall(log_text)
    return int(found[-1].replace(",", "")) if found else None
