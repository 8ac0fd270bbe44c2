"""Can the offline log keep up with the pipeline? Rows/s written and read, next to bare pyarrow.

Writes ``--rows`` rows of the demo view ``card_txn`` (6 features, 100,000 entities) through
``ParquetLogWriter.write`` in batches of 1,000 with ``max_rows`` 100,000, and as the limit
writes the same rows with bare pyarrow (``Table.from_pylist``-free: columns already built,
one ``pq.write_table`` per 100,000 rows) — so the ratio shows the cost of rows -> columns,
sorting, fsync and rename. Then reads the log back with ``read_log`` (dedupe on, and off) next
to a bare ``pyarrow.dataset`` read. Repeats ``--runs`` times; prints median and p99 (slow).
Usage::

    .venv/bin/python tests/bench/parquet/bench_parquet_log.py [--rows 500000] [--runs 5]
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from freshet.dsl.registry import get_view
from freshet.sinks.parquet_log import ParquetLogWriter, log_schema, read_log
from freshet.sinks.rows import Row

BATCH = 1_000
SEGMENT = 100_000
START = 1_714_564_800_000


def _rows(n: int) -> list[Row]:
    rng = random.Random(1)
    return [
        Row(
            "card_txn",
            f"card_{rng.randrange(100_000):06d}",
            START + i,
            (
                rng.randrange(50),
                rng.random() * 500,
                rng.random() * 50,
                rng.random() * 900,
                f"merchant_{rng.randrange(200):03d}",
                rng.randrange(30),
            ),
            i % 3,
            i,
        )
        for i in range(n)
    ]


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if not 10_000 <= args.rows <= 5_000_000 or not 1 <= args.runs <= 50:
        parser.error("--rows must be 10,000..5,000,000 and --runs 1..50")
    layout = get_view("card_txn").layout()
    rows = _rows(args.rows)
    schema = log_schema(layout)
    columns = list(
        zip(
            *[(r.entity, r.as_of, *r.values, r.partition, r.offset, START) for r in rows],
            strict=True,
        )
    )
    tables = [
        pa.Table.from_arrays(
            [
                pa.array(c[i : i + SEGMENT]).cast(f.type)
                for c, f in zip(columns, schema, strict=True)
            ],
            schema=schema,
        )
        for i in range(0, args.rows, SEGMENT)
    ]
    results: dict[str, list[float]] = {
        k: []
        for k in ("write limit", "write freshet", "read limit", "read freshet", "read no-dedupe")
    }
    for _ in range(args.runs):
        root = Path(tempfile.mkdtemp(prefix="freshet-bench-"))
        try:
            started = time.perf_counter()
            for i, table in enumerate(tables):
                pq.write_table(table, root / f"limit-{i}.parquet", compression="zstd")
            results["write limit"].append(args.rows / (time.perf_counter() - started))

            writer = ParquetLogWriter(root / "log", layout, max_rows=SEGMENT, max_age_s=3600)
            started = time.perf_counter()
            for i in range(0, args.rows, BATCH):
                writer.write(rows[i : i + BATCH])
            writer.close()
            results["write freshet"].append(args.rows / (time.perf_counter() - started))

            started = time.perf_counter()
            ds.dataset(sorted(str(p) for p in root.glob("limit-*.parquet"))).to_table()
            results["read limit"].append(args.rows / (time.perf_counter() - started))
            for name, dedupe in (("read freshet", True), ("read no-dedupe", False)):
                started = time.perf_counter()
                assert read_log(root / "log", "card_txn", dedupe=dedupe).num_rows == args.rows
                results[name].append(args.rows / (time.perf_counter() - started))
        finally:
            shutil.rmtree(root)
    print(
        f"\ncard_txn offline log: {args.rows:,} rows, batches of {BATCH:,}, segments of "
        f"{SEGMENT:,}, {args.runs} runs (rows/s)"
    )
    for name, values in results.items():
        print(
            f"  {name:15} median {statistics.median(values):>12,.0f}"
            f"   p99 {_p(values, 0.01):>12,.0f}"
        )
    for kind in ("write", "read"):
        ratios = [
            f / limit
            for f, limit in zip(results[f"{kind} freshet"], results[f"{kind} limit"], strict=True)
        ]
        print(
            f"  {kind} freshet / limit: median {statistics.median(ratios):.2f}, "
            f"p99 (worst) {_p(ratios, 0.01):.2f}"
        )


if __name__ == "__main__":
    main()
