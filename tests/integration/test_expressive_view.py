"""The definition of the issue "Feature definitions that real models need", as written, on the
real Kafka and Redis: computed columns, filters, a composite key and the new aggregations.

A views module and its schema are saved in a directory outside the repository, found through
``FRESHET_VIEWS`` as a user's would be. Events (JSON, keyed by card, merchants with ``|`` and
``%`` in them to exercise the key encoding) go to a fresh topic; ``freshet run --stop-at-end``
turns them into rows. Every value is checked against a brute force of DESIGN.md's window
semantics written here from the spec: every row of the offline log, the endpoint (one path
segment per key field, and batches of key objects in request order), ``freshet historical`` (one
column per key field) and a ``freshet backfill`` of a middle range, which must reproduce the
live rows exactly.
"""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from confluent_kafka import Producer
from pipeline_harness import wait_until
from redis_servers import free_port

VIEW = "card_merchant"
_FRESHET = [sys.executable, "-c", "import sys; from freshet.cli import main; sys.exit(main())"]

SCHEMA = {
    "type": "record",
    "name": "Purchase",
    "fields": [
        {"name": "card_id", "type": "string"},
        {"name": "merchant", "type": "string"},
        {"name": "amount", "type": "double"},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    ],
}

# The issue's definition, word for word (the topic is replaced by the test's own).
VIEWS_MODULE = """
from freshet import Aggregation as A, Entity, Feature, FeatureView, Source

FeatureView(
    name="card_merchant", version=1,
    entity=Entity("card_merchant", key=("card_id", "merchant")),
    source=Source(topic="purchases", encoding="json", schema="purchase.avsc", event_time_field="ts"),
    columns={"big": "amount >= 100.0", "cents": "round(amount * 100)"},
    features=(
        Feature("big_count_1h", A.COUNT, window="1h", where="big"),
        Feature("small_cents_5m", A.SUM, "cents", window="5m", where="not big"),
        Feature("amount_std_1h", A.STDDEV, "amount", window="1h"),
        Feature("amount_first_1h", A.FIRST, "amount", window="1h"),
        Feature("amount_last3_1h", A.LAST_K, "amount", window="1h", k=3),
        Feature("amount_top2_1h", A.TOP_K, "amount", window="1h", k=2),
    ),
)
"""

FEATURES = (
    "big_count_1h",
    "small_cents_5m",
    "amount_std_1h",
    "amount_first_1h",
    "amount_last3_1h",
    "amount_top2_1h",
)
CARDS = ("c1", "c2", "c3")
MERCHANTS = ("m1", "m|2", "m%3")
AMOUNTS = (5.0, 99.99, 100.0, 250.5, 0.015, 12.345, 1000.0, 33.3, 12.345)
MINUTE = 60_000

Event = dict[str, Any]


# --- the brute force, from DESIGN.md "Window semantics" ---------------------------------------


def in_window(events: list[Event], as_of: int, window_ms: int, hop_ms: int) -> list[Event]:
    """The events with ``floor_h(as_of - W) <= t <= as_of``, oldest first."""
    start = (as_of - window_ms) // hop_ms * hop_ms
    return sorted((e for e in events if start <= e["ts"] <= as_of), key=lambda e: e["ts"])


def expected(events: list[Event], as_of: int) -> dict[str, Any]:
    """The view's features as of ``as_of`` over one entity's events (distinct times)."""
    hour = in_window(events, as_of, 60 * MINUTE, MINUTE)  # default hop of 1h: 1 min
    five = in_window(events, as_of, 5 * MINUTE, 10_000)  # default hop of 5m: 10 s
    amounts = [e["amount"] for e in hour]
    std = None
    if amounts:
        exact = [Fraction(a) for a in amounts]
        mean = sum(exact) / len(exact)
        std = math.sqrt(float(sum((x - mean) ** 2 for x in exact) / len(exact)))
    counts = sorted(Counter(amounts).items(), key=lambda vc: (-vc[1], vc[0]))
    return {
        "big_count_1h": sum(1 for a in amounts if a >= 100.0),
        "small_cents_5m": sum(round(e["amount"] * 100) for e in five if not e["amount"] >= 100.0),
        "amount_std_1h": std,
        "amount_first_1h": amounts[0] if amounts else None,
        "amount_last3_1h": amounts[::-1][:3],
        "amount_top2_1h": [[v, c] for v, c in counts[:2]],
    }


