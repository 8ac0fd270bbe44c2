"""Broker start-up time and memory of the local stack (prints figures; not a pass/fail test).

Cold = jars cached, storage new (format + first start); warm = restart on existing storage.
Runs a throw-away stack on free loopback ports in a temp dev dir sharing the jar cache, so the
running dev stack is left alone.  Run:  .venv/bin/python tests/bench/stack/bench_broker_start.py
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

from freshet.ops import devstack
from freshet.ops.processes import free_port

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))


def _timed_up(config: devstack.StackConfig) -> tuple[float, int]:
    started = time.monotonic()
    kafka, _ = devstack.up(config)
    elapsed = time.monotonic() - started
    assert kafka.state == "running", kafka
    time.sleep(2)  # let the broker settle before reading RSS
    return elapsed, devstack.rss_bytes(kafka.pid or 0) or 0


def main() -> None:
    shared = devstack.StackConfig.from_env(os.environ)
    devstack.ensure_jars(shared)
    jar_bytes = sum(jar.stat().st_size for jar in shared.lib_dir.glob("*.jar"))
    cold: list[float] = []
    warm: list[float] = []
    rss: list[int] = []
    stop: list[float] = []
    for _ in range(ROUNDS):
        with tempfile.TemporaryDirectory() as tmp:
            config = devstack.StackConfig(
                dev_dir=Path(tmp),
                kafka_port=free_port(),
                controller_port=free_port(),
                redis_port=free_port(),
                lib_dir_override=shared.lib_dir,
            )
            try:
                seconds, resident = _timed_up(config)
                cold.append(seconds)
                rss.append(resident)
                started = time.monotonic()
                devstack.down(config)
                stop.append(time.monotonic() - started)
                seconds, _ = _timed_up(config)
                warm.append(seconds)
            finally:
                devstack.down(config)
    mib = 2**20
    print(f"jars: {len(list(shared.lib_dir.glob('*.jar')))} files, {jar_bytes / mib:.1f} MiB")
    timings = (("cold start (format + start)", cold), ("warm start", warm), ("stop", stop))
    for name, values in timings:
        print(
            f"{name}: median {statistics.median(values):.1f} s, "
            f"max {max(values):.1f} s over {len(values)} runs"
        )
    print(f"broker RSS after start: median {statistics.median(rss) / mib:.0f} MiB")
    print(f"(Kafka + Redis ready; Redis alone takes < 0.2 s; {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
