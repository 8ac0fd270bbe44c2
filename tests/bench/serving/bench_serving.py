"""Lookup endpoint throughput and latency, next to raw Redis measured in the same run.

One run, loopback, a private redis-server holding 100,000 demo entities written with the
sink's writer, one ``freshet serve`` worker on each server (``--servers``, default uvicorn and
granian, both on uvloop):

* endpoint: wrk (``single.lua``: GET one random entity; ``batch.lua``: POST 100 random
  entities) at c = 1, 8, 32, one wrk thread, ``--repeat`` runs of ``--seconds`` each;
* limits: ``redis-benchmark`` running the endpoint's own Redis command (``MGET`` of 1 and of
  100 random record keys) at the same concurrency, and a raw redis-py loop (sync ``mget``,
  one connection, c = 1).

Prints requests/s, p50, p99, p99.9 (median over runs), the server's CPU time per request (user
+ system of the server process tree, from /proc: unlike rates, robust to other load on the
machine), the ratios to the limits, and the issue's targets: single >= 25% of raw Redis
commands/s at c=8 with p99 <= 2 ms; batch-100 >= 100,000 entities/s; p99 at c=1 <= 1 ms.

    .venv/bin/python tests/bench/serving/bench_serving.py [--seconds 5] [--repeat 3]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from _support import (
    CARD_TXN,
    entity,
    free_port,
    percentile,
    private_redis,
    quiet_machine_note,
    summary,
    write_demo,
)

from freshet.sinks.redis_store import record_key

HERE = Path(__file__).resolve().parent
ENTITIES = 100_000
BATCH = 100
CONCURRENCY = (1, 8, 32)


def _redis_benchmark(port: int, clients: int, keys: int, requests: int) -> dict[str, float]:
    prefix = record_key(CARD_TXN, "card___rand_int__").decode()
    command = ["MGET", *([prefix] * keys)]
    out = subprocess.run(
        ["redis-benchmark", "-p", str(port), "-c", str(clients), "-n", str(requests),
         "-r", str(ENTITIES), "--csv", *command],
        check=True, capture_output=True, text=True, timeout=300,
    ).stdout  # fmt: skip
    row = next(csv.DictReader(io.StringIO(out)))
    return {
        "rps": float(row["rps"]),
        "p50_ms": float(row["p50_latency_ms"]),
        "p99_ms": float(row["p99_latency_ms"]),
    }


def _raw_loop(port: int, keys: int, seconds: float) -> dict[str, float]:
    import redis

    client = redis.Redis(port=port)
    rng = random.Random(7)
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()
    while (now := time.perf_counter()) < deadline and len(latencies) < 2_000_000:
        batch = [record_key(CARD_TXN, entity(rng.randrange(ENTITIES))) for _ in range(keys)]
        t0 = time.perf_counter()
        client.mget(batch)
        latencies.append(time.perf_counter() - t0)
        del now
    elapsed = time.perf_counter() - started
    client.close()
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 50) * 1e3,
        "p99_ms": percentile(latencies, 99) * 1e3,
        "p999_ms": percentile(latencies, 99.9) * 1e3,
    }


def _tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its descendants (all threads), from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    total, stack = 0.0, [pid]
    while stack:
        current = stack.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
            for task in Path(f"/proc/{current}/task").iterdir():
                stack.extend(int(c) for c in (task / "children").read_text().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def _wrk(
    url: str, script: str, clients: int, seconds: float, server_pid: int | None = None
) -> dict[str, float]:
    cpu_before = _tree_cpu_s(server_pid) if server_pid else 0.0
    env = {**os.environ, "ENTITIES": str(ENTITIES), "BATCH": str(BATCH)}
    out = subprocess.run(
        ["wrk", "-t1", f"-c{clients}", f"-d{max(1, round(seconds))}s", "--timeout", "5s", "-s",
         str(HERE / script), url],
        check=True, capture_output=True, text=True, env=env, timeout=seconds + 60,
    ).stdout  # fmt: skip
    line = next(line for line in out.splitlines() if line.startswith("WRK "))
    data: dict[str, Any] = json.loads(line[4:])
    if data["errors"] or data["non2xx"]:
        raise RuntimeError(f"wrk saw errors: {data}")
    cpu_s = _tree_cpu_s(server_pid) - cpu_before if server_pid else float("nan")
    return {
        "cpu_us": cpu_s / data["requests"] * 1e6,
        "rps": data["requests"] / (data["duration_us"] / 1e6),
        "p50_ms": data["p50_us"] / 1e3,
        "p99_ms": data["p99_us"] / 1e3,
        "p999_ms": data["p999_us"] / 1e3,
    }


def _start_server(redis_port: int, server: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "FRESHET_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0"}
    env.pop("FRESHET_API_KEYS", None)
    freshet = Path(sys.executable).with_name("freshet")
    command = [str(freshet), "serve", "--port", str(port), "-w", "1", "--server", server]
    proc = subprocess.Popen([*command, "--log-level", "warning"], env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("freshet serve did not become ready")


def _median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    out = {}
    for key in runs[0]:
        median, p99 = summary([r[key] for r in runs])
        out[key] = median
        if key == "rps":
            out["rps_p99_of_runs"] = p99
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--servers", default="uvicorn,granian", help="comma-separated")
    args = parser.parse_args()
    servers = args.servers.split(",")
    for tool in ("wrk", "redis-benchmark"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed (apt-get install wrk redis-tools)")

    with private_redis() as (redis_port, client):
        write_rate = write_demo(client, ENTITIES)
        limits: dict[tuple[str, int], dict[str, float]] = {}
        for kind, keys in (("single", 1), ("batch", BATCH)):
            for c in CONCURRENCY:
                requests = 200_000 if keys == 1 else 20_000
                limits[kind, c] = _redis_benchmark(redis_port, c, keys, requests)
        raw = {
            kind: _raw_loop(redis_port, keys, args.seconds)
            for kind, keys in (("single", 1), ("batch", BATCH))
        }

        results: dict[tuple[str, str, int], dict[str, float]] = {}
        for server in servers:
            proc, url = _start_server(redis_port, server)
            try:
                _wrk(url, "single.lua", 8, 1.0)  # warm-up
                for kind, script in (("single", "single.lua"), ("batch", "batch.lua")):
                    for c in CONCURRENCY:
                        runs = [
                            _wrk(url, script, c, args.seconds, proc.pid) for _ in range(args.repeat)
                        ]
                        results[server, kind, c] = _median_of(runs)
            finally:
                proc.terminate()
                proc.wait(timeout=30)

    print(
        f"serving bench: {ENTITIES:,} demo entities (written at {write_rate:,.0f} rows/s), "
        f"1 server worker, wrk -t1, {args.repeat} x {args.seconds:g}s per point; "
        f"{quiet_machine_note()}"
    )
    header = (
        f"{'what':34} {'c':>3} {'req/s':>9} {'ent/s':>9} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'p99.9 ms':>8} {'vs redis-bench':>14} {'server CPU us/req':>17}"
    )
    print(header)
    for kind in ("single", "batch"):
        per = 1 if kind == "single" else BATCH
        for server in servers:
            for c in CONCURRENCY:
                r, lim = results[server, kind, c], limits[kind, c]
                label = f"{server} {kind}" + ("" if per == 1 else f"-{per}")
                print(
                    f"{label:34} {c:3d} {r['rps']:9,.0f} {r['rps'] * per:9,.0f} "
                    f"{r['p50_ms']:7.3f} {r['p99_ms']:7.3f} {r['p999_ms']:8.3f} "
                    f"{r['rps'] / lim['rps']:14.1%} {r['cpu_us']:17.0f}"
                )
        for c in CONCURRENCY:
            lim = limits[kind, c]
            print(
                f"{f'redis-benchmark MGET x{per}':34} {c:3d} {lim['rps']:9,.0f} "
                f"{lim['rps'] * per:9,.0f} {lim['p50_ms']:7.3f} {lim['p99_ms']:7.3f} {'-':>8}"
            )
        rl = raw[kind]
        print(
            f"{f'raw redis-py loop mget x{per}':34} {1:3d} {rl['rps']:9,.0f} "
            f"{rl['rps'] * per:9,.0f} {rl['p50_ms']:7.3f} {rl['p99_ms']:7.3f} {rl['p999_ms']:8.3f}"
        )

    for server in servers:
        single8 = results[server, "single", 8]
        single1 = results[server, "single", 1]
        best_batch = max(results[server, "batch", c]["rps"] for c in CONCURRENCY) * BATCH
        share = single8["rps"] / limits["single", 8]["rps"]
        checks = [
            ("single c=8 >= 25% of redis-benchmark MGET c=8", share >= 0.25, f"{share:.1%}"),
            ("single c=8 p99 <= 2 ms", single8["p99_ms"] <= 2.0, f"{single8['p99_ms']:.3f} ms"),
            ("batch-100 >= 100,000 entities/s", best_batch >= 100_000, f"{best_batch:,.0f}"),
            ("single p99 at c=1 <= 1 ms", single1["p99_ms"] <= 1.0, f"{single1['p99_ms']:.3f} ms"),
        ]
        for name, ok, shown in checks:
            print(f"{server:8} target {name:46} {'met' if ok else 'MISSED':6} {shown}")


if __name__ == "__main__":
    main()
