"""The hot-entity cache and ingest, measured side by side in one run.

Cache: a private redis-server holding 100,000 demo entities (the sink's writer); one ``freshet
serve`` worker (uvicorn) with the cache off, then on (``FRESHET_CACHE``); wrk (``zipf.lua``: GET
one entity, Zipf-distributed with exponent ``--zipf-s``, entity 0 hottest) at c = 8, and with
``HOT=1000`` (only the 1,000 hottest, after a warm-up: all cache hits) for the hits' latency.
During the Zipf runs (not the hot ones) a writer rewrites the 100 hottest entities
(``--writes-per-s``) and a checker looks them up, counting *stale reads*: a lookup that
returned a value whose replacement had been acknowledged more than the documented bound
(``max_staleness_ms``) before the lookup started.
The limit: ``redis-benchmark`` running the endpoint's own command (``MGET`` of one random record
key) at the same concurrency. Targets: cached >= 1.5x uncached lookups/s at c=8, p99 of hits
<= 1 ms, zero stale reads.

Ingest: ``freshet run card_txn`` on a fresh topic of the dev Kafka, writing to the private
Redis; ``POST /v1/ingest/card_txn`` batches of 500 without waiting (events/s acknowledged by
Kafka, 4 concurrent clients), then batches of 10 every 10 ms (1,000 events/s) with ``wait_ms``:
each answer's latency is the read-after-write latency (request sent -> every event served).

    .venv/bin/python tests/bench/serving/bench_cache_ingest.py [--seconds 5] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
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

from freshet.sinks.redis_store import RedisFeatureWriter, connect, record_key
from freshet.sinks.rows import Row
from freshet.stream import kafka_clients

HERE = Path(__file__).resolve().parent
ENTITIES = 100_000
CLIENTS = 8
HOT_WRITTEN = 100
BOUND_MS = 100
FRESHET = Path(sys.executable).with_name("freshet")


def _wrk(url: str, seconds: float, *, zipf_s: float, hot: int = 0) -> dict[str, float]:
    env = {**os.environ, "ENTITIES": str(ENTITIES), "ZIPF_S": str(zipf_s), "HOT": str(hot)}
    out = subprocess.run(
        ["wrk", "-t1", f"-c{CLIENTS}", f"-d{max(1, round(seconds))}s", "--timeout", "5s", "-s",
         str(HERE / "zipf.lua"), url],
        check=True, capture_output=True, text=True, env=env, timeout=seconds + 60,
    ).stdout  # fmt: skip
    line = next(line for line in out.splitlines() if line.startswith("WRK "))
    data: dict[str, Any] = json.loads(line[4:])
    if data["errors"] or data["non2xx"]:
        raise RuntimeError(f"wrk saw errors: {data}")
    return {
        "rps": data["requests"] / (data["duration_us"] / 1e6),
        "p50_ms": data["p50_us"] / 1e3,
        "p99_ms": data["p99_us"] / 1e3,
    }


def _redis_benchmark(port: int, requests: int) -> float:
    key = record_key(CARD_TXN, "card___rand_int__").decode()
    out = subprocess.run(
        ["redis-benchmark", "-p", str(port), "-c", str(CLIENTS), "-n", str(requests), "-r",
         str(ENTITIES), "--csv", "MGET", key],
        check=True, capture_output=True, text=True, timeout=300,
    ).stdout  # fmt: skip
    last = [line for line in out.splitlines() if line.strip()][-1]
    return float(last.split(",")[1].strip('"'))


def _serve(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    command = [str(FRESHET), "serve", "--port", str(port), "-w", "1", "--log-level", "warning"]
    proc = subprocess.Popen(command, env={**os.environ, **env})
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


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _metrics(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics").text
    return {
        m.group(1): float(m.group(2))
        for m in re.finditer(r"^(freshet_cache_\w+) ([0-9.e+-]+)$", text, re.M)
    }


class _Churn:
    """Rewrites the hottest entities and checks lookups of them against the staleness bound."""

    def __init__(self, redis_url: str, url: str, writes_per_s: float) -> None:
        self._redis_url, self._url, self._rate = redis_url, url, writes_per_s
        self._stop = threading.Event()
        self._acked: dict[int, dict[int, float]] = {i: {} for i in range(HOT_WRITTEN)}
        self._threads = [
            threading.Thread(target=self._write, daemon=True),
            threading.Thread(target=self._check, daemon=True),
        ]
        self.checked = 0
        self.stale = 0
        self.replaced_served = 0  # served after a newer write was acknowledged (any age)
        self.max_lag_ms = 0.0

    def __enter__(self) -> _Churn:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)

    def _write(self) -> None:
        client = connect(self._redis_url)
        sink = RedisFeatureWriter(client, {"card_txn": CARD_TXN})
        version = 100
        base = time.time_ns() // 1_000_000
        rng = random.Random(5)
        while not self._stop.is_set():
            version += 1
            i = rng.randrange(HOT_WRITTEN)
            row = Row("card_txn", entity(i), base + version, (version, 1.0, 1.0, 1.0, "m", 1),
                      0, version)  # fmt: skip
            sink.write([row])
            self._acked[i][version] = time.monotonic()
            time.sleep(1 / self._rate)  # the writer's pace
        client.close()

    def _check(self) -> None:
        rng = random.Random(6)
        with httpx.Client(base_url=self._url, timeout=5) as client:
            while not self._stop.is_set():
                i = rng.randrange(HOT_WRITTEN)
                started = time.monotonic()
                body = client.get(f"/v1/features/card_txn/{entity(i)}").json()
                version = body["features"]["txn_count_5m"]
                newer = [t for v, t in list(self._acked[i].items()) if v > version]
                self.checked += 1
                if newer:
                    lag = (started - min(newer)) * 1000
                    if lag > 0:
                        self.replaced_served += 1
                        self.max_lag_ms = max(self.max_lag_ms, lag)
                    if lag > BOUND_MS:
                        self.stale += 1


def bench_cache(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with private_redis() as (port, client):
        write_demo(client, ENTITIES)
        # Versions of the churned entities start at 101, above the demo counts (1..17).
        redis_url = f"redis://127.0.0.1:{port}/0"
        raw = [_redis_benchmark(port, 200_000) for _ in range(args.repeat)]
        results["raw_redis_rps"] = summary(raw)[0]
        for mode in ("off", "on"):
            env = {"FRESHET_REDIS_URL": redis_url, "FRESHET_CACHE": mode}
            proc, url = _serve(env)
            try:
                _wrk(url, 2, zipf_s=args.zipf_s)  # warm-up (and, cached, fill the cache)
                runs, hot_runs = [], []
                # Hits alone (the 1,000 hottest, cached by the warm-up), without the churn.
                for _ in range(args.repeat):
                    hot_runs.append(_wrk(url, args.seconds, zipf_s=args.zipf_s, hot=1000))
                with _Churn(redis_url, url, args.writes_per_s) as churn:
                    before = _metrics(url)
                    for _ in range(args.repeat):
                        runs.append(_wrk(url, args.seconds, zipf_s=args.zipf_s))
                    after = _metrics(url)
                delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
                hits = delta.get("freshet_cache_hits_total", 0)
                misses = delta.get("freshet_cache_misses_total", 0)
                results[mode] = {
                    "rps": summary([r["rps"] for r in runs])[0],
                    "rps_runs": [round(r["rps"]) for r in runs],
                    "p50_ms": summary([r["p50_ms"] for r in runs])[0],
                    "p99_ms": summary([r["p99_ms"] for r in runs])[0],
                    "hot_p50_ms": summary([r["p50_ms"] for r in hot_runs])[0],
                    "hot_p99_ms": summary([r["p99_ms"] for r in hot_runs])[0],
                    "hot_rps": summary([r["rps"] for r in hot_runs])[0],
                    "hit_ratio": hits / (hits + misses) if hits + misses else float("nan"),
                    "invalidations": delta.get("freshet_cache_invalidations_total", 0),
                    "bypasses": delta.get("freshet_cache_bypasses_total", 0),
                    "checked": churn.checked,
                    "stale_reads": churn.stale,
                    "replaced_served": churn.replaced_served,
                    "max_lag_ms": churn.max_lag_ms,
                }
            finally:
                _stop(proc)
    return results


async def _ingest_runs(url: str, args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(9)
    now = time.time_ns() // 1_000_000

    def events(n: int, t0: int) -> list[dict[str, Any]]:
        return [
            {"card_id": f"card_{rng.randrange(50_000)}", "amount": 12.5, "merchant": "m_1",
             "ts": t0 + i}
            for i in range(n)
        ]  # fmt: skip

    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        warm = await client.post(
            "/v1/ingest/card_txn", json={"events": events(1, now - 1_000), "wait_ms": 60_000}
        )
        if warm.json().get("served") is not True:
            raise RuntimeError(f"the flow did not serve a first event: {warm.text}")
        # Throughput: batches of 500, four clients, no wait.
        sent = [0]
        deadline = time.perf_counter() + args.seconds

        async def pump() -> None:
            while time.perf_counter() < deadline:
                r = await client.post(
                    "/v1/ingest/card_txn", json={"events": events(500, now + sent[0])}
                )
                if r.status_code != 202:
                    raise RuntimeError(r.text)
                sent[0] += 500

        started = time.perf_counter()
        await asyncio.gather(*(pump() for _ in range(4)))
        throughput = sent[0] / (time.perf_counter() - started)
        # Read-after-write at 1,000 events/s: 10 events every 10 ms, each batch waited for.
        latencies: list[float] = []
        not_served = [0]
        t0 = now + 10_000_000

        async def one(k: int) -> None:
            began = time.perf_counter()
            r = await client.post(
                "/v1/ingest/card_txn", json={"events": events(10, t0 + k * 10), "wait_ms": 5_000}
            )
            if r.status_code != 200:
                not_served[0] += 1
            latencies.append((time.perf_counter() - began) * 1000)

        tasks = []
        begin = time.perf_counter()
        for k in range(int(args.seconds * 100)):
            delay = begin + k * 0.01 - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(k)))
        await asyncio.gather(*tasks)
    latencies.sort()
    return {
        "events_per_s": throughput,
        "raw_p50_ms": percentile(latencies, 50),
        "raw_p99_ms": percentile(latencies, 99),
        "raw_batches": len(latencies),
        "raw_not_served": not_served[0],
    }


def bench_ingest(args: argparse.Namespace) -> dict[str, Any]:
    bootstrap = os.environ.get("FRESHET_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    topic = f"bench-ingest-{uuid.uuid4().hex[:8]}"
    kafka_clients.ensure_topics({"bootstrap.servers": bootstrap}, {topic: 3, f"{topic}-dlq": 1})
    admin = kafka_clients.admin({"bootstrap.servers": bootstrap})
    workdir = Path(tempfile.mkdtemp(prefix="freshet-bench-ingest-"))
    try:
        with private_redis() as (port, _client):
            redis_url = f"redis://127.0.0.1:{port}/0"
            # The demo view, reading the bench's topic (FRESHET_VIEWS): the endpoint produces
            # to it and the flow consumes it.
            views = workdir / "bench_views.py"
            views.write_text(
                "import dataclasses\nfrom freshet.dsl.views import CARD_TXN\n"
                f"VIEWS = [dataclasses.replace(CARD_TXN, source=dataclasses.replace("
                f"CARD_TXN.source, topic={topic!r}))]\n"
            )
            env = {
                "FRESHET_KAFKA_BOOTSTRAP": bootstrap,
                "FRESHET_REDIS_URL": redis_url,
                "FRESHET_OFFLINE_DIR": str(workdir / "offline"),
                "FRESHET_VIEWS": str(views),
            }
            log = open(workdir / "flow.log", "wb")  # noqa: SIM115
            flow = subprocess.Popen(
                [str(FRESHET), "run", "card_txn", "--dead-letter-topic", f"{topic}-dlq",
                 "--metrics-port", "0"],
                env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
            # The endpoint produces to the view's topic: point the view at the bench topic.
            server, url = _serve(env)
            try:
                return asyncio.run(_ingest_runs(url, args))
            finally:
                _stop(server)
                _stop(flow)
                log.close()
    finally:
        admin.delete_topics([topic, f"{topic}-dlq"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--zipf-s", type=float, default=1.0)
    parser.add_argument("--writes-per-s", type=float, default=200.0)
    parser.add_argument("--skip-ingest", action="store_true")
    args = parser.parse_args()
    print(f"# {quiet_machine_note()}")
    cache = bench_cache(args)
    off, on = cache["off"], cache["on"]
    print(f"raw Redis MGET 1 key, c={CLIENTS}: {cache['raw_redis_rps']:,.0f} commands/s")
    for mode in ("off", "on"):
        r = cache[mode]
        print(
            f"cache {mode:3}: zipf c={CLIENTS} {r['rps']:,.0f} lookups/s (runs {r['rps_runs']}) "
            f"p50 {r['p50_ms']:.3f} ms p99 {r['p99_ms']:.3f} ms | hot-1000 {r['hot_rps']:,.0f}/s "
            f"p50 {r['hot_p50_ms']:.3f} ms p99 {r['hot_p99_ms']:.3f} ms | hit ratio "
            f"{r['hit_ratio']:.3f} invalidations {r['invalidations']:.0f} bypasses "
            f"{r['bypasses']:.0f} | checked "
            f"{r['checked']} stale {r['stale_reads']} (served-after-replace "
            f"{r['replaced_served']}, max lag {r['max_lag_ms']:.1f} ms)"
        )
    ratio = on["rps"] / off["rps"]
    print(
        f"cached/uncached {ratio:.2f}x (target >= 1.5x); cached/raw Redis "
        f"{on['rps'] / cache['raw_redis_rps']:.2f}; uncached/raw Redis "
        f"{off['rps'] / cache['raw_redis_rps']:.2f}; hits p99 {on['hot_p99_ms']:.3f} ms "
        f"(target <= 1 ms); stale reads {on['stale_reads']} (target 0)"
    )
    if not args.skip_ingest:
        ingest = bench_ingest(args)
        print(
            f"ingest: {ingest['events_per_s']:,.0f} events/s (batches of 500, 4 clients); "
            f"read-after-write at 1,000 events/s: p50 {ingest['raw_p50_ms']:.1f} ms, p99 "
            f"{ingest['raw_p99_ms']:.1f} ms over {ingest['raw_batches']} batches of 10 "
            f"({ingest['raw_not_served']} not served within 5 s)"
        )


if __name__ == "__main__":
    main()
