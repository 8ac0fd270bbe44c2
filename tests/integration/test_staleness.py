"""Honest freshness at the edge, on the real Kafka, Redis and endpoint: a windowed value the flow
should have replaced by now is served ``stale``, not ``present``.

A views module outside the repository defines a view with a 10-second window (hop 1 s, lateness
1 s) beside a lifetime count. Events for one card go to a fresh topic; ``freshet run`` (with a
recovery dir, as in production) and ``freshet serve`` (grace 3 s) run as subprocesses. The test
checks, against the window semantics written out here (a tile ``[k*h, (k+1)*h)`` leaves the
window at ``(k+1)*h + W``):

* while the flow runs, every lookup is ``present`` and ``valid_until`` is the first boundary
  after ``as_of`` of the events held, also after the first boundaries passed (no false stale);
* the flow stopped, once ``now`` passes ``valid_until`` + lateness + grace, the windowed value is
  ``stale`` (the lifetime one stays ``present``), ``max_staleness_ms`` nulls it, and the stale
  serves are counted in ``freshet_lookups_total{result="stale"}``;
* the flow restarted, it catches up: ``present`` again, the window empty (count 0, the true
  value by then) and no ``valid_until``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from confluent_kafka import Producer
from pipeline_harness import wait_until

from freshet.ops.processes import free_port

VIEW = "taps"
CARD = "card_7"
# The grace covers the flow's lag behind event time on a busy test machine (the flow writes a
# boundary's row when its clock passes it by the lateness plus that lag).
WINDOW_MS, HOP_MS, LATENESS_MS, GRACE_MS = 10_000, 1_000, 1_000, 3_000
_FRESHET = [sys.executable, "-c", "import sys; from freshet.cli import main; sys.exit(main())"]

SCHEMA = {
    "type": "record",
    "name": "Tap",
    "fields": [
        {"name": "card_id", "type": "string"},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    ],
}

VIEWS_MODULE = """
from freshet import Aggregation as A, Entity, Feature, FeatureView, Source

