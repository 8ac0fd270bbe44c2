"""Soak: the flow and the endpoint under a steady load for 10 minutes (``make soak``; marked
slow, so not part of ``make test``). ``FRESHET_SOAK_SECONDS`` / ``FRESHET_SOAK_RATE`` change the
duration (default 600 s) and the event rate (default 500 events/s).

Load: live card transactions at a steady rate, 20 % from 500 hot cards and the rest from a new
cohort of cards every minute (so the number of cards ever seen keeps growing), and ~100
lookups/s against ``freshet serve``. The soak view (``soak_views.py``) has 1-minute windows and
a 60 s TTL. Every 10 s it samples the RSS of the flow and of the endpoint, Redis memory and
keys (a private ``redis-server``) and the consumer lag. After a warm-up (3 minutes):

* RSS of the flow and of the endpoint flat: the last samples within 25 % (and 60 MiB) of the
  first ones;
* Redis bounded by the TTL: keys never above the cards of the last two minutes, memory flat;
* lag bounded: never more than 10 s of events behind;
* the endpoint answered every lookup, none with a 5xx.
"""

from __future__ import annotations

import io
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
from confluent_kafka import Producer
from fastavro import parse_schema, schemaless_writer
from pipeline_harness import FlowProcess, scrape, wait_until
from redis_servers import RedisProcess, free_port

from freshet.decode.decoder import load_schema, strip_time_logical_types

HERE = Path(__file__).resolve().parent
VIEWS_FILE = HERE / "soak_views.py"
DURATION_S = float(os.environ.get("FRESHET_SOAK_SECONDS", "600"))
RATE = float(os.environ.get("FRESHET_SOAK_RATE", "500"))
LOOKUP_RATE = 100.0
HOT_CARDS = 500
SAMPLE_EVERY_S = 10.0
# Long enough for the first keys to expire (TTL 60 s after a cohort's minute) and the first
# drained entity states to be dropped.
WARM_UP_S = max(DURATION_S / 5, 180.0)


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