def normalized(values: dict[str, Any]) -> dict[str, Any]:
    """Top-k pairs as ``[value, count]`` lists, whether from JSON or Parquet structs."""
    out = dict(values)
    top = out["amount_top2_1h"]
    out["amount_top2_1h"] = [
        [p["value"], p["count"]] if isinstance(p, dict) else list(p) for p in top or []
    ]
    out["amount_last3_1h"] = list(out["amount_last3_1h"] or [])
    return out


# --- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    path = tmp_path / "shop"
    path.mkdir()
    (path / "purchase.avsc").write_text(json.dumps(SCHEMA), encoding="utf-8")
    return path


def produce(bootstrap: str, topic: str, *, seed: int) -> dict[tuple[str, str], list[Event]]:
    """180 events, one every ~1.3 s over the last 4 minutes, at distinct times, in time order;
    keyed by card (so each entity keeps its order), each record stamped with its event time
    (as a producer sending events as they happen would: the backfill finds ranges by it)."""
    rnd = random.Random(seed)
    now = time.time_ns() // 1_000_000
    t = now - 4 * MINUTE
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    by_entity: dict[tuple[str, str], list[Event]] = {}
    for _ in range(180):
        t += rnd.randint(200, 2400)
        event = {
            "card_id": rnd.choice(CARDS),
            "merchant": rnd.choice(MERCHANTS),
            "amount": rnd.choice(AMOUNTS),
            "ts": t,
        }
        by_entity.setdefault((event["card_id"], event["merchant"]), []).append(event)
        producer.produce(topic, orjson.dumps(event), event["card_id"].encode(), timestamp=t)
    assert producer.flush(30) == 0
    return by_entity


def freshet(args: list[str], env: dict[str, str], cwd: Path, *, timeout: float = 180) -> str:
    proc = subprocess.run(
        [*_FRESHET, *args], env=env, cwd=cwd, capture_output=True, text=True,
        timeout=timeout, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, f"freshet {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def encoded(card: str, merchant: str) -> str:
    """The documented key encoding (README, "Composite keys"), written out here."""
    escape = lambda s: s.replace("%", "%25").replace("|", "%7C")  # noqa: E731
    return f"{escape(card)}|{escape(merchant)}"


def log_rows(offline: Path, *, writer: Callable[[str], bool] = lambda name: True) -> pa.Table:
    paths = sorted((offline / VIEW).rglob("*.parquet"))
    tables = [pq.read_table(p) for p in paths if writer(p.name)]
    assert tables, f"no log segments under {offline / VIEW}"
    return pa.concat_tables(tables)


@pytest.fixture
def serve(workdir: Path) -> Iterator[Callable[[dict[str, str]], int]]:
    procs: list[subprocess.Popen[bytes]] = []
    logs = []

    def start(env: dict[str, str]) -> int:
        port = free_port()
        log = open(workdir / "serve.log", "wb")  # noqa: SIM115 - closed after the process
        logs.append(log)
        procs.append(
            subprocess.Popen(
                [*_FRESHET, "serve", "--port", str(port)], env=env, cwd=workdir,
                stdout=log, stderr=subprocess.STDOUT,
            )
        )  # fmt: skip
        wait_until(lambda: _ready(port), timeout=30, what="freshet serve")
        return port

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=30)
    for log in logs:
        log.close()


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


