"""Events/s through the window engine (pure Python, one core) and state bytes per entity.

Workloads (generated in event-time order, each card's events in order, 0.5 % of events up to
4 s out of order, i.e. within the demo's 5 s allowed lateness):

* ``cards``: 1,000,000 events over 100,000 cards spread over one hour of event time (~10 per
  card, minutes apart: most events open new tiles and pass expiry boundaries);
* ``hot``: the same number of events over 1,000 cards (one event per card every ~3.6 s: tiles
  fill and expire continuously, the case where per-event cost could grow with W/h).

Views: the demo view ``card_txn`` (5 min / 1 h / 24 h windows), and the demo's six features all
over one window W with hop h: 5 min and 24 h with 30 tiles each (same hop count), and with 300
tiles each (10x more tiles).

The limit each speed is compared with, measured in the same run on the same events: the
smallest per-entity stateful loop (dict lookup, one running count and sum, one tuple out per
event). Throughput is reported as the median over ``--repeat`` runs and as a ratio to that
limit; per-event cost as the median and p99 over chunks of 1,000 events. Usage::

    .venv/bin/python tests/bench/engine/bench_engine.py [--events N] [--cards K] [--repeat R]
"""

from __future__ import annotations

import argparse
import gc
import pickle
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from flows.definitions import Feature, FeatureView
from flows.engine import EntityState, ViewEngine
from flows.views import CARD_TXN

_BASE = 1_767_225_600_000  # 2026-01-01T00:00:00Z
_SPAN_MS = 3_600_000
_CHUNK = 1_000

Event = tuple[str, int, tuple[float, str], int]


def make_events(n: int, cards: int, seed: int = 7) -> list[Event]:
    """``n`` events over ``cards`` cards in event-time order, with a little disorder."""
    rnd = random.Random(seed)
    names = [f"card-{i:07d}" for i in range(cards)]
    merchants = [f"merchant-{i:05d}" for i in range(20_000)]
    # Each card shops mostly at a few merchants.
    favourites = [[rnd.choice(merchants) for _ in range(4)] for _ in range(cards)]
    step = _SPAN_MS / n
    events: list[Event] = []
    for i in range(n):
        card = rnd.randrange(cards)
        t = _BASE + int(i * step)
        if rnd.random() < 0.005:
            t -= rnd.randrange(4_000)
        merchant = rnd.choice(favourites[card]) if rnd.random() < 0.9 else rnd.choice(merchants)
        amount = round(rnd.lognormvariate(3.0, 1.0), 2)
        events.append((names[card], t, (amount, merchant), i))
    return events


def _run_engine(view: FeatureView, events: list[Event]) -> tuple[float, list[float], int, dict]:
    """Seconds, per-event µs per chunk, rows, states."""
    engine = ViewEngine(view, clock=lambda: 0)
    apply = engine.apply
    new_state = engine.new_state
    states: dict[str, EntityState] = {}
    get = states.get
    rows = 0
    chunk_us: list[float] = []
    perf = time.perf_counter
    gc.collect()
    start = perf()
    for c in range(0, len(events), _CHUNK):
        t0 = perf()
        for entity, t, fields, offset in events[c : c + _CHUNK]:
            state = get(entity)
            if state is None:
                state = states[entity] = new_state()
            out = apply(state, entity, t, fields, 0, offset)
            if out is not None:
                rows += len(out)
        chunk_us.append((perf() - t0) / _CHUNK * 1e6)
    return perf() - start, chunk_us, rows, states


def _run_limit(events: list[Event]) -> float:
    """The floor: a per-entity running count and sum, one output tuple per event."""
    states: dict[str, list[Any]] = {}
    get = states.get
    out = []
    gc.collect()
    start = time.perf_counter()
    for entity, t, fields, offset in events:
        state = get(entity)
        if state is None:
            state = states[entity] = [0, 0.0]
        state[0] += 1
        state[1] += fields[0]
        out.append((entity, t, (state[0], state[1]), offset))
    return time.perf_counter() - start


def _uniform(view: FeatureView, name: str, window: str, hop: str) -> FeatureView:
    features = tuple(
        f if f.window is None else Feature(f.name, f.agg, f.field, window=window, hop=hop)
        for f in view.features
    )
    return replace(view, name=name, features=features)


def _state_bytes(states: dict[str, EntityState]) -> tuple[float, float, float]:
    sizes = sorted(len(pickle.dumps(s, protocol=pickle.HIGHEST_PROTOCOL)) for s in states.values())
    return statistics.mean(sizes), sizes[len(sizes) // 2], sizes[int(len(sizes) * 0.99)]


def _measure(
    label: str,
    view: FeatureView,
    events: list[Event],
    repeat: int,
    limit_s: float,
    print_row: Callable[..., None],
) -> None:
    runs = [_run_engine(view, events) for _ in range(repeat)]
    seconds = statistics.median(r[0] for r in runs)
    chunks = sorted(us for r in runs for us in r[1])
    rows = runs[0][2]
    mean_b, median_b, p99_b = _state_bytes(runs[0][3])
    eps = len(events) / seconds
    print_row(
        label,
        f"{eps:,.0f}",
        f"{(len(events) / limit_s) and eps / (len(events) / limit_s):.2f}",
        f"{statistics.median(chunks):.2f}",
        f"{chunks[int(len(chunks) * 0.99)]:.2f}",
        f"{rows / len(events):.2f}",
        f"{mean_b:.0f}/{median_b:.0f}/{p99_b:.0f}",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--cards", type=int, default=100_000)
    parser.add_argument("--hot-cards", type=int, default=1_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only-demo", action="store_true", help="skip the window-length study")
    args = parser.parse_args()

    views = [("card_txn (demo)", CARD_TXN)]
    if not args.only_demo:
        views += [
            ("5m / 10s (30 tiles)", _uniform(CARD_TXN, "u5m30", "5m", "10s")),
            ("24h / 48m (30 tiles)", _uniform(CARD_TXN, "u24h30", "24h", "48m")),
            ("5m / 1s (300 tiles)", _uniform(CARD_TXN, "u5m300", "5m", "1s")),
            ("24h / 288s (300 tiles)", _uniform(CARD_TXN, "u24h300", "24h", "288s")),
        ]
    header = ("view", "events/s", "x limit", "µs/ev p50", "µs/ev p99", "rows/ev", "state B")
    widths = (24, 10, 8, 10, 10, 8, 16)

    def print_row(*cells: str) -> None:
        print("  ".join(str(c).rjust(w) if i else str(c).ljust(w)
                        for i, (c, w) in enumerate(zip(cells, widths, strict=True))))  # fmt: skip

    for workload, cards in (("cards", args.cards), ("hot", args.hot_cards)):
        events = make_events(args.events, cards)
        limit_s = statistics.median(_run_limit(events) for _ in range(args.repeat))
        print(
            f"\n{workload}: {args.events:,} events, {cards:,} cards, 1 h of event time; "
            f"limit (per-key running count+sum) {args.events / limit_s:,.0f} events/s; "
            f"median of {args.repeat} runs; state B = pickled bytes per entity mean/p50/p99"
        )
        print_row(*header)
        for label, view in views:
            _measure(label, view, events, args.repeat, limit_s, print_row)
        del events


if __name__ == "__main__":
    main()
