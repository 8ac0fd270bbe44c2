"""How fast is `freshet historical`, how much memory does it take, and is it right at scale?

Builds a synthetic log of the demo view ``card_txn`` with :class:`ParquetLogWriter`:
``--entities`` (100,000) x ``--rows-per-entity`` (20) rows over 5 days, ties (two rows at one
``as_of``) and ~1 % copies of rows (written again by a second writer id, as after a crash).
Then joins ``--probes`` (1,000,000) entity/timestamp rows (10 % unknown entities, times from
an hour before the log to an hour after) against it, all six features, and as limits in the
same run: a bare DuckDB scan of the same segments (every column) and a bare DuckDB
``ASOF LEFT JOIN`` of the same probes and segments (no tie-break, no TTL, no input order).
Every measurement runs in a fresh subprocess, so its peak RSS (``ru_maxrss``) is its own; runs
are interleaved and repeated ``--runs`` times: median and p99 (= the slowest of few runs).
Finally checks ``--check`` random probe rows against a brute-force Python as-of.

Usage::

    .venv/bin/python tests/bench/historical/bench_historical.py [--runs 3] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from freshet.dsl.views import CARD_TXN
from freshet.offline.historical import ViewRequest, historical_features, write_historical
from freshet.sinks.parquet_log import ParquetLogWriter, read_log, segment_paths
from freshet.sinks.rows import Row

LAYOUT = CARD_TXN.layout()
T0 = 1_714_521_600_000  # 2024-05-01T00:00:00Z
SPAN_MS = 5 * 86_400_000
HOUR = 3_600_000


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_log(root: Path, entities: int, per_entity: int) -> int:
    rng = random.Random(1)
    step = SPAN_MS // per_entity
    main = ParquetLogWriter(root, LAYOUT, max_rows=200_000, max_age_s=1e9, writer_id="w0")
    again = ParquetLogWriter(root, LAYOUT, max_rows=200_000, max_age_s=1e9, writer_id="w1")
    offset = 0
    written = 0
    for k in range(per_entity):
        batch, copies = [], []
        for e in range(entities):
            offset += 1
            # every 50th row shares its as_of with the entity's previous row: a tie
            tie = k > 0 and e % 50 == 0
            as_of = T0 + k * step + (0 if tie else rng.randrange(1, step))
            values = (k, k * 1.5, 1.5, float(k), f"m{(e + k) % 200}", k % 30)
            row = Row(LAYOUT.name, f"card_{e:06d}", as_of, values, e % 3, offset)
            batch.append(row)
            if rng.random() < 0.01:
                copies.append(row)
        main.write(batch)
        again.write(copies)
        written += len(batch) + len(copies)
    main.close()
    again.close()
    return written


def build_probes(path: Path, n: int, entities: int) -> None:
    rng = random.Random(2)
    names = pa.array([f"card_{e:06d}" for e in range(int(entities * 1.1))])
    picks = pa.array([rng.randrange(len(names)) for _ in range(n)])
    table = pa.table(
        {
            "entity": names.take(picks),
            "timestamp": pa.array(
                [rng.randrange(T0 - HOUR, T0 + SPAN_MS + HOUR) for _ in range(n)]
            ),
            "label": pa.array([rng.randrange(2) for _ in range(n)], pa.int8()),
        }
    )
    pq.write_table(table, path)


# --- children: one measurement each, printed as JSON -----------------------------------------


def child(kind: str, log: Path, probes_path: Path, out: Path) -> dict[str, Any]:
    import duckdb

    probes = pq.read_table(probes_path)
    before = _rss_mib()
    started = time.perf_counter()
    if kind == "ours":
        table = historical_features(log, probes, [ViewRequest(LAYOUT, LAYOUT.feature_names)])
        rows = table.num_rows
    elif kind == "ours_to_file":
        rows = write_historical(log, probes, [ViewRequest(LAYOUT, LAYOUT.feature_names)], out)
    else:
        files = ", ".join(f"'{p}'" for p in segment_paths(log, LAYOUT.name))
        source = f"read_parquet([{files}])"
        con = duckdb.connect()
        con.register("probes", probes)
        if kind == "scan":
            sql = f"SELECT * FROM {source}"
        else:  # bare ASOF
            features = ", ".join(LAYOUT.feature_names)
            sql = (
                f"WITH l AS (SELECT entity, epoch_ms(as_of) AS a, {features} FROM {source}) "
                "SELECT * FROM probes p ASOF LEFT JOIN l ON p.entity = l.entity "
                "AND p.timestamp >= l.a"
            )
        result = con.sql(sql).arrow()
        table = result.read_all() if isinstance(result, pa.RecordBatchReader) else result
        rows = table.num_rows
    seconds = time.perf_counter() - started
    return {"kind": kind, "rows": rows, "s": seconds, "rss_before": before, "rss_peak": _rss_mib()}


def run_child(kind: str, log: Path, probes: Path, out: Path) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--child", kind, "--keep", str(log.parent)]
    argv += ["--probes-file", str(probes), "--out-file", str(out)]
    done = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=900)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# --- correctness on a sample ------------------------------------------------------------------


def check_sample(log: Path, probes_path: Path, n: int) -> int:
    probes = pq.read_table(probes_path)
    rng = random.Random(3)
    picked = probes.take(pa.array(sorted(rng.sample(range(probes.num_rows), n))))
    out = historical_features(log, picked, [ViewRequest(LAYOUT, LAYOUT.feature_names)])
    wanted = pc.field("entity").isin(pc.unique(picked["entity"]))
    table = read_log(log, LAYOUT.name, filter=wanted)
    table = table.set_column(
        table.column_names.index("as_of"), "as_of", table["as_of"].cast(pa.int64())
    )
    rows = table.to_pylist()
    by_entity: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_entity.setdefault(r["entity"], []).append(r)
    mismatches = 0
    names = LAYOUT.feature_names
    for got, entity, ts in zip(
        out.select(list(names)).to_pylist(),
        picked["entity"].to_pylist(),
        picked["timestamp"].to_pylist(),
        strict=True,
    ):
        seen = [r for r in by_entity.get(entity, []) if r["as_of"] <= ts]
        best = max(seen, key=lambda r: (r["as_of"], r["offset"], r["partition"]), default=None)
        want = {n: (None if best is None else best[n]) for n in names}
        if best is not None and best["as_of"] + LAYOUT.ttl_seconds * 1000 < ts:
            want = dict.fromkeys(names)
        mismatches += got != want
    return mismatches


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entities", type=int, default=100_000)
    parser.add_argument("--rows-per-entity", type=int, default=20)
    parser.add_argument("--probes", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--check", type=int, default=2_000)
    parser.add_argument("--keep", type=Path, default=None, help="work dir to reuse (not deleted)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--probes-file", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out-file", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        assert args.keep is not None
        assert args.probes_file is not None
        result = child(args.child, args.keep / "log", args.probes_file, args.out_file)
        print(json.dumps(result))
        return

    work = args.keep if args.keep is not None else Path(tempfile.mkdtemp(prefix="bench-hist-"))
    try:
        log, probes, out = work / "log", work / "probes.parquet", work / "out.parquet"
        if not segment_paths(log, LAYOUT.name):
            started = time.perf_counter()
            written = build_log(log, args.entities, args.rows_per_entity)
            print(f"log: {written:,} rows written in {time.perf_counter() - started:.1f} s")
        segments = segment_paths(log, LAYOUT.name)
        size = sum(p.stat().st_size for p in segments) / 2**20
        print(f"log: {len(segments)} segments, {size:.1f} MiB")
        if not probes.exists() or pq.read_metadata(probes).num_rows != args.probes:
            build_probes(probes, args.probes, args.entities)
        print(f"probes: {args.probes:,} rows; DuckDB threads: default (all cores)")

        kinds = ["scan", "bare_asof", "ours", "ours_to_file"]
        results: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
        for _ in range(args.runs):
            for kind in kinds:
                results[kind].append(run_child(kind, log, probes, out))
        assert pq.read_metadata(out).num_rows == args.probes

        print(f"{'':14} {'median s':>9} {'p99 s':>7} {'rows/s':>11} {'peak RSS':>9}")
        for kind in kinds:
            times = [r["s"] for r in results[kind]]
            median = statistics.median(times)
            rows = results[kind][0]["rows"]  # probes, or log rows for the scan
            peak = max(r["rss_peak"] for r in results[kind])
            base = max(r["rss_before"] for r in results[kind])
            print(
                f"{kind:14} {median:9.2f} {_p(times, 0.99):7.2f} {rows / median:11,.0f} "
                f"{peak:6.0f} MiB (after loading the probes: {base:.0f} MiB)"
            )
        # Per run (the kinds of one run ran back to back): our time / the limit's time.
        for limit in ("bare_asof", "scan"):
            ratios = [
                o["s"] / lim["s"] for o, lim in zip(results["ours"], results[limit], strict=True)
            ]
            print(
                f"ours / {limit}: median {statistics.median(ratios):.2f}x, "
                f"p99 {_p(ratios, 0.99):.2f}x (time; lower is better)"
            )

        started = time.perf_counter()
        bad = check_sample(log, probes, args.check)
        print(
            f"brute-force check: {args.check:,} random probe rows, {bad} mismatches "
            f"({time.perf_counter() - started:.1f} s)"
        )
        if bad:
            raise SystemExit(1)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
