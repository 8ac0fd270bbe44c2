"""Events/s through the window engine (pure Python, one core) and state bytes per entity.

Workloads: 1,000,000 events in event-time order (each card's events in order, 0.5 % up to 4 s
out of order, within the demo's 5 s allowed lateness):

* ``live``: 100,000 cards, the events spread over 10 s of event time, i.e. event time advancing
  as fast as the engine consumes (a live stream at ~100k events/s): one row per event;
* ``backfill``: 100,000 cards over 1 h of event time (~10 events per card, minutes apart: most
  events open new tiles and pass an expiry boundary, so ~1.8 rows per event);
* ``hot``: 1,000 cards over 1 h (an event per card every ~3.6 s: tiles fill and expire
  continuously, the case where per-event cost could grow with W/h).

Views: the demo view ``card_txn`` (5 min / 1 h / 24 h windows), ``card_expressive`` (a computed
column, filters, stddev, first, last_k and top_k over 5 min and 1 h) and, on ``hot``, the demo's six
features all over one window W with hop h: 5 min and 24 h with 30 tiles each (same hop count),
and with 300 tiles each (10x more tiles).

Times are CPU seconds of this process (``time.process_time``), so the figures are per core
even on a busy machine. Each speed is compared with a limit measured in the same run on the
same events: the smallest per-entity stateful loop (dict lookup, a running count and sum, one
tuple out per event).
Reported: median events/s over ``--repeat`` runs, its ratio to the limit, per-event µs as the
median and p99 over chunks of 1,000 events, rows per event, pickled state bytes per entity.
Python's cyclic GC traverses every live state (the engine's state has no cycles), so the demo
also runs with the GC disabled to show that cost, through ``ViewEngine.apply_batch`` in chunks
of 1,000 (as the pipeline calls it), and "as in freshet run": ``apply_batch`` with the flow
process's GC policy (``freshet.stream.runtime.freeze_gc_survivors``: survivors of a collection are
frozen). Usage::

    .venv/bin/python tests/bench/engine/bench_engine.py [--events N] [--cards K] [--repeat R]
"""

from __future__ import annotations

import argparse
import gc
import os
import pickle
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from freshet.dsl.definitions import Aggregation, Feature, FeatureView
from freshet.dsl.views import CARD_TXN
from freshet.engine.view_engine import EntityState, ViewEngine
from freshet.stream.runtime import freeze_gc_survivors

_BASE = 1_767_225_600_000  # 2026-01-01T00:00:00Z
_CHUNK = 1_000

Event = tuple[str, int, tuple[float, str], int]


def make_events(n: int, cards: int, span_ms: int, seed: int = 7) -> list[Event]:
    """``n`` events over ``cards`` cards in ``span_ms`` of event time, with a little disorder."""
    rnd = random.Random(seed)
    names = [f"card-{i:07d}" for i in range(cards)]
    merchants = [f"merchant-{i:05d}" for i in range(20_000)]
    # Each card shops mostly at a few merchants.
    favourites = [[rnd.choice(merchants) for _ in range(4)] for _ in range(cards)]
    step = span_ms / n
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


def _run_engine(
    view: FeatureView,
    events: list[Event],
    *,
    gc_on: bool = True,
    warm: list[Event] | None = None,
    batch: bool = False,
    freeze: bool = False,
) -> tuple[float, list[float], int, dict[str, EntityState]]:
    """CPU seconds, per-event µs per chunk, rows, states; ``warm`` events are fed first,
    untimed, so the timed events meet entities the engine already knows. ``batch``: each
    chunk goes through ``ViewEngine.apply_batch`` (as the pipeline feeds it), not ``apply``.
    ``freeze``: the GC policy of ``freshet run`` (``freeze_gc_survivors``), warm-up included."""
    if freeze:
        callback = freeze_gc_survivors()
        try:
            return _run_engine(view, events, gc_on=gc_on, warm=warm, batch=batch)
        finally:
            gc.callbacks.remove(callback)
            gc.unfreeze()
    engine = ViewEngine(view, clock=lambda: 0)
    apply = engine.apply
    new_state = engine.new_state
    states: dict[str, EntityState] = {}
    get = states.get
    for entity, t, fields, offset in warm or ():
        state = get(entity)
        if state is None:
            state = states[entity] = new_state()
        apply(state, entity, t, fields, 0, offset)
    rows = 0
    chunk_us: list[float] = []
    perf = time.process_time  # CPU time of this process: "one core", whatever else runs
    gc.collect()
    if not gc_on:
        gc.disable()
    if batch:
        full = [(entity, t, fields, 0, offset, 0) for entity, t, fields, offset in events]
        out_rows: list[Any] = []
        out_ts: list[int] = []
        late: list[Any] = []
        touched: dict[str, EntityState] = {}

        def missing(entity: str) -> EntityState:
            state = states[entity] = new_state()
            return state

        start = perf()
        for c in range(0, len(full), _CHUNK):
            t0 = perf()
            chunk = full[c : c + _CHUNK]
            engine.apply_batch(states, chunk, missing, out_rows, out_ts, late, touched)
            rows += len(out_rows)
            out_rows.clear()
            out_ts.clear()
            touched.clear()
            chunk_us.append((perf() - t0) / _CHUNK * 1e6)
        seconds = perf() - start
        gc.enable()
        return seconds, chunk_us, rows, states
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
    seconds = perf() - start
    gc.enable()
    return seconds, chunk_us, rows, states