FeatureView(
    name="taps", version=1,
    entity=Entity("card", key="card_id"),
    source=Source(topic="TOPIC", encoding="json", schema="tap.avsc", event_time_field="ts"),
    allowed_lateness_seconds=1,
    features=(
        Feature("taps_10s", A.COUNT, window="10s", hop="1s"),
        Feature("taps_total", A.COUNT),
    ),
)
"""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def valid_until(times: list[int], as_of: int) -> int | None:
    """The first expiry boundary after ``as_of`` of the events up to it (None: none)."""
    later = [(t // HOP_MS + 1) * HOP_MS + WINDOW_MS for t in times if t <= as_of]
    later = [b for b in later if b > as_of]
    return min(later, default=None)


def in_window(times: list[int], as_of: int) -> int:
    start = (as_of - WINDOW_MS) // HOP_MS * HOP_MS
    return sum(1 for t in times if start <= t <= as_of)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    path = tmp_path / "taps"
    path.mkdir()
    (path / "tap.avsc").write_text(json.dumps(SCHEMA), encoding="utf-8")
    return path


@pytest.fixture
def processes(workdir: Path) -> Iterator[Callable[[list[str], dict[str, str], str], Any]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(args: list[str], env: dict[str, str], name: str) -> subprocess.Popen[bytes]:
        log = open(workdir / f"{name}.log", "ab")  # noqa: SIM115 - the child holds it
        proc = subprocess.Popen(
            [*_FRESHET, *args], env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)


def produce(bootstrap: str, topic: str, times: list[int], card: str = CARD) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for t in times:
        event = {"card_id": card, "ts": t}
        producer.produce(topic, orjson.dumps(event), card.encode(), timestamp=t)
    assert producer.flush(30) == 0


def stale_serves(port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    match = re.search(
        r'^freshet_lookups_total\{result="stale",view="taps"\} (\S+)$', text, re.MULTILINE
    ) or re.search(
        r'^freshet_lookups_total\{view="taps",result="stale"\} (\S+)$', text, re.MULTILINE
    )
    return float(match.group(1)) if match else 0.0


@pytest.mark.timeout(240)
def test_a_stopped_flows_windowed_values_are_served_stale_then_present_once_it_catches_up(
    kafka_bootstrap: str,
    redis_url: str,
    topic_factory: Callable[..., str],
    workdir: Path,
    processes: Callable[[list[str], dict[str, str], str], subprocess.Popen[bytes]],
) -> None:
    topic = topic_factory(1)
    (workdir / "tap_views.py").write_text(VIEWS_MODULE.replace("TOPIC", topic), encoding="utf-8")
    env = {
        **{k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        "FRESHET_VIEWS": "tap_views",
        "FRESHET_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "FRESHET_REDIS_URL": redis_url,
        "FRESHET_OFFLINE_DIR": str(workdir / "offline"),
        "FRESHET_STALE_GRACE_MS": str(GRACE_MS),
    }
    port = free_port()
    processes(["serve", "--port", str(port)], env, "serve")
    base = f"http://127.0.0.1:{port}/v1/features/{VIEW}/{CARD}"

    def lookup(**params: Any) -> dict[str, Any]:
        response = httpx.get(base, params=params, timeout=5)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    wait_until(lambda: _ready(port), timeout=30, what="freshet serve")
    run = ["run", VIEW, "--from", "earliest", "--metrics-port", "0",
           "--recovery-dir", str(workdir / "recovery"), "--snapshot-interval", "1"]  # fmt: skip
    flow = processes(run, env, "flow")
    # A first event of another card, so the flow is reading when the measured events come.
    produce(kafka_bootstrap, topic, [now_ms()], card="warm_up")
    warm = f"http://127.0.0.1:{port}/v1/features/{VIEW}/warm_up"
    wait_until(lambda: httpx.get(warm, timeout=5).json()["found"], timeout=60, what="the flow")

    # Three events spread over ~2.5 s, stamped now: the view's first boundary is ~10 s away.
    start = now_ms()
    times = [start - 2_500, start - 1_200, start]
    produce(kafka_bootstrap, topic, times)
    wait_until(lambda: lookup()["features"]["taps_total"] == 3, timeout=60, what="the 3 events")
    body = lookup()
    assert body["as_of"] == times[-1]
    assert body["features"]["taps_10s"] == in_window(times, times[-1]) == 3
    assert body["valid_until"] == valid_until(times, times[-1])
    assert body["status"] == {"taps_10s": "present", "taps_total": "present"}

    # While the flow runs, it replaces each value by its boundary: never stale, even well past
    # the first valid_until.
    first_boundary = body["valid_until"]
    past = first_boundary + LATENESS_MS + GRACE_MS + 1_500
    while now_ms() < past:
        seen = lookup()
        assert seen["status"]["taps_10s"] == "present", seen
        time.sleep(0.2)
    seen = lookup()
    assert seen["as_of"] >= first_boundary  # the flow wrote the boundary's row
    assert seen["features"]["taps_10s"] == in_window(times, seen["as_of"]) < 3
    assert seen["valid_until"] == valid_until(times, seen["as_of"])

    # A second burst, then the flow stops (SIGTERM: a graceful stop).
    more = [now_ms() - 300, now_ms()]
    produce(kafka_bootstrap, topic, more)
    wait_until(lambda: lookup()["features"]["taps_total"] == 5, timeout=60, what="the burst")
    flow.send_signal(signal.SIGTERM)
    assert flow.wait(timeout=60) == 0
    held = lookup()
    all_times = times + more
    assert held["valid_until"] == valid_until(all_times, held["as_of"])
    stale_at = held["valid_until"] + LATENESS_MS + GRACE_MS

    # Past valid_until + lateness + grace with nothing replacing it: stale, value kept; the
    # lifetime count stays present; max_staleness_ms nulls the stale value.
    before = stale_serves(port)
    wait_until(lambda: now_ms() > stale_at + 50, timeout=30, what="the stale moment")
    stale = lookup()
    assert stale["status"] == {"taps_10s": "stale", "taps_total": "present"}
    assert stale["features"] == held["features"]
    assert stale["as_of"] == held["as_of"]
    assert stale["valid_until"] == held["valid_until"]
    nulled = lookup(max_staleness_ms=0)
    assert nulled["features"] == {"taps_10s": None, "taps_total": 5}
    assert nulled["status"] == stale["status"]
    generous = lookup(max_staleness_ms=3_600_000)
    assert generous["features"] == held["features"]
    assert generous["status"]["taps_10s"] == "stale"  # past the default bound all the same
    batch = httpx.post(
        base.rsplit("/", 1)[0], json={"entities": [CARD], "max_staleness_ms": 0}, timeout=5
    ).json()["results"][0]
    assert batch["features"]["taps_10s"] is None
    assert batch["status"]["taps_10s"] == "stale"
    bad = httpx.get(base, params={"max_staleness_ms": "-5"}, timeout=5)
    assert bad.status_code == 422
    assert "max_staleness_ms" in bad.json()["message"]
    wait_until(lambda: stale_serves(port) >= before + 4, timeout=10, what="stale serves counted")

    # The flow back, from its recovery dir: it passes the boundaries it missed and the value is
    # present again, and true: the window is empty by now.
    processes(run, env, "flow")
    wait_until(
        lambda: lookup()["status"]["taps_10s"] == "present", timeout=90, what="present again"
    )
    last = max(all_times)
    wait_until(lambda: now_ms() > (last // HOP_MS + 1) * HOP_MS + WINDOW_MS, timeout=30,
               what="the window to empty")  # fmt: skip
    wait_until(lambda: lookup()["valid_until"] is None, timeout=30, what="the last boundary")
    final = lookup()
    assert final["features"] == {"taps_10s": 0, "taps_total": 5}
    assert final["status"] == {"taps_10s": "present", "taps_total": "present"}


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
