"""Fault-injection tests against real Kafka and Redis: crashes, failing dependencies, bad input,
secrets. They reuse the integration suite's fixtures and helpers (``tests/integration``:
``kafka_bootstrap``, ``redis_url``, ``topic_factory``, ``pipeline_harness``, ``redis_servers``)
and, like it, fail instead of skipping when the stack is down. Every test here is marked
``integration``; tests that start a Kafka broker of their own are marked ``private_kafka``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent
_INTEGRATION = _HERE.parent / "integration"
# The integration helpers are plain modules of that directory (pipeline_harness, redis_servers).
if str(_INTEGRATION) not in sys.path:
    sys.path.insert(0, str(_INTEGRATION))


from fixtures_reexport import *  # noqa: E402, F403  (the integration fixtures)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the tests of tests/chaos ``integration`` (they need the real stack)."""
    for item in items:
        if _HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.integration)
