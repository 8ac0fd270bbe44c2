"""A feature service's lookup (3 views x 1 row, one ``MGET``) next to a single-view lookup,
measured in the same run on the same server, and the same for batches of 100 rows.

Loopback, a private redis-server holding 100,000 entities in each of ``card_txn``,
``card_txn_json`` and ``card_merchant`` (written with the sink's writer), one ``freshet serve``
worker (uvicorn, uvloop) loading ``bench_views.py``. wrk at c = 1 and 8, one thread; the
single-view and service runs alternate, ``--repeat`` times each, and the median is reported.
Target (issue #17): the service lookup's p50 and p99 at most 1.3x the single-view lookup's.

    .venv/bin/python tests/bench/serving/bench_services.py [--seconds 5] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
from _support import CARD_TXN, demo_rows, free_port, private_redis, quiet_machine_note, summary
from bench_serving import _wrk

from freshet.dsl.registry import Registry
from freshet.sinks.layout import encode_entity
from freshet.sinks.redis_store import RedisFeatureWriter
from freshet.sinks.rows import Row

HERE = Path(__file__).resolve().parent
VIEWS_FILE = HERE / "bench_views.py"
ENTITIES = 100_000
CONCURRENCY = (1, 8)


def _write(client: object) -> None:
    registry = Registry()
    registry.load({"FRESHET_VIEWS": str(VIEWS_FILE)})
    layouts = {name: registry.get(name).layout() for name in ("card_txn_json", "card_merchant")}
    writer = RedisFeatureWriter(client, {"card_txn": CARD_TXN, **layouts})
    now = time.time_ns() // 1_000_000
    for start in range(0, ENTITIES, 1_000):
        rows = demo_rows(1_000, now, start=start)
        writer.write(rows)
        writer.write([r._replace(view="card_txn_json") for r in rows])
        writer.write(
            [
                Row("card_merchant", encode_entity((r.entity, f"m_{i % 2000:05d}")), r.as_of,
                    (r.values[0], r.values[1]), r.partition, r.offset)
                for i, r in enumerate(rows, start)
            ]
        )  # fmt: skip


def _start_server(redis_port: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "FRESHET_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "FRESHET_VIEWS": str(VIEWS_FILE),
    }
    env.pop("FRESHET_API_KEYS", None)
    freshet = Path(sys.executable).with_name("freshet")
    command = [str(freshet), "serve", "--port", str(port), "-w", "1", "--log-level", "warning"]
    proc = subprocess.Popen(command, env=env)
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk)")
    shapes = {
        "single view, 1 entity": ("single.lua", {}),
        "service 3 views, 1 row": ("service.lua", {"ROWS": "1"}),
        "single view, batch 100": ("batch.lua", {"BATCH": "100"}),
        "service 3 views, 100 rows": ("service.lua", {"ROWS": "100"}),
    }
    results: dict[tuple[str, int], dict[str, float]] = {}
    with private_redis() as (redis_port, client):
        _write(client)
        proc, url = _start_server(redis_port)
        try:
            check = httpx.post(
                f"{url}/v1/services/bench3",
                json={"rows": [{"card_id": "card_000000000007", "merchant": "m_00007",
                                "amount": 1.5}]},
            ).json()["results"][0]  # fmt: skip
            assert set(check["status"].values()) == {"present"}, check
            _wrk(url, "single.lua", 8, 1.0)  # warm-up
            for c in CONCURRENCY:
                runs: dict[str, list[dict[str, float]]] = {name: [] for name in shapes}
                for _ in range(args.repeat):
                    for name, (script, extra) in shapes.items():
                        os.environ.update({"ENTITIES": str(ENTITIES), **extra})
                        runs[name].append(_wrk(url, script, c, args.seconds, proc.pid))
                for name, measured in runs.items():
                    results[name, c] = {
                        key: summary([m[key] for m in measured])[0] for key in measured[0]
                    }
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(
        f"service bench: {ENTITIES:,} entities per view, 1 uvicorn worker, wrk -t1, "
        f"{args.repeat} x {args.seconds:g}s per point (median); {quiet_machine_note()}"
    )
    print(f"{'what':28} {'c':>3} {'req/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'CPU us/req':>10}")
    for c in CONCURRENCY:
        for name in shapes:
            r = results[name, c]
            print(
                f"{name:28} {c:3d} {r['rps']:9,.0f} {r['p50_ms']:7.3f} {r['p99_ms']:7.3f} "
                f"{r['cpu_us']:10.0f}"
            )
    for c in CONCURRENCY:
        one, svc = results["single view, 1 entity", c], results["service 3 views, 1 row", c]
        for key in ("p50_ms", "p99_ms"):
            ratio = svc[key] / one[key]
            verdict = "met" if ratio <= 1.3 else "MISSED"
            print(f"target c={c} service/single {key[:3]} <= 1.3x: {verdict} ({ratio:.2f}x)")


if __name__ == "__main__":
    main()