# --- the test ----------------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_the_issues_view_serves_logs_joins_and_replays_the_brute_force_values(
    kafka_bootstrap: str,
    redis_url: str,
    topic_factory: Callable[..., str],
    workdir: Path,
    serve: Callable[[dict[str, str]], int],
) -> None:
    topic = topic_factory(2)
    (workdir / "shop_views.py").write_text(
        VIEWS_MODULE.replace('topic="purchases"', f'topic="{topic}"'), encoding="utf-8"
    )
    offline = workdir / "offline"
    env = {
        **{k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        "FRESHET_VIEWS": "shop_views",
        "FRESHET_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "FRESHET_REDIS_URL": redis_url,
        "FRESHET_OFFLINE_DIR": str(offline),
    }
    views = orjson.loads(freshet(["views", "--json"], env, workdir))
    mine = next(v for v in views if v["name"] == VIEW)
    assert mine["key"] == ["card_id", "merchant"]
    assert mine["columns"] == {"big": "amount >= 100.0", "cents": "round(amount * 100)"}
    assert [f["where"] for f in mine["features"][:2]] == ["big", "not big"]

    by_entity = produce(kafka_bootstrap, topic, seed=11)
    assert len(by_entity) >= 8
    freshet([
        "run", VIEW, "--stop-at-end", "--metrics-port", "0",
        "--dead-letter-topic", f"{topic}.dlq", "--snapshot-interval", "1",
    ], env, workdir)  # fmt: skip

    # Every row of the offline log equals the brute force as of its as_of.
    log = log_rows(offline).to_pylist()
    entity_of = {encoded(c, m): (c, m) for c, m in by_entity}
    assert {r["entity"] for r in log} == set(entity_of)
    for row in log:
        card, merchant = entity_of[row["entity"]]
        assert (row["card_id"], row["merchant"]) == (card, merchant)
        as_of = int(row["as_of"].timestamp() * 1000)
        got = normalized({f: row[f] for f in FEATURES})
        assert got == expected(by_entity[card, merchant], as_of), row
    newest = {}
    for row in log:
        as_of = int(row["as_of"].timestamp() * 1000)
        newest[row["entity"]] = max(newest.get(row["entity"], as_of), as_of)

    # The endpoint: one path segment per key field, and batches of key objects.
    port = serve(env)
    base = f"http://127.0.0.1:{port}/v1/features/{VIEW}"
    for (card, merchant), events in by_entity.items():
        got = httpx.get(f"{base}/{quote(card, safe='')}/{quote(merchant, safe='')}").json()
        assert got["found"], got
        assert got["entity"] == encoded(card, merchant)
        assert got["key"] == {"card_id": card, "merchant": merchant}
        assert got["as_of"] == newest[got["entity"]]
        assert normalized(got["features"]) == expected(events, got["as_of"])
    order = sorted(by_entity, reverse=True)
    batch = httpx.post(
        base, json={"entities": [{"card_id": c, "merchant": m} for c, m in order]}
    ).json()
    results = batch["results"] if isinstance(batch, dict) else batch
    assert [r["key"] for r in results] == [{"card_id": c, "merchant": m} for c, m in order]
    for r, key in zip(results, order, strict=True):
        assert normalized(r["features"]) == expected(by_entity[key], r["as_of"])

    # freshet historical: one column per key field, as of event times of every entity.
    rnd = random.Random(3)
    asks = []
    for (card, merchant), events in by_entity.items():
        for e in rnd.sample(events, min(4, len(events))):
            asks.append({"card_id": card, "merchant": merchant, "timestamp": e["ts"] + 1})
    pq.write_table(pa.Table.from_pylist(asks), workdir / "asks.parquet")
    freshet([
        "historical", "--entities", "asks.parquet", "--features", f"{VIEW}:*",
        "--out", "train.parquet",
    ], env, workdir)  # fmt: skip
    train = pq.read_table(workdir / "train.parquet").to_pylist()
    assert len(train) == len(asks)
    for ask, row in zip(asks, train, strict=True):
        assert (row["card_id"], row["merchant"]) == (ask["card_id"], ask["merchant"])
        want = expected(by_entity[ask["card_id"], ask["merchant"]], ask["timestamp"])
        assert normalized({f: row[f] for f in FEATURES}) == want, ask

    # A replay of a middle range reproduces the live rows of that range exactly.
    times = sorted(e["ts"] for events in by_entity.values() for e in events)
    lo, hi = times[len(times) // 3], times[2 * len(times) // 3]
    out = freshet(["backfill", VIEW, "--from", str(lo), "--to", str(hi), "--json"], env, workdir)
    assert orjson.loads(out)["rows_offline"] > 0

    def key(r: dict[str, Any]) -> tuple[Any, ...]:
        values = normalized({f: r[f] for f in FEATURES})
        return (
            r["entity"],
            r["as_of"],
            r["offset"],
            orjson.dumps(values, option=orjson.OPT_SORT_KEYS),
        )

    live = {key(r) for r in log if lo <= int(r["as_of"].timestamp() * 1000) <= hi}
    replayed = {key(r) for r in log_rows(offline, writer=lambda n: n.startswith("bf")).to_pylist()}
    assert len(live) > 20
    assert replayed == live
