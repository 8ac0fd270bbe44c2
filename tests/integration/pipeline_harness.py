"""Helpers of the streaming-flow integration tests: run ``freshet run`` as a real process, read
back what it wrote (Redis, offline log, dead-letter topic, /metrics) and the engine's reference.

The reference is ``ViewEngine`` run directly over the records as Kafka stored them (read back
from the topic, so partitions and offsets are the real ones), each entity's events in offset
order: exactly what the flow must compute, whatever its workers, batches or restarts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from confluent_kafka import TopicPartition

from freshet.decode.decoder import decoder_for
from freshet.decode.messages import RawMessage
from freshet.dsl.definitions import FeatureView
from freshet.dsl.registry import get_view
from freshet.engine.view_engine import ViewEngine
from freshet.ops.generator import GeneratorConfig, ProduceCounts, produce
from freshet.sinks.parquet_log import read_log
from freshet.sinks.redis_store import decode_record, record_key
from freshet.sinks.rows import Row
from freshet.stream import kafka_clients

__all__ = [
    "LATENESS_MS",
    "VIEW",
    "FlowProcess",
    "Reference",
    "check_redis",
    "flow_args",
    "flow_env",
    "offline_rows",
    "passes",
    "produce_stream",
    "read_topic",
    "redis_records",
    "scrape",
    "wait_until",
]

_FAR_FUTURE_MS = 4_000_000_000_000


def wait_until(
    predicate: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.1
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def read_topic(bootstrap: str, topic: str, *, timeout: float = 30.0) -> list[RawMessage]:
    """Every record of ``topic`` (all partitions, start to current end), with headers."""
    consumer = kafka_clients.consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "freshet-tests",
            "enable.auto.commit": "false",
            "enable.partition.eof": "true",
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {}
        for p in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                ends[p] = high
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        out: list[RawMessage] = []
        done: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(done) < len(ends):
            if time.monotonic() > deadline:
                raise AssertionError(f"could not read {topic} to its end in {timeout:g} s")
            for msg in consumer.consume(1000, 0.5):
                if msg.error() is None:
                    out.append(RawMessage.from_confluent(msg))
                    if msg.offset() + 1 >= ends[msg.partition()]:
                        done.add(msg.partition())
        return out
    finally:
        consumer.close()


def _as_logged(rows: Iterable[Row]) -> list[Row]:
    """Rows as the offline log keeps them: without ``valid_until`` (only Redis records carry
    it; it is checked against the brute force in the engine's unit tests)."""
    return [row._replace(valid_until=-1) for row in rows]


@dataclass
class Reference:
    """What the flow must compute for ``view`` over ``messages``.

    ``applied[e]``: entity e's rows from ``apply`` over its events (exact, timing-free);
    ``flushed[e]``: the expiry rows after them (live timers emit a prefix of these);
    ``late``/``bad``: records refused as late / undecodable.
    """

    applied: dict[str, list[Row]]
    flushed: dict[str, list[Row]]
    late: int
    bad: int
    max_event_time: dict[str, int]

    @classmethod
    def of(cls, view: FeatureView, messages: Sequence[RawMessage]) -> Reference:
        decoded = decoder_for(view).decode(messages)
        engine = ViewEngine(view, clock=lambda: 0)
        states: dict[str, Any] = {}
        applied: dict[str, list[Row]] = defaultdict(list)
        late = 0
        max_t: dict[str, int] = {}
        for entity, t, fields, partition, offset, _ in sorted(
            decoded.events, key=lambda e: (e[3], e[4])
        ):
            state = states.setdefault(entity, engine.new_state())
            rows = engine.apply(state, entity, t, fields, partition, offset)
            if rows is None:
                late += 1
                continue
            applied[entity].extend(_as_logged(rows))
            max_t[entity] = max(t, max_t.get(entity, t))
        flushed = {e: _as_logged(engine.flush(s, e, _FAR_FUTURE_MS)) for e, s in states.items()}
        return cls(dict(applied), flushed, late, len(decoded.dead), max_t)

    def check_rows(self, rows: Iterable[Row]) -> None:
        """Each entity's rows are its apply rows plus a prefix of its expiry rows: nothing
        lost, nothing twice, nothing invented. (The engine may emit an expiry row identical to
        an event row, which the offline reader shows once: rows compare as sets.)"""
        got: dict[str, list[Row]] = defaultdict(list)
        for row in rows:
            got[row.entity].append(row)
        assert set(got) == set(self.applied), "entities differ from the reference"
        for entity, expected in self.applied.items():
            mine = set(got[entity])
            assert len(mine) == len(got[entity]), f"a row of {entity} is there twice"
            applied = set(expected)
            missing = applied - mine
            assert not missing, f"{len(missing)} rows of {entity} missing, e.g. {min(missing)}"
            extra = mine - applied
            expiries = [r for r in self.flushed[entity] if r not in applied]
            assert extra == set(expiries[: len(extra)]), f"unexpected rows of {entity}"

    def row_at(self, entity: str, as_of: int, offset: int) -> Row | None:
        """The reference row of ``entity`` with this ``(as_of, offset)``, if there is one."""
        for row in reversed(self.applied.get(entity, []) + self.flushed.get(entity, [])):
            if row.as_of == as_of and row.offset == offset:
                return row
        return None

    def value_as_of(self, entity: str, t: int) -> tuple[Any, ...] | None:
        """The entity's values as of ``t`` (``t`` at most its max event time - lateness)."""
        last = None
        for row in self.applied.get(entity, []) + self.flushed.get(entity, []):
            if row.as_of <= t:
                last = row
        return None if last is None else last.values


def offline_rows(root: Path, view: FeatureView, *, dedupe: bool = True) -> list[Row]:
    """The view's offline log as rows, sorted by ``(entity, as_of, offset)`` (stable)."""
    table = read_log(root, view.name, sort=True, dedupe=dedupe)
    names = view.layout().feature_names
    return [
        Row(
            view.name,
            r["entity"],
            int(r["as_of"].timestamp() * 1000),
            tuple(r[n] for n in names),
            r["partition"],
            r["offset"],
        )
        for r in table.to_pylist()
    ]


def redis_records(
    client: redis.Redis, view: FeatureView, entities: Iterable[str]
) -> dict[str, tuple[int, int, tuple[Any, ...]]]:
    """``entity -> (as_of, offset, values)`` of the stored records (missing ones left out)."""
    layout = view.layout()
    names = list(entities)
    raws = client.mget([record_key(layout, e) for e in names]) if names else []
    out = {}
    for entity, raw in zip(names, raws, strict=True):
        if raw is not None:
            as_of, offset, values = decode_record(raw)
            out[entity] = (as_of, offset, tuple(values))
    return out


def scrape(port: int) -> dict[str, float]:
    """``/metrics`` of a flow process as ``{'name{labels}': value}`` ({} if not up yet)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


_FRESHET = [sys.executable, "-c", "import sys; from freshet.cli import main; sys.exit(main())"]


class FlowProcess:
    """``freshet run …`` as a child process with its own environment; output to a log file."""

    def __init__(
        self, args: Sequence[str], *, env: dict[str, str], log: Path, cwd: Path | None = None
    ) -> None:
        self.args = list(args)
        self.log = log
        self._file = open(log, "ab")  # noqa: SIM115 - closed in wait()/stop()
        self.proc = subprocess.Popen(
            [*_FRESHET, "run", *self.args],
            env={**os.environ, **env},
            stdout=self._file,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def wait(self, timeout: float) -> int:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"freshet run did not finish in {timeout:g} s:\n{self.output()}"
            ) from None
        self._file.close()
        return code

    def kill(self) -> None:
        """SIGKILL the whole process group (``-p`` children too): a crash, no clean-up."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._file.close()

    def __enter__(self) -> FlowProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


VIEW = get_view("card_txn")
# The Prometheus label selector of the flow's per-view metrics.
LABEL = f'{{view="{VIEW.name}"}}'
LATENESS_MS = VIEW.allowed_lateness_seconds * 1000


def produce_stream(
    bootstrap: str,
    topic: str,
    count: int,
    *,
    seed: int,
    cards: int = 400,
    start_ms: int | None = None,
) -> ProduceCounts:
    config = GeneratorConfig(cards=cards, late_fraction=0.02, bad_fraction=0.01, seed=seed)
    return produce(
        bootstrap,
        topic,
        view=VIEW,
        count=count,
        rate=2_000,
        pace=False,
        config=config,
        start_ms=start_ms,
        max_seconds=60,
    )


def flow_env(bootstrap: str, redis_url: str, offline_dir: Path) -> dict[str, str]:
    return {
        "FRESHET_KAFKA_BOOTSTRAP": bootstrap,
        "FRESHET_REDIS_URL": redis_url,
        "FRESHET_OFFLINE_DIR": str(offline_dir),
    }


def flow_args(topic: str, dlq: str, *extra: str, metrics_port: int = 0) -> list[str]:
    return [
        VIEW.name,
        "--topic",
        topic,
        "--dead-letter-topic",
        dlq,
        "--metrics-port",
        str(metrics_port),
        "--snapshot-interval",
        "1",
        *extra,
    ]


def passes(check: Callable[[], None]) -> Callable[[], bool]:
    def attempt() -> bool:
        try:
            check()
        except AssertionError:
            return False
        return True

    return attempt


def check_redis(client: redis.Redis, ref: Reference, entities: set[str] | None = None) -> None:
    """Every entity's record is the reference's row at its ``(as_of, offset)`` and reflects all
    of the entity's events (``as_of`` >= its newest event time)."""
    wanted = set(ref.applied) if entities is None else entities
    stored = redis_records(client, VIEW, sorted(wanted))
    assert set(stored) == wanted, f"{len(wanted - set(stored))} entities missing in Redis"
    for entity, (as_of, offset, values) in stored.items():
        assert as_of >= ref.max_event_time[entity], f"{entity} is behind"
        row = ref.row_at(entity, as_of, offset)
        assert row is not None, f"{entity}: no reference row at {as_of}/{offset}"
        assert values == row.values, entity
