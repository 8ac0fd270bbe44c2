"""Late letters find their source records among the process's recent polls
(``freshet.stream.deadletter.RecentRecords``) without a read from Kafka."""

from __future__ import annotations

from freshet.decode.messages import DeadLetter, RawMessage
from freshet.dsl.registry import get_view
from freshet.stream.deadletter import RecentRecords, SourceRecords, late_letter

VIEW = get_view("card_txn")


def poll(topic: str, partition: int, first: int, n: int, step: int = 1) -> list[RawMessage]:
    return [
        RawMessage(
            key=b"k%d" % o,
            value=b"v%d" % o,
            topic=topic,
            partition=partition,
            offset=o,
            headers=[("h", b"%d" % o)],
        )
        for o in range(first, first + n * step, step)
    ]


def test_recent_records_finds_records_of_each_partitions_last_polls_only() -> None:
    recent = RecentRecords(polls=2)
    recent.remember("t", 0, poll("t", 0, 0, 10))
    recent.remember("t", 1, poll("t", 1, 0, 10))
    recent.remember("t", 1, poll("t", 1, 10, 10))
    assert recent.get("t", 0, 3) == (b"k3", b"v3", [("h", b"3")])
    assert recent.get("t", 1, 9) == (b"k9", b"v9", [("h", b"9")])
    assert recent.get("t", 0, 10) is None  # never seen
    assert recent.get("other", 0, 3) is None  # another topic
    # Partition 0's polls are its own: two more of partition 1 keep its first one.
    recent.remember("t", 1, poll("t", 1, 20, 10))
    assert recent.get("t", 0, 3) == (b"k3", b"v3", [("h", b"3")])
    assert recent.get("t", 1, 9) is None  # partition 1's first poll fell out
    recent.remember("t", 0, poll("t", 0, 10, 10))
    recent.remember("t", 0, poll("t", 0, 20, 10))
    assert recent.get("t", 0, 3) is None
    assert recent.get("t", 0, 12) == (b"k12", b"v12", [("h", b"12")])


def test_late_letters_get_their_bytes_from_recent_polls_without_kafka() -> None:
    recent = RecentRecords()
    recent.remember(VIEW.source.topic, 2, poll(VIEW.source.topic, 2, 100, 50))
    event = ("card_000001", 1_714_564_800_000, (12.5, "m1"), 2, 120, 1_714_564_800_000)
    late = late_letter(VIEW, event, watermark_ms=1_714_564_900_000)
    other = DeadLetter("undecodable", "bad", VIEW.name, b"k", b"\xff", VIEW.source.topic, 2, 101)
    # No broker: a read from Kafka would fail; the recent polls must be enough.
    sources = SourceRecords({"bootstrap.servers": "127.0.0.1:9"}, recent=recent, timeout_s=0.1)
    restored, unchanged = sources.restore([late, other])
    assert (restored.key, restored.value, restored.headers) == (b"k120", b"v120", [("h", b"120")])
    assert (restored.reason, restored.offset, restored.error) == ("late", 120, late.error)
    assert unchanged == other


def test_recent_records_finds_offsets_across_gaps() -> None:
    """Offsets of a poll can skip (transaction markers, compaction): found by bisection."""
    recent = RecentRecords()
    recent.remember("t", 0, poll("t", 0, 0, 20, step=3))  # 0, 3, 6, ... 57
    assert recent.get("t", 0, 6) == (b"k6", b"v6", [("h", b"6")])
    assert recent.get("t", 0, 57) == (b"k57", b"v57", [("h", b"57")])
    assert recent.get("t", 0, 7) is None
