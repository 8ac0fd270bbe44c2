"""The Redis sink partition's writer thread: what a snapshot guarantees and how errors surface.

The partition queues rows for its thread; Bytewax commits an epoch only after the partition's
``snapshot`` returns, so ``snapshot`` must return only once every queued row is written.
A fake writer stands in for ``RedisFeatureWriter`` (the real one is exercised against a real
Redis in ``tests/integration``).
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from freshet.sinks.rows import Row
from freshet.stream.connectors import _RedisPartition
from freshet.stream.pipeline import Changes

T0 = 1_714_521_600_000


def row(entity: str, as_of: int) -> Row:
    return Row("card_txn", entity, as_of, (1, 2.0, 2.0, 2.0, "m1", 1), 0, as_of - T0)


def changes(*rows: Row) -> Changes:
    return Changes(list(rows), [r.as_of for r in rows], [])


class GatedWriter:
    """Records each write; each write waits until the test opens the gate."""

    def __init__(self) -> None:
        self.writes: list[list[Row]] = []
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.fail_with: BaseException | None = None

    def write(self, rows: list[Row]) -> int:
        self.entered.set()
        assert self.gate.wait(10), "the test never opened the gate"
        if self.fail_with is not None:
            raise self.fail_with
        self.writes.append(list(rows))
        return len(rows)


class FakeClient:
    closed = False

    def close(self) -> None:
        self.closed = True


def partition(writer: GatedWriter) -> tuple[_RedisPartition, FakeClient]:
    client = FakeClient()
    return _RedisPartition("card_txn", writer, client, max_queued=1_000), client  # type: ignore[arg-type]


def test_snapshot_returns_only_after_every_queued_row_is_written() -> None:
    writer = GatedWriter()
    part, client = partition(writer)
    part.write_batch([changes(row("a", T0), row("b", T0 + 1))])
    assert writer.entered.wait(5)
    done = threading.Event()
    snapshotter = threading.Thread(target=lambda: (part.snapshot(), done.set()))
    snapshotter.start()
    assert not done.wait(0.3), "snapshot returned while a write was still in flight"
    writer.gate.set()
    assert done.wait(5)
    snapshotter.join()
    assert [[r.entity for r in w] for w in writer.writes] == [["a", "b"]]
    part.close()
    assert client.closed


def test_rows_queued_behind_a_write_are_coalesced_to_each_entitys_newest() -> None:
    writer = GatedWriter()
    part, _ = partition(writer)
    part.write_batch([changes(row("a", T0))])
    assert writer.entered.wait(5)  # the thread is busy with the first batch
    part.write_batch([changes(row("a", T0 + 1), row("b", T0 + 1))])
    part.write_batch([changes(row("a", T0 + 2))])
    writer.gate.set()
    part.snapshot()
    assert [[(r.entity, r.as_of) for r in w] for w in writer.writes] == [
        [("a", T0)],
        [("a", T0 + 2), ("b", T0 + 1)],
    ]
    part.close()


def test_a_write_error_stops_the_flow_at_its_next_call() -> None:
    writer = GatedWriter()
    writer.fail_with = ValueError("row of view 'x' has 5 values; the layout has 6 features")
    writer.gate.set()
    part, client = partition(writer)
    part.write_batch([changes(row("a", T0))])
    with pytest.raises(RuntimeError, match="writing view 'card_txn' to Redis failed: row of"):
        part.snapshot()
    with pytest.raises(RuntimeError, match="to Redis failed"):
        part.write_batch([changes(row("b", T0))])
    with pytest.raises(RuntimeError, match="to Redis failed"):
        part.close()
    assert client.closed  # closed even when the last write failed


def test_write_batch_waits_while_the_queue_is_full() -> None:
    writer = GatedWriter()
    part, _ = partition(writer)  # max_queued=1,000 rows
    part.write_batch([changes(row("first", T0))])
    assert writer.entered.wait(5)  # the thread holds the first batch at the gate
    part.write_batch([changes(*(row(f"e{i}", T0) for i in range(1_000)))])  # queue now full
    returned = threading.Event()

    def more() -> Any:
        part.write_batch([changes(row("late", T0 + 1))])
        returned.set()

    producer = threading.Thread(target=more)
    producer.start()
    assert not returned.wait(0.3), "write_batch did not wait for room in a full queue"
    writer.gate.set()
    assert returned.wait(5)
    producer.join()
    part.close()
    written = [r.entity for w in writer.writes for r in w]
    assert written.count("late") == 1
    assert len(written) == 1_002