class Stream:
    """Paced live transactions in a thread: hot cards plus a new cohort every minute."""

    def __init__(self, bootstrap: str, topic: str, stop: threading.Event) -> None:
        self.cohort_size = int(RATE * 60 * 0.8)  # ~one event per cohort card
        self.sent = 0
        self.cohort = 0
        self._schema = parse_schema(
            strip_time_logical_types(load_schema(HERE.parents[1] / "schemas/transaction.avsc"))
        )
        self._producer = Producer(
            {"bootstrap.servers": bootstrap, "linger.ms": "20", "enable.idempotence": True}
        )
        self._topic = topic
        self._stop = stop
        self._thread = threading.Thread(target=self._run, name="soak-producer", daemon=True)
        self._thread.start()

    def card(self, rng: random.Random, now_s: float, started: float) -> str:
        if rng.random() < 0.2:
            return f"hot_{rng.randrange(HOT_CARDS):04d}"
        self.cohort = int((now_s - started) // 60)
        return f"c{self.cohort:03d}_{rng.randrange(self.cohort_size):06d}"

    def _run(self) -> None:
        rng = random.Random(7)
        started = time.monotonic()
        deadline = started + DURATION_S
        while not self._stop.is_set() and time.monotonic() < deadline:
            due = int((time.monotonic() - started) * RATE)
            for _ in range(due - self.sent):
                now_ms = time.time_ns() // 1_000_000
                card = self.card(rng, time.monotonic(), started)
                buf = io.BytesIO()
                record = {
                    "card_id": card,
                    "amount": round(rng.lognormvariate(3.4, 1.0), 2),
                    "merchant": f"m_{rng.randrange(200):03d}",
                    "ts": now_ms - rng.randrange(500),
                }
                schemaless_writer(buf, self._schema, record)
                self._producer.produce(self._topic, buf.getvalue(), card.encode())
                self.sent += 1
            self._producer.poll(0)
            time.sleep(0.01)
        self._producer.flush(30)

    def join(self) -> None:
        self._thread.join(timeout=60)


class Lookups:
    """~LOOKUP_RATE lookups/s of hot and current-cohort cards; statuses and latencies."""

    def __init__(self, url: str, stream: Stream, stop: threading.Event) -> None:
        self.statuses: Counter[int] = Counter()
        self.latencies_ms: list[float] = []
        self.found = 0
        self._url, self._stream, self._stop = url, stream, stop
        self._thread = threading.Thread(target=self._run, name="soak-lookups", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        rng = random.Random(8)
        with httpx.Client(base_url=self._url, timeout=5) as http:
            while not self._stop.is_set():
                if rng.random() < 0.5:
                    card = f"hot_{rng.randrange(HOT_CARDS):04d}"
                else:
                    size = self._stream.cohort_size
                    card = f"c{self._stream.cohort:03d}_{rng.randrange(size):06d}"
                started = time.perf_counter()
                try:
                    response = http.get(f"/v1/features/soak_txn/{card}")
                except httpx.TransportError:
                    self.statuses[0] += 1
                else:
                    self.statuses[response.status_code] += 1
                    self.found += response.status_code == 200 and response.json()["found"]
                self.latencies_ms.append((time.perf_counter() - started) * 1000)
                time.sleep(max(0.0, 1 / LOOKUP_RATE - (time.perf_counter() - started)))

    def join(self) -> None:
        self._thread.join(timeout=30)


@dataclass(frozen=True)
class Sample:
    t: float
    flow_rss: float
    serve_rss: float
    redis_mib: float
    redis_keys: int
    lag: float
    events_in: float


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _flat(samples: list[Sample], field: str) -> tuple[float, float]:
    """(first, last): medians of the first and last three samples after the warm-up."""
    values = [getattr(s, field) for s in samples]
    return statistics.median(values[:3]), statistics.median(values[-3:])


@pytest.mark.slow
@pytest.mark.timeout(DURATION_S + 300)
def test_ten_minutes_steady_load_keeps_memory_flat_redis_bounded_and_lag_small(
    kafka_bootstrap: str, topic_factory: Callable[..., str], offline_dir: Path, tmp_path: Path
) -> None:
    server = RedisProcess(free_port(), tmp_path / "redis")
    server.start()
    client = redis.Redis(port=server.port)
    topic, dlq = topic_factory(3), topic_factory(1)
    env = {
        "FRESHET_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "FRESHET_REDIS_URL": server.url,
        "FRESHET_OFFLINE_DIR": str(offline_dir),
        "FRESHET_VIEWS": str(VIEWS_FILE),
    }
    metrics_port, serve_port = free_port(), free_port()
    args = ["soak_txn", "--topic", topic, "--dead-letter-topic", dlq, "--metrics-port",
            str(metrics_port), "--recovery-dir", str(tmp_path / "recovery")]  # fmt: skip
    stop = threading.Event()
    samples: list[Sample] = []
    serve_log = open(tmp_path / "serve.log", "ab")  # noqa: SIM115 - closed below
    serve = subprocess.Popen(
        [sys.executable, "-c", "import sys; from freshet.cli import main; sys.exit(main())",
         "serve", "--port", str(serve_port)],
        env={**os.environ, **env}, stdout=serve_log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        with FlowProcess(args, env=env, log=tmp_path / "flow.log") as flow:
            url = f"http://127.0.0.1:{serve_port}"
            wait_until(lambda: _ready(url), timeout=30, what="freshet serve")
            stream = Stream(kafka_bootstrap, topic, stop)
            lookups = Lookups(url, stream, stop)
            started = time.monotonic()
            while time.monotonic() - started < DURATION_S:
                time.sleep(SAMPLE_EVERY_S)
                assert flow.proc.poll() is None, flow.output()
                assert serve.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
                metrics = scrape(metrics_port)
                info = client.info("memory")
                samples.append(
                    Sample(
                        t=time.monotonic() - started,
                        flow_rss=_rss_mib(flow.proc.pid),
                        serve_rss=_rss_mib(serve.pid),
                        redis_mib=info["used_memory"] / 2**20,
                        redis_keys=client.dbsize(),
                        lag=sum(
                            v for k, v in metrics.items() if k.startswith("freshet_consumer_lag")
                        ),
                        events_in=metrics.get('freshet_events_in_total{view="soak_txn"}', 0.0),
                    )
                )
                s = samples[-1]
                print(
                    f"t={s.t:5.0f}s flow {s.flow_rss:6.1f} MiB  serve {s.serve_rss:6.1f} MiB  "
                    f"redis {s.redis_mib:6.1f} MiB {s.redis_keys:6d} keys  lag {s.lag:6.0f}  "
                    f"events {s.events_in:8.0f}",
                    flush=True,
                )
            stop.set()
            stream.join()
            lookups.join()
    finally:
        stop.set()
        serve.terminate()
        serve.wait(timeout=20)
        serve_log.close()
        client.close()
        server.stop()

    warm = [s for s in samples if s.t >= WARM_UP_S]
    assert len(warm) >= 6, "too few samples after the warm-up"
    figures = {}
    for field, label in (("flow_rss", "flow RSS"), ("serve_rss", "endpoint RSS")):
        first, last = _flat(warm, field)
        figures[label] = f"{first:.1f} -> {last:.1f} MiB ({(last - first) / first:+.1%})"
        assert last <= first * 1.25, (label, first, last)
        assert last - first <= 60, (label, first, last)
    # Redis: at most the hot cards and the cohorts of the last two minutes hold keys.
    bound = HOT_CARDS + 2 * stream.cohort_size
    max_keys = max(s.redis_keys for s in warm)
    first_mem, last_mem = _flat(warm, "redis_mib")
    figures["Redis keys"] = f"max {max_keys} (bound {bound}), {stream.sent} events sent"
    figures["Redis memory"] = f"{first_mem:.1f} -> {last_mem:.1f} MiB"
    assert max_keys <= bound
    assert last_mem <= first_mem * 1.25
    lags = [s.lag for s in warm]
    figures["lag"] = f"median {statistics.median(lags):.0f}, max {max(lags):.0f} records"
    assert max(lags) <= RATE * 10
    served = sum(lookups.statuses.values())
    median_ms = statistics.median(lookups.latencies_ms)
    p99_ms = _p(lookups.latencies_ms, 0.99)
    figures["lookups"] = (
        f"{served} ({dict(lookups.statuses)}), {lookups.found} found, latency median "
        f"{median_ms:.2f} ms, p99 {p99_ms:.2f} ms"
    )
    assert set(lookups.statuses) == {200}
    print("\n".join(f"{k}: {v}" for k, v in figures.items()))


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
    except httpx.TransportError:
        time.sleep(0.1)
        return False
