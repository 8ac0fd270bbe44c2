"""How close is freshet's batch decoder to the bare codec? Measured, interleaved, same data.

For the demo views (Avro ``card_txn``, JSON ``card_txn_json``) this decodes the same generated
records (with the generator's default 0.5 % malformed and 1 % late) as the consumer's
``confluent_kafka.Message`` items (what the flow's Kafka source emits), in batches of 1,000,
with:

  limit   the bare codec loop collecting its dicts: ``schemaless_reader(BytesIO(value), schema)``
          with the schema as written (timestamp-millis -> datetime), or ``orjson.loads(value)``;
          no checks;
  plain   the same bare loop with time logical types stripped (what freshet parses);
  freshet ``decoder_for(view).decode(batch)``: validation, field extraction, event tuples,
          dead letters (Avro: the reader generated for the schema, ``freshet.decode.avro_reader``).

Runs alternate (limit, plain, freshet) ``--runs`` times; prints events/s as median and p99
(the slow tail over runs) and freshet's ratio to the limit of the same run. Usage::

    .venv/bin/python tests/bench/decode/bench_decode.py [--events 200000] [--runs 11]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from io import BytesIO
from typing import Any

import orjson
from confluent_kafka import Message
from fastavro import parse_schema, schemaless_reader

from freshet.decode.decoder import decoder_for, load_schema, strip_time_logical_types
from freshet.dsl.registry import get_view
from freshet.ops.generator import GeneratorConfig, TransactionStream

BATCH = 1_000
START = 1_714_564_800_000


def _batches(view_name: str, events: int) -> list[list[Any]]:
    stream = TransactionStream(get_view(view_name), GeneratorConfig(seed=1))
    items = [
        Message(
            key=r.key,
            value=r.value,
            topic="bench",
            offset=i,
            partition=0,
            timestamp=(1, START + i),
        )
        for i, r in enumerate(stream.records(events, start_ms=START, rate=10_000))
    ]
    return [items[i : i + BATCH] for i in range(0, len(items), BATCH)]


def _avro_loop(schema: Any) -> Callable[[Sequence[Any]], list[Any]]:
    def run(batch: Sequence[Any]) -> list[Any]:
        out = []
        for m in batch:
            try:  # noqa: SIM105  # contextlib.suppress costs more than the decode in a loop
                out.append(schemaless_reader(BytesIO(m.value()), schema, None))
            except Exception:  # the malformed records: the limit pays for trying too
                pass
        return out

    return run


def _json_loop(batch: Sequence[Any]) -> list[Any]:
    loads = orjson.loads
    out = []
    for m in batch:
        try:  # noqa: SIM105  # as above
            out.append(loads(m.value()))
        except orjson.JSONDecodeError:
            pass
    return out


def _time(
    fn: Callable[[Sequence[Any]], Any], batches: list[list[Any]]
) -> tuple[float, list[float]]:
    per_batch = []
    started = time.perf_counter()
    for batch in batches:
        t = time.perf_counter()
        fn(batch)
        per_batch.append(time.perf_counter() - t)
    return time.perf_counter() - started, per_batch


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=11)
    args = parser.parse_args()
    if not 1_000 <= args.events <= 5_000_000 or not 1 <= args.runs <= 100:
        parser.error("--events must be 1,000..5,000,000 and --runs 1..100")

    for view_name in ("card_txn", "card_txn_json"):
        view = get_view(view_name)
        batches = _batches(view_name, args.events)
        n = sum(len(b) for b in batches)
        decoder = decoder_for(view)
        contenders: dict[str, Callable[[Sequence[Any]], Any]]
        if view.source.encoding == "avro":
            written = load_schema(view.source.schema_path)
            contenders = {
                "limit": _avro_loop(parse_schema(written)),
                "plain": _avro_loop(parse_schema(strip_time_logical_types(written))),
            }
        else:  # JSON has no logical types: plain is the limit again (a noise check)
            contenders = {"limit": _json_loop, "plain": _json_loop}
        contenders["freshet"] = decoder.decode
        rates: dict[str, list[float]] = {name: [] for name in contenders}
        batch_ms: dict[str, list[float]] = {name: [] for name in contenders}
        ratios: list[float] = []
        for _ in range(args.runs):
            seconds = {}
            for name, fn in contenders.items():
                total, per_batch = _time(fn, batches)
                seconds[name] = total
                rates[name].append(n / total)
                batch_ms[name] += [s * 1000 for s in per_batch]
            ratios.append(seconds["limit"] / seconds["freshet"])
        out = decoder.decode([m for b in batches for m in b])
        print(
            f"\n{view_name} ({view.source.encoding}): {n:,} records, {len(out.dead):,} dead "
            f"letters, batches of {BATCH}, {args.runs} runs"
        )
        print(
            f"  {'':8} {'events/s median':>16} {'p99 (slow)':>12} {'batch ms p50':>13} {'p99':>7}"
        )
        for name in contenders:
            print(
                f"  {name:8} {statistics.median(rates[name]):>16,.0f} "
                f"{_p(rates[name], 0.01):>12,.0f} {_p(batch_ms[name], 0.5):>13.2f} "
                f"{_p(batch_ms[name], 0.99):>7.2f}"
            )
        print(
            f"  freshet / limit: median {statistics.median(ratios):.2f}, "
            f"p99 (worst) {_p(ratios, 0.01):.2f}"
        )


if __name__ == "__main__":
    main()