def _run_limit(events: list[Event], warm: list[Event] | None = None) -> float:
    """The floor: a per-entity running count and sum, one output tuple per event."""
    states: dict[str, list[Any]] = {}
    get = states.get
    for entity, _, _, _ in warm or ():
        if get(entity) is None:
            states[entity] = [0, 0.0]
    out = []
    gc.collect()
    start = time.process_time()
    for entity, t, fields, offset in events:
        state = get(entity)
        if state is None:
            state = states[entity] = [0, 0.0]
        state[0] += 1
        state[1] += fields[0]
        out.append((entity, t, (state[0], state[1]), offset))
    return time.process_time() - start


def _shifted(events: list[Event], shift_ms: int) -> list[Event]:
    """The same events ``shift_ms`` later, with offsets after theirs: the stream continuing."""
    n = len(events)
    return [(entity, t + shift_ms, fields, offset + n) for entity, t, fields, offset in events]


# The definition of the issue "Feature definitions that real models need" over the demo's topic:
# a computed column, filters and four of the new aggregations (stddev, first, last_k, top_k).
EXPRESSIVE = FeatureView(
    name="card_expressive",
    version=1,
    entity=CARD_TXN.entity,
    source=CARD_TXN.source,
    columns={"big": "amount >= 100.0", "cents": "round(amount * 100)"},
    features=(
        Feature("big_count_1h", Aggregation.COUNT, window="1h", where="big"),
        Feature("small_cents_5m", Aggregation.SUM, "cents", window="5m", where="not big"),
        Feature("amount_std_1h", Aggregation.STDDEV, "amount", window="1h"),
        Feature("amount_first_1h", Aggregation.FIRST, "amount", window="1h"),
        Feature("amount_last3_1h", Aggregation.LAST_K, "amount", window="1h", k=3),
        Feature("merchant_top2_1h", Aggregation.TOP_K, "merchant", window="1h", k=2),
    ),
    allowed_lateness_seconds=CARD_TXN.allowed_lateness_seconds,
)
assert EXPRESSIVE.input_fields == CARD_TXN.input_fields  # the events carry (amount, merchant)


def _uniform(view: FeatureView, name: str, window: str, hop: str) -> FeatureView:
    features = tuple(
        f if f.window is None else Feature(f.name, f.agg, f.field, window=window, hop=hop)
        for f in view.features
    )
    return replace(view, name=name, features=features)


