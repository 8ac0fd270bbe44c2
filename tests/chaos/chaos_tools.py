"""Helpers of the fault-injection tests: a flow process that file permissions apply to (also
as root), a producer running in the background, and readings of ``/metrics`` histograms."""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline_harness import VIEW, FlowProcess

from freshet.ops.generator import GeneratorConfig, ProduceCounts, produce

__all__ = ["BackgroundProducer", "FlowWithoutOverride", "slower_than"]

_PR_CAPBSET_DROP = 24
_CAP_DAC_OVERRIDE = 1
_CAP_DAC_READ_SEARCH = 2


def _drop_permission_override() -> None:
    """In the child, before exec: as root, lose the capabilities that bypass file modes.

    Without CAP_DAC_OVERRIDE root is held to a file's owner bits like any owner, so
    ``chmod 0o555`` makes a directory read-only for the flow (dropped from the bounding set,
    the capabilities are gone from the program exec'd next).
    """
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), f"prctl(PR_CAPBSET_DROP, {cap}) failed")


class FlowWithoutOverride(FlowProcess):
    """``freshet run`` that file permissions apply to even when the tests run as root."""

    def __init__(
        self, args: Sequence[str], *, env: dict[str, str], log: Path, cwd: Path | None = None
    ) -> None:
        self.args = list(args)
        self.log = log
        self._file = open(log, "ab")  # noqa: SIM115 - closed in wait()/kill()
        self.proc = subprocess.Popen(
            [*_freshet(), "run", *self.args],
            env={**os.environ, **env},
            stdout=self._file,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_drop_permission_override,
        )


def _freshet() -> list[str]:
    import sys

    return [sys.executable, "-c", "import sys; from freshet.cli import main; sys.exit(main())"]


class BackgroundProducer:
    """:func:`freshet.ops.generator.produce` paced at ``rate`` in a thread; ``join()`` -> counts."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        count: int,
        rate: float,
        seed: int,
        cards: int = 400,
        start_ms: int | None = None,
        kafka_config: dict[str, str] | None = None,
    ) -> None:
        self.counts: ProduceCounts | None = None
        self.error: BaseException | None = None
        config = GeneratorConfig(cards=cards, late_fraction=0.02, bad_fraction=0.01, seed=seed)
        kwargs: dict[str, Any] = {
            "view": VIEW,
            "count": count,
            "rate": rate,
            "pace": True,
            "config": config,
            "start_ms": start_ms,
            "max_seconds": 2 * count / rate + 30,
            "kafka_config": kafka_config,
        }

        def run() -> None:
            try:
                self.counts = produce(bootstrap, topic, **kwargs)
            except BaseException as exc:  # reported by join()
                self.error = exc

        self._thread = threading.Thread(target=run, name="producer", daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> ProduceCounts:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(f"the producer did not finish in {timeout:g} s")
        if self.error is not None:
            raise AssertionError(f"the producer failed: {self.error}") from self.error
        assert self.counts is not None
        return self.counts


def slower_than(metrics: dict[str, float], histogram: str, labels: str, seconds: float) -> float:
    """How many observations of ``histogram{labels}`` took longer than ``seconds`` (a bucket
    bound): ``_count`` minus the ``le`` bucket. ``labels`` is e.g. ``view="card_txn"``."""
    count = metrics[f"{histogram}_count{{{labels}}}"]
    (within,) = [
        value
        for key, value in metrics.items()
        if key.startswith(f"{histogram}_bucket{{")
        and labels in key
        and (le := re.search(r'le="([^"]+)"', key)) is not None
        and float(le[1]) == seconds
    ]
    return count - within
