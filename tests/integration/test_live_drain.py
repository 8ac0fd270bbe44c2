"""Live ``freshet run``: an idle card's windows drain on time, in Redis and in the offline log.

DESIGN "Window semantics": a non-empty tile of a window ``W`` on hop ``h`` expires at
``B = tile_start + h + W``; its row (``as_of = B``) is emitted once the card's watermark passes
``B``, and while the card is idle the watermark advances with the wall clock. So after its last
event a card's windowed values step down at each boundary and reach their empty values (0 for
counts and sums, null for mean, min and max) with no event to push them.

The cards' events are stamped with wall-clock times of the last 3 s, the newest one now, and
sent to a running flow; then nothing more is sent. The boundaries and the values as of each
are computed here from the window definitions alone (brute force over the events), and Redis
is polled to record when each boundary's row first shows: no earlier than ``B + L`` (``L``:
allowed lateness, which the watermark trails by) and at most one hop + 2 s after ``B``. The
same rows, exactly once each, must reach the offline log while the flow runs.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from confluent_kafka import Producer
from drain_views import DRAIN_TXN
from pipeline_harness import FlowProcess, flow_env, offline_rows, redis_records, wait_until

from freshet.dsl.definitions import Aggregation, Feature

VIEW = DRAIN_TXN
VIEWS_FILE = Path(__file__).with_name("drain_views.py")
LATENESS_MS = VIEW.allowed_lateness_seconds * 1000
GRACE_MS = 2_000  # on top of one hop: the flow's reaction time allowed after a boundary
# One snapshot (epoch) a second: without a recovery dir each one starts a segment commit.
FLOW_OPTIONS = ("--snapshot-interval", "1", "--segment-age", "1", "--metrics-port", "0")


@dataclass(frozen=True)
class Event:
    card: str
    t: int  # event time, epoch ms
    amount: float
    merchant: str

    def to_json(self) -> bytes:
        return orjson.dumps(
            {"card_id": self.card, "amount": self.amount, "merchant": self.merchant, "ts": self.t}
        )


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


def _windowed(feature: Feature) -> tuple[int, int] | None:
    """``(W, h)`` of a windowed feature in ms, None for a lifetime one."""
    if feature.window_seconds is None or feature.hop_seconds is None:
        return None
    return feature.window_seconds * 1000, feature.hop_seconds * 1000


def boundaries(events: Iterable[Event]) -> dict[int, int]:
    """``B -> h``: each expiry boundary ``floor(t/h)*h + h + W`` of the events' tiles, with the
    smallest hop of the tilings it closes a tile of."""
    out: dict[int, int] = {}
    for feature in VIEW.features:
        wh = _windowed(feature)
        if wh is None:
            continue
        w, h = wh
        for event in events:
            b = event.t // h * h + h + w
            out[b] = min(h, out.get(b, h))
    return out


def value_as_of(feature: Feature, events: list[Event], at: int) -> Any:
    """``feature`` as of ``at``: over the events with time in ``[floor_h(at - W), at]``."""
    wh = _windowed(feature)
    if wh is None:  # merchant_last, lifetime
        past = [e for e in events if e.t <= at]
        return max(past, key=lambda e: e.t).merchant if past else None
    w, h = wh
    amounts = [e.amount for e in events if (at - w) // h * h <= e.t <= at]
    if feature.agg is Aggregation.COUNT:
        return len(amounts)
    if feature.agg is Aggregation.SUM:
        return math.fsum(amounts)
    if not amounts:
        return None
    if feature.agg is Aggregation.MEAN:
        return math.fsum(amounts) / len(amounts)
    if feature.agg is Aggregation.MIN:
        return min(amounts)
    assert feature.agg is Aggregation.MAX, feature
    return max(amounts)


def values_as_of(events: list[Event], at: int) -> tuple[Any, ...]:
    return tuple(value_as_of(f, events, at) for f in VIEW.features)


def empty_values(events: list[Event]) -> tuple[Any, ...]:
    """Every window empty: 0 for counts and sums, None for the rest; lifetime features keep."""
    empty = {Aggregation.COUNT: 0, Aggregation.SUM: 0.0}
    last = max(events, key=lambda e: e.t)
    return tuple(last.merchant if _windowed(f) is None else empty.get(f.agg) for f in VIEW.features)


def send(producer: Producer, topic: str, events: Iterable[Event]) -> None:
    """Produce ``events`` keyed by card (one partition per card: its order is kept)."""
    for event in events:
        producer.produce(topic, key=event.card.encode(), value=event.to_json())
    assert producer.flush(10) == 0, "events not delivered"


def cards_of(now: int) -> dict[str, list[Event]]:
    """Four cards with 1 to 4 events over the last 3 s (in time order), the newest one now:
    tiles of both hops, one or several per card."""
    spec = {
        "drain_a": [(2500, 12.5), (1300, 30.25), (0, 7.75)],
        "drain_b": [(700, 100.0), (0, 1.5)],
        "drain_c": [(0, 42.0)],
        "drain_d": [(2900, 5.0), (2000, 6.0), (1000, 7.0), (50, 8.0)],
    }
    return {
        card: [Event(card, now - ago, amount, f"m_{card}_{i}") for i, (ago, amount) in enumerate(s)]
        for card, s in spec.items()
    }


@dataclass
class Seen:
    """When (wall ms) a card's Redis record first reflected a time mark (``as_of >= mark``),
    and the values it held if its ``as_of`` was the mark exactly (a later row may have
    replaced that one between two polls)."""

    at: int
    values: tuple[Any, ...] | None


def watch_redis(
    client: redis.Redis, marks: dict[str, set[int]], *, until_ms: int
) -> dict[tuple[str, int], Seen]:
    """Poll the cards' records until each has reached every one of its ``marks`` or the wall
    clock passes ``until_ms``; returns what was seen, by ``(card, mark)``."""
    seen: dict[tuple[str, int], Seen] = {}
    wanted = {(card, mark) for card, ms in marks.items() for mark in ms}
    while wanted - set(seen) and _wall_ms() <= until_ms:
        stored = redis_records(client, VIEW, sorted(marks))
        now = _wall_ms()  # after the read: the rows it shows were written by now
        for card, (as_of, _, values) in stored.items():
            for mark in marks[card]:
                if mark <= as_of and (card, mark) not in seen:
                    seen[card, mark] = Seen(now, values if as_of == mark else None)
        time.sleep(0.02)
    return seen


def test_idle_cards_windows_drain_on_time_in_redis_and_in_the_offline_log(
    kafka_bootstrap: str,
    redis_url: str,
    redis_client: redis.Redis,
    topic_factory: Callable[..., str],
    offline_dir: Path,
    tmp_path: Path,
) -> None:
    topic, dlq = topic_factory(2), topic_factory(1)
    env = {**flow_env(kafka_bootstrap, redis_url, offline_dir), "FRESHET_VIEWS": str(VIEWS_FILE)}
    args = [VIEW.name, "--topic", topic, "--dead-letter-topic", dlq, *FLOW_OPTIONS]
    with FlowProcess(args, env=env, log=tmp_path / "flow.log") as flow:
        # The flow is live end to end before the timed events are sent, and one producer sends
        # both: neither the flow's start-up nor the producer's (~0.5 s, idempotence) delays
        # the timed events, whose expiry timers would wait that much longer.
        producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": "true"})
        send(producer, topic, [Event("drain_warmup", _wall_ms(), 1.0, "m_warmup")])
        try:
            wait_until(
                lambda: redis_records(redis_client, VIEW, ["drain_warmup"]),
                timeout=60,
                what="the flow to serve a first record",
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{flow.output()}") from None

        cards = cards_of(_wall_ms())
        send(producer, topic, (e for events in cards.values() for e in events))
        due = {card: boundaries(events) for card, events in cards.items()}
        newest = {card: max(e.t for e in events) for card, events in cards.items()}
        last_due = max(b + h for bs in due.values() for b, h in bs.items())
        seen = watch_redis(
            redis_client,
            {card: {newest[card], *due[card]} for card in cards},
            until_ms=last_due + GRACE_MS + 1_000,
        )
        assert flow.proc.poll() is None, flow.output()

        # Measured: how long after its newest event each card's row was served (ingest), and
        # how long after each boundary its expiry row was (that ingest time and L included).
        lines = []
        for card, bs in sorted(due.items()):
            got = seen.get((card, newest[card]))
            lines.append(f"{card} ingest: {'-' if got is None else got.at - newest[card]} ms")
            for b, h in sorted(bs.items()):
                got = seen.get((card, b))
                lines.append(f"{card} B={b} (h={h}): +{'-' if got is None else got.at - b} ms")
        report = "\n".join(lines)
        print(f"drain delays (L={LATENESS_MS} ms):\n{report}")
        for card, bs in due.items():
            for b, h in bs.items():
                got = seen.get((card, b))
                assert got is not None, f"{card}: boundary {b} never reached Redis\n{report}"
                assert LATENESS_MS <= got.at - b <= h + GRACE_MS, f"{card} at {b}\n{report}"
                if got.values is not None:
                    assert got.values == pytest.approx(values_as_of(cards[card], b)), (card, b)
        # Idle, every card ends on its last boundary with every window empty.
        final = redis_records(redis_client, VIEW, sorted(cards))
        for card, events in cards.items():
            as_of, _, values = final[card]
            assert as_of == max(due[card]), card
            assert values == empty_values(events), card
            assert values == pytest.approx(values_as_of(events, as_of)), card

        # The offline log holds each boundary's row once, with the same values, and no other
        # row after a card's last event (segments commit about once a second while running).
        expected = {
            (card, b): values_as_of(events, b) for card, events in cards.items() for b in due[card]
        }

        def expiry_rows() -> dict[tuple[str, int], list[tuple[Any, ...]]]:
            rows = defaultdict(list)
            for row in offline_rows(offline_dir, VIEW, dedupe=False):
                events = cards.get(row.entity)
                if events is not None and row.as_of > max(e.t for e in events):
                    rows[row.entity, row.as_of].append(row.values)
            return rows

        logged = wait_until(
            lambda: (rows := expiry_rows()).keys() >= expected.keys() and rows,
            timeout=15,
            what="every boundary's row in the offline log",
        )
        assert logged.keys() == expected.keys()
        for key, values in expected.items():
            assert len(logged[key]) == 1, f"{key} logged {len(logged[key])} times"
            assert logged[key][0] == pytest.approx(values), key