def _state_bytes(states: dict[str, EntityState]) -> tuple[float, float, float]:
    sizes = sorted(len(pickle.dumps(s, protocol=pickle.HIGHEST_PROTOCOL)) for s in states.values())
    return statistics.mean(sizes), sizes[len(sizes) // 2], sizes[int(len(sizes) * 0.99)]


def _in_child(
    view: FeatureView, events: list[Event], **options: Any
) -> tuple[float, list[float], int, tuple[float, float, float]]:
    """``_run_engine`` in a forked child: each run starts from the same heap. (In one process,
    a run after others allocates its 100,000 states into a heap fragmented by theirs and ran
    up to 25 % slower, whatever its settings.) Returns the state bytes instead of states."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read_fd)
        try:
            # Touch every object of the events first: each first write to a page shared with
            # the parent (a reference count going up) copies it, and would be timed otherwise.
            for event in (*events, *(options.get("warm") or ())):
                for item in event:
                    if type(item) is tuple:
                        for _value in item:
                            pass
            run_s, chunks, rows, states = _run_engine(view, events, **options)
            result = pickle.dumps((run_s, chunks, rows, _state_bytes(states)))
            with os.fdopen(write_fd, "wb") as pipe:
                pipe.write(result)
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    if not data:
        raise RuntimeError(f"the benchmark child for {view.name} failed (see its traceback)")
    result: tuple[float, list[float], int, tuple[float, float, float]] = pickle.loads(data)
    return result


def _measure(
    label: str,
    view: FeatureView,
    events: list[Event],
    repeat: int,
    limit_s: float,
    print_row: Callable[..., str],
    *,
    gc_on: bool = True,
    warm: list[Event] | None = None,
    batch: bool = False,
    freeze: bool = False,
) -> None:
    seconds: list[float] = []
    chunks: list[float] = []
    for _ in range(repeat):
        run_s, run_chunks, rows, state_bytes = _in_child(
            view, events, gc_on=gc_on, warm=warm, batch=batch, freeze=freeze
        )
        seconds.append(run_s)
        chunks += run_chunks
    chunks.sort()
    mean_b, median_b, p99_b = state_bytes
    eps = len(events) / statistics.median(seconds)
    print_row(
        label,
        f"{eps:,.0f}",
        f"{eps * limit_s / len(events):.3f}",
        f"{statistics.median(chunks):.2f}",
        f"{chunks[int(len(chunks) * 0.99)]:.2f}",
        f"{rows / len(events):.2f}",
        f"{mean_b:.0f}/{median_b:.0f}/{p99_b:.0f}",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--cards", type=int, default=100_000)
    parser.add_argument("--hot-cards", type=int, default=1_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only-demo", action="store_true", help="skip the window-length study")
    parser.add_argument(
        "--workloads", default="live,backfill,hot", help="comma-separated subset to run"
    )
    args = parser.parse_args()

    header = ("view", "events/CPU-s", "x limit", "µs/ev p50", "µs/ev p99", "rows/ev", "state B")
    widths = (36, 12, 8, 10, 10, 8, 16)

    def print_row(*cells: str) -> str:
        line = "  ".join(
            c.rjust(w) if i else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )
        print(line, flush=True)
        return line

    workloads = [
        ("live", args.cards, 10_000),
        ("backfill", args.cards, 3_600_000),
        ("hot", args.hot_cards, 3_600_000),
    ]
    chosen = set(args.workloads.split(","))
    for workload, cards, span_ms in workloads:
        if workload not in chosen:
            continue
        first = make_events(args.events, cards, span_ms)
        events = _shifted(first, span_ms)  # timed: the stream continuing after `first`
        limit_s = statistics.median(_run_limit(events, first) for _ in range(args.repeat))
        print(
            f"\n{workload}: {args.events:,} events, {cards:,} cards, {span_ms / 1000:,.0f} s of "
            f"event time, after as many untimed ones (warm) or not (cold); limit "
            f"{args.events / limit_s:,.0f} events/CPU-s (per-key running count and sum); "
            f"median of {args.repeat} runs; state B = pickled bytes/entity mean/p50/p99"
        )
        print_row(*header)
        demo = "card_txn (demo)"
        _measure(f"{demo}, cold", CARD_TXN, first, args.repeat, limit_s, print_row)
        _measure(f"{demo}, warm", CARD_TXN, events, args.repeat, limit_s, print_row, warm=first)
        _measure(f"{demo}, warm, GC off", CARD_TXN, events, args.repeat, limit_s, print_row,
                 warm=first, gc_on=False)  # fmt: skip
        _measure(f"{demo}, warm, apply_batch", CARD_TXN, events, args.repeat, limit_s,
                 print_row, warm=first, batch=True)  # fmt: skip
        _measure(f"{demo}, as in freshet run", CARD_TXN, events, args.repeat, limit_s,
                 print_row, warm=first, batch=True, freeze=True)  # fmt: skip
        _measure("card_expressive, as in freshet run", EXPRESSIVE, events, args.repeat,
                 limit_s, print_row, warm=first, batch=True, freeze=True)  # fmt: skip
        if workload == "hot" and not args.only_demo:
            for label, window, hop in (
                ("5m / 10s (30 tiles), warm", "5m", "10s"),
                ("24h / 48m (30 tiles), warm", "24h", "48m"),
                ("5m / 1s (300 tiles), warm", "5m", "1s"),
                ("24h / 288s (300 tiles), warm", "24h", "288s"),
            ):
                view = _uniform(CARD_TXN, f"w{window}_{hop}", window, hop)
                _measure(label, view, events, args.repeat, limit_s, print_row, warm=first)
        del events, first


if __name__ == "__main__":
    main()
